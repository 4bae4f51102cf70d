// SPDX-License-Identifier: MIT
/*
 * cwatch - a C watcher built on plugin/criu/genid.h: registers, prints
 * "ready ACKED", then for each of N events prints "event GEN" and acks (every
 * other one with a quiet ack), and finally checks that a stale ack and a bump are refused as they should be.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>

#include "genid.h"

int main(int argc, char **argv)
{
	struct genid_conn c;
	uint32_t gen, flags, n;
	int i, count, ret;

	if (argc != 3) {
		fprintf(stderr, "usage: cwatch SOCKET COUNT\n");
		return 2;
	}
	count = atoi(argv[2]);
	ret = genid_open(&c, argv[1]);
	if (ret < 0) {
		fprintf(stderr, "connect: %s\n", strerror(-ret));
		return 1;
	}
	ret = genid_watch(&c, &gen);
	if (ret) {
		fprintf(stderr, "watch: %d\n", ret);
		return 1;
	}
	printf("ready %u\n", gen);
	fflush(stdout);

	for (i = 0; i < count; i++) {
		struct pollfd pfd = { .fd = c.fd, .events = POLLIN };

		/* The socket becomes readable when the watcher is outdated. */
		if (poll(&pfd, 1, 30000) != 1) {
			fprintf(stderr, "poll: no event\n");
			return 1;
		}
		ret = genid_wait_event(&c, &gen, &flags);
		if (ret) {
			fprintf(stderr, "event: %d\n", ret);
			return 1;
		}
		ret = genid_outdated(&c, &n);
		if (ret || n < 1) {
			fprintf(stderr, "outdated: %d %u\n", ret, n);
			return 1;
		}
		if (genid_ack(&c, gen - 1) != GENID_ST_STALE) {
			fprintf(stderr, "a stale ack was not refused\n");
			return 1;
		}
		ret = i % 2 ? genid_ack_quiet(&c, gen) : genid_ack(&c, gen);
		if (ret == GENID_ST_STALE)
			continue; /* a newer one came: its event is next */
		if (ret) {
			fprintf(stderr, "ack: %d %s\n", ret, c.msg);
			return 1;
		}
		printf("event %u\n", gen);
		fflush(stdout);
	}
	/* A bump on a scope's socket, not the admin socket: refused to anyone. */
	ret = genid_admin_bump(&c, NULL, 0, "cwatch", &gen);
	printf("bump %s\n", ret ? genid_strstatus(ret) : "ok");
	genid_close(&c);
	return 0;
}
