// SPDX-License-Identifier: MIT
/*
 * eventloop - an epoll loop that serves its requests (here, lines on
 * stdin) and has genid's descriptor beside them: readable exactly when a
 * new generation came. It never blocks on genid: it reads the event, rebuilds
 * and acks without waiting for a reply.
 *
 *	cc -I plugin/criu -o eventloop examples/c/eventloop.c
 *	./eventloop [RUN_DIR]		(default /run/genid)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/random.h>

#include "genid.h"

static uint32_t made_at;	/* the generation the nonce base was made at */
static unsigned char nonce_base[12];

static void rebuild(uint32_t gen)
{
	if (getrandom(nonce_base, sizeof(nonce_base), 0) != sizeof(nonce_base))
		abort();
	made_at = gen;
}

int main(int argc, char **argv)
{
	struct epoll_event ev = { .events = EPOLLIN }, evs[8];
	struct genid_conn c;
	uint32_t gen;
	char line[256];
	ssize_t len;
	int ep, n, i, ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	ret = genid_open(&c, argc > 1 ? argv[1] : NULL);
	if (!ret)
		ret = genid_watch(&c, &gen);
	if (ret) {
		fprintf(stderr, "eventloop: %s\n", ret > 0 ? c.msg : strerror(-ret));
		return 1;
	}
	rebuild(gen);
	printf("ready at generation %u\n", gen);

	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.data.fd = genid_fd(&c);
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, genid_fd(&c), &ev)) {
		perror("eventloop: epoll");
		return 1;
	}
	/* EPERM: a stdin epoll cannot watch (/dev/null): no requests. */
	ev.data.fd = STDIN_FILENO;
	if (epoll_ctl(ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) && errno != EPERM) {
		perror("eventloop: epoll");
		return 1;
	}

	for (;;) {
		n = epoll_wait(ep, evs, 8, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			perror("eventloop: epoll_wait");
			return 1;
		}
		for (i = 0; i < n; i++) {
			if (evs[i].data.fd == genid_fd(&c)) {
				ret = genid_read_event(&c, &gen, NULL);	/* never blocks */
				if (ret == -EAGAIN)
					continue;	/* up to date */
				if (ret) {
					fprintf(stderr, "eventloop: genid: %s\n", strerror(-ret));
					return 1;
				}
				rebuild(gen);
				printf("rebuilt at generation %u\n", gen);
				/* A refusal (stale) means the next event is on its way. */
				ret = genid_ack_quiet(&c, gen);
				if (ret) {
					fprintf(stderr, "eventloop: ack: %s\n", strerror(-ret));
					return 1;
				}
				continue;
			}
			/* Requests, a line each: answer with the state as it is. */
			len = read(STDIN_FILENO, line, sizeof(line));
			if (len <= 0) {
				epoll_ctl(ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
				continue;
			}
			while (len-- > 0)
				if (line[len] == '\n')
					printf("pong at generation %u\n", made_at);
		}
	}
}
