// SPDX-License-Identifier: MIT
/*
 * suidbump - an unprivileged process tries to borrow a set-user-ID
 * program's capabilities for a bump.
 *
 * usage: suidbump SOCKET SUID_PROGRAM
 *
 * It connects to the daemon and forks. The parent execs SUID_PROGRAM (given
 * the argument "30", as sleep takes it), so the pid that connected now runs
 * as root with every capability. The child, still unprivileged, waits for
 * that, then sends a bump on the inherited connection and prints the reply's
 * status: "status N".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* parent_is_root tells whether the parent's effective uid is 0 yet. */
static int parent_is_root(pid_t ppid)
{
	char path[64], line[256];
	unsigned int ruid, euid;
	FILE *f;
	int root = 0;

	snprintf(path, sizeof(path), "/proc/%d/status", ppid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Uid: %u %u", &ruid, &euid) == 2)
			root = euid == 0;
	fclose(f);
	return root;
}

int main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	uint8_t req[16 + 8] = { 1, 6 };	/* version 1, op bump */
	uint8_t rep[16 + 1024];
	pid_t ppid;
	int fd, i;

	if (argc != 3) {
		fprintf(stderr, "usage: suidbump SOCKET SUID_PROGRAM\n");
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
	setvbuf(stdout, NULL, _IOLBF, 0);
	ppid = getpid();
	switch (fork()) {
	case -1:
		perror("fork");
		return 1;
	case 0:
		break;
	default:
		execl(argv[2], argv[2], "30", (char *)NULL);
		perror("exec");
		return 1;
	}

	for (i = 0; i < 500 && !parent_is_root(ppid); i++)
		usleep(10000);
	if (!parent_is_root(ppid)) {
		printf("parent never ran as root\n");
		return 1;
	}
	req[4] = 1;	/* id */
	req[8] = 8;	/* payload: u32 min 0, u32 flags 0 */
	if (write(fd, req, sizeof(req)) != sizeof(req)) {
		perror("write");
		return 1;
	}
	if (read(fd, rep, sizeof(rep)) < 16) {
		perror("read");
		return 1;
	}
	printf("status %d\n", rep[2] | rep[3] << 8);
	return 0;
}
