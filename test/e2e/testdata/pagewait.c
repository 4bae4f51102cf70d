// SPDX-License-Identifier: MIT
/*
 * pagewait - sleeps on a genid page with genid.h's genid_page_wait, and
 * prints the generation at start and each one it is woken at: a thread
 * that learns of a restore with no connection to the daemon.
 *
 * pagewait PATH   PATH is a run dir or a page (/dev/sysgenid)
 *
 * Exit 1 (with a message) if the page cannot be mapped or the wait fails.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "genid.h"

int main(int argc, char **argv)
{
	struct genid_page pg;
	uint32_t gen;
	int ret;

	if (argc != 2) {
		fprintf(stderr, "usage: pagewait PATH\n");
		return 2;
	}
	ret = genid_map(&pg, argv[1]);
	if (ret) {
		fprintf(stderr, "pagewait: %s: %s\n", argv[1], strerror(-ret));
		return 1;
	}
	gen = genid_page_generation(&pg);
	for (;;) {
		printf("%" PRIu32 "\n", gen);
		fflush(stdout);
		ret = genid_page_wait(&pg, gen, -1, &gen);
		if (ret) {
			fprintf(stderr, "pagewait: %s\n", strerror(-ret));
			return 1;
		}
	}
}
