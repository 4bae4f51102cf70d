// SPDX-License-Identifier: MIT
/*
 * watchdog - a thread that blocks for the next generation, rebuilds what
 * must not survive a snapshot (here a session key), and acks; the rest of
 * the program goes on using the key under its lock.
 *
 *	cc -pthread -I plugin/criu -o watchdog examples/c/watchdog.c
 *	./watchdog [RUN_DIR]		(default /run/genid)
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

#include "genid.h"

static struct {
	pthread_mutex_t lock;
	uint32_t gen;		/* the generation the key was made at */
	unsigned char key[32];
} state = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void rebuild(uint32_t gen)
{
	pthread_mutex_lock(&state.lock);
	if (getrandom(state.key, sizeof(state.key), 0) != sizeof(state.key))
		abort();
	state.gen = gen;
	pthread_mutex_unlock(&state.lock);
}

static void *watchdog(void *arg)
{
	struct genid_conn *c = arg;
	uint32_t gen;
	int ret;

	for (;;) {
		ret = genid_wait_event(c, &gen, NULL);	/* blocks */
		if (ret) {
			fprintf(stderr, "watchdog: wait: %s\n", strerror(-ret));
			exit(1);
		}
		rebuild(gen);
		printf("rebuilt at generation %u\n", gen);
		ret = genid_ack(c, gen);
		if (ret == GENID_ST_STALE)
			continue;	/* a newer one came: wait returns it at once */
		if (ret) {
			fprintf(stderr, "watchdog: ack: %s\n", ret > 0 ? c->msg : strerror(-ret));
			exit(1);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	struct genid_conn c;
	pthread_t t;
	uint32_t gen;
	int ret;

	setvbuf(stdout, NULL, _IOLBF, 0);
	ret = genid_open(&c, argc > 1 ? argv[1] : NULL);
	if (!ret)
		ret = genid_watch(&c, &gen);
	if (ret) {
		fprintf(stderr, "watchdog: %s\n", ret > 0 ? c.msg : strerror(-ret));
		return 1;
	}
	rebuild(gen);
	printf("ready at generation %u\n", gen);
	if (pthread_create(&t, NULL, watchdog, &c))
		return 1;

	for (;;) {	/* the program's own work, with the key of the day */
		pthread_mutex_lock(&state.lock);
		/* ... encrypt with state.key ... */
		pthread_mutex_unlock(&state.lock);
		sleep(1);
	}
}
