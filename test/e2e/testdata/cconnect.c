// SPDX-License-Identifier: MIT
/*
 * cconnect - connects to a genid socket with genid.h and says how it went:
 * "connected", or the error. usage: cconnect SOCKET
 */
#include <stdio.h>
#include <string.h>

#include "genid.h"

int main(int argc, char **argv)
{
	int fd;

	if (argc != 2) {
		fprintf(stderr, "usage: cconnect SOCKET\n");
		return 2;
	}
	fd = genid_connect(argv[1]);
	if (fd < 0) {
		printf("%s\n", strerror(-fd));
		return 1;
	}
	printf("connected\n");
	close(fd);
	return 0;
}
