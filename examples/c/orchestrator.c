// SPDX-License-Identifier: MIT
/*
 * orchestrator - at each new generation, pauses its service, rebuilds and
 * acks for itself, then waits until every other watcher of its scope has
 * acked, with a timeout, and resumes. On a timeout it says how many are
 * still outdated, and resumes all the same.
 *
 *	cc -I plugin/criu -o orchestrator examples/c/orchestrator.c
 *	./orchestrator [RUN_DIR [TIMEOUT_MS]]	(default /run/genid, 5000)
 */
#include <stdio.h>
#include <stdlib.h>

#include "genid.h"

static int fail(const char *what, struct genid_conn *c, int ret)
{
	fprintf(stderr, "orchestrator: %s: %s\n", what, ret > 0 ? c->msg : strerror(-ret));
	return 1;
}

int main(int argc, char **argv)
{
	uint32_t timeout_ms = argc > 2 ? strtoul(argv[2], NULL, 10) : 5000;
	struct genid_conn c;
	uint32_t gen, n;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	ret = genid_open(&c, argc > 1 ? argv[1] : NULL);
	if (!ret)
		ret = genid_watch(&c, &gen);
	if (ret)
		return fail("watch", &c, ret);
	printf("ready at generation %u\n", gen);

	for (;;) {
		ret = genid_wait_event(&c, &gen, NULL);
		if (ret)
			return fail("wait", &c, ret);
		printf("paused at generation %u\n", gen);	/* no traffic in */
		/* ... rebuild its own state ... */
		printf("rebuilt at generation %u\n", gen);
		ret = genid_ack(&c, gen);
		if (ret == GENID_ST_STALE)
			continue;	/* a newer one came: start over */
		if (ret)
			return fail("ack", &c, ret);

		ret = genid_wait_watchers(&c, timeout_ms);
		if (ret == GENID_ST_INTERRUPTED)
			continue;	/* a newer one came: start over */
		if (ret == GENID_ST_TIMEOUT) {
			ret = genid_outdated(&c, &n);
			if (ret)
				return fail("outdated", &c, ret);
			printf("timeout: %u watchers outdated at generation %u\n", n, gen);
		} else if (ret) {
			return fail("wait-watchers", &c, ret);
		}
		printf("resumed at generation %u\n", gen);	/* traffic in */
	}
}
