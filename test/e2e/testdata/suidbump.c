// SPDX-License-Identifier: MIT
/*
 * suidbump - a privileged program, run by an unprivileged user, asks for a
 * bump on the admin socket.
 *
 * usage: suidbump ADMIN_SOCKET
 *
 * Installed set-user-ID root, or with file capabilities that let it connect
 * to the root-only socket, it gets through the socket's permissions; the
 * daemon must still refuse it: it judges each request on its sender's real
 * user, which stays the unprivileged one. Prints "status N" (0: bumped).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	/* version 1, op bump, id 1, payload 9: name "" (host), min 0, flags 0 */
	uint8_t req[16 + 9] = { 1, 6, 0, 0, 1, 0, 0, 0, 9 };
	uint8_t rep[16 + 1024];
	ssize_t n;
	int fd;

	if (argc != 2) {
		fprintf(stderr, "usage: suidbump ADMIN_SOCKET\n");
		return 2;
	}
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	strncpy(addr.sun_path, argv[1], sizeof(addr.sun_path) - 1);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		perror("connect");
		return 1;
	}
	if (write(fd, req, sizeof(req)) != sizeof(req)) {
		perror("write");
		return 1;
	}
	n = read(fd, rep, sizeof(rep));
	if (n < 16) {
		perror("read");
		return 1;
	}
	printf("status %d: %.*s\n", rep[2] | rep[3] << 8, (int)(n - 16), (char *)rep + 16);
	return 0;
}
