// SPDX-License-Identifier: MIT
/*
 * hotpath - checks the mapped page before each use of its cached secrets:
 * one load, no system call. When the generation moved, it rebuilds them,
 * remembers the generation it read before rebuilding, acks it, and checks
 * again.
 *
 *	cc -I plugin/criu -o hotpath examples/c/hotpath.c
 *	./hotpath [RUN_DIR]		(default /run/genid)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#include "genid.h"

static unsigned char secrets[32];

static void rebuild(void)
{
	if (getrandom(secrets, sizeof(secrets), 0) != sizeof(secrets))
		abort();
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : NULL;
	const struct timespec request = { .tv_nsec = 10 * 1000 * 1000 };
	struct genid_page pg;
	struct genid_conn c;
	uint32_t made_at, gen;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	ret = genid_map(&pg, dir);
	if (!ret)
		ret = genid_open(&c, dir);
	if (!ret)
		ret = genid_watch(&c, &made_at);	/* to be counted until it acks */
	if (ret) {
		fprintf(stderr, "hotpath: %s\n", ret > 0 ? c.msg : strerror(-ret));
		return 1;
	}
	rebuild();
	printf("ready at generation %u\n", made_at);

	for (;;) {	/* a request */
again:
		gen = genid_page_generation(&pg);
		if (gen != made_at) {
			rebuild();
			made_at = gen;
			printf("rebuilt at generation %u\n", gen);
			ret = genid_ack(&c, gen);
			if (ret && ret != GENID_ST_STALE) {	/* stale: a newer one came */
				fprintf(stderr, "hotpath: ack: %s\n", ret > 0 ? c.msg : strerror(-ret));
				return 1;
			}
			goto again;
		}
		/* ... use secrets ... */
		nanosleep(&request, NULL);
	}
}
