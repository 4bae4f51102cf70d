// SPDX-License-Identifier: MIT
/*
 * ctimeout - asks a genid daemon for the generation with genid.h, on a
 * connection with a timeout of MS milliseconds (0: genid_open, none), and
 * says how it went: "get GEN", or the error. usage: ctimeout SOCKET MS
 */
#include <stdio.h>
#include <stdlib.h>

#include "genid.h"

int main(int argc, char **argv)
{
	struct genid_conn c;
	uint32_t gen;
	unsigned int ms;
	int ret;

	if (argc != 3) {
		fprintf(stderr, "usage: ctimeout SOCKET MS\n");
		return 2;
	}
	ms = strtoul(argv[2], NULL, 10);
	ret = ms ? genid_open_timeout(&c, argv[1], ms) : genid_open(&c, argv[1]);
	if (ret < 0) {
		printf("connect: %s\n", strerror(-ret));
		return 1;
	}
	ret = genid_get(&c, &gen);
	genid_close(&c);
	if (ret) {
		printf("get: %s\n", ret > 0 ? genid_strstatus(ret) : strerror(-ret));
		return 1;
	}
	printf("get %u\n", gen);
	return 0;
}
