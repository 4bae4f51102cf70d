// SPDX-License-Identifier: MIT
/*
 * waiters - the watcher side of genid's fan-out and barrier benchmarks.
 *
 * N threads, each blocked in read() on its own inherited fd (fds 3 .. 3+N-1),
 * the same for every mechanism measured, so that only the mechanism differs:
 * a genid connection, an eventfd, an inotify fd or a D-Bus connection. When
 * the last of the N threads has read in a round, the helper prints the time
 * (CLOCK_MONOTONIC, ns) on stdout: "done T". Once every thread is blocked in
 * read() again it prints "ready".
 *
 * usage: waiters KIND N
 *   raw      one read() of whatever arrives (eventfd, inotify, D-Bus)
 *   genid    genid frames: an event (op 0x80) counts; replies are skipped
 *   genid-ack  the same, and the thread acks the event's generation at once
 *              (a quiet ack: the daemon replies only to refuse it)
 *   eventfd-reply  one read(), then write(1) to the reply eventfd, fd 3+N
 *   page     no fd of its own: every thread sleeps on the genid page mapped
 *            from fd 3 (a futex on the generation, FUTEX_WAIT), and counts
 *            when the generation moves (genid_page_wait's way)
 * The helper exits when stdin closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum kind { RAW, GENID, GENID_ACK, EVENTFD_REPLY, PAGE };

static enum kind kind;
static int nthreads;
static int round_no;		/* rounds done */
static atomic_int *events;	/* per thread: events read */
static atomic_int *inread;	/* per thread: about to block in read() */
static atomic_int left;		/* threads yet to read in this round */
static atomic_llong done_ns;
static int donefd;		/* the last reader of a round wakes main */
static const uint32_t *page;	/* PAGE: the mapped generation */

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "waiters: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void counted(int i)
{
	atomic_fetch_add(&events[i], 1);
	if (atomic_fetch_sub(&left, 1) == 1) {
		uint64_t one = 1;

		atomic_store(&done_ns, now_ns());
		if (write(donefd, &one, sizeof(one)) != sizeof(one))
			die("write donefd");
	}
}

static uint32_t le32(const unsigned char *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

/* PAGE: sleep on the page until the generation moves, count, again. */
static void *watch_page(int i)
{
	uint32_t seen = __atomic_load_n(page, __ATOMIC_ACQUIRE);

	for (;;) {
		uint32_t g = __atomic_load_n(page, __ATOMIC_ACQUIRE);

		if (g != seen) {
			seen = g;
			counted(i);
			continue;
		}
		atomic_store(&inread[i], 1);
		if (syscall(SYS_futex, page, FUTEX_WAIT, seen, NULL, NULL, 0) < 0 &&
		    errno != EAGAIN && errno != EINTR)
			die("futex");
		atomic_store(&inread[i], 0);
	}
	return NULL;
}

static void *watch(void *arg)
{
	int i = (int)(intptr_t)arg, fd = 3 + i;

	if (kind == PAGE)
		return watch_page(i);
	unsigned char buf[4096];
	size_t have = 0;
	uint32_t id = 1000;

	for (;;) {
		ssize_t n;

		atomic_store(&inread[i], 1);
		n = read(fd, buf + have, sizeof(buf) - have);
		atomic_store(&inread[i], 0);
		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			fprintf(stderr, "waiters: thread %d: read: %s\n", i, n ? strerror(errno) : "EOF");
			exit(1);
		}
		switch (kind) {
		case PAGE:	/* watch_page */
		case RAW:
			counted(i);
			break;
		case EVENTFD_REPLY: {
			uint64_t one = 1;

			if (write(3 + nthreads, &one, sizeof(one)) != sizeof(one))
				die("write reply eventfd");
			counted(i);
			break;
		}
		case GENID:
		case GENID_ACK: {
			size_t off = 0;

			have += n;
			while (have - off >= 16) {
				unsigned char *f = buf + off;
				uint32_t len = le32(f + 8);

				if (f[0] != 1 || len > 1024) {
					fprintf(stderr, "waiters: thread %d: bad frame\n", i);
					exit(1);
				}
				if (have - off < 16 + len)
					break;
				if (f[1] == 0x80 && len >= 8) {
					if (kind == GENID_ACK) {
						/* A quiet ack: no reply unless refused. */
						unsigned char ack[24] = { 1, 3 };

						put_le32(ack + 4, ++id);
						put_le32(ack + 8, 8);
						memcpy(ack + 16, f + 16, 4);
						put_le32(ack + 20, 4);
						if (write(fd, ack, sizeof(ack)) != sizeof(ack))
							die("write ack");
					}
					counted(i);
				} else if (f[2] | f[3]) {
					fprintf(stderr, "waiters: thread %d: op %d failed with status %d\n",
						i, f[1], f[2] | f[3] << 8);
					exit(1);
				}
				off += 16 + len;
			}
			memmove(buf, buf + off, have - off);
			have -= off;
			break;
		}
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_attr_t attr;
	char line[64];
	int i;

	if (argc != 3) {
		fprintf(stderr, "usage: waiters raw|genid|genid-ack|eventfd-reply|page N\n");
		return 2;
	}
	if (!strcmp(argv[1], "raw"))
		kind = RAW;
	else if (!strcmp(argv[1], "genid"))
		kind = GENID;
	else if (!strcmp(argv[1], "genid-ack"))
		kind = GENID_ACK;
	else if (!strcmp(argv[1], "eventfd-reply"))
		kind = EVENTFD_REPLY;
	else if (!strcmp(argv[1], "page"))
		kind = PAGE;
	else {
		fprintf(stderr, "waiters: unknown kind %s\n", argv[1]);
		return 2;
	}
	nthreads = atoi(argv[2]);
	if (kind == PAGE) {
		page = mmap(NULL, 4096, PROT_READ, MAP_SHARED, 3, 0);
		if (page == MAP_FAILED)
			die("mmap the page");
	}
	donefd = eventfd(0, EFD_CLOEXEC);
	if (donefd < 0)
		die("eventfd");
	setvbuf(stdout, NULL, _IOLBF, 0);

	events = calloc(nthreads, sizeof(*events));
	inread = calloc(nthreads, sizeof(*inread));
	if (!events || !inread)
		die("calloc");
	atomic_store(&left, nthreads);
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 64 << 10);
	for (i = 0; i < nthreads; i++) {
		pthread_t t;
		int err = pthread_create(&t, &attr, watch, (void *)(intptr_t)i);

		if (err) {
			errno = err;
			die("pthread_create");
		}
	}
	for (;;) {
		struct pollfd p[2] = { { .fd = donefd, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
		uint64_t v;

		/* Every thread back in read(), and a moment for the last ones
		 * to get from the counter into the kernel. */
		for (i = 0; i < nthreads; i++)
			while (atomic_load(&events[i]) != round_no || !atomic_load(&inread[i]))
				usleep(1000);
		usleep(20000 + nthreads);
		printf("ready\n");

		if (poll(p, 2, -1) < 0)
			die("poll");
		if (p[1].revents) {
			if (read(0, line, sizeof(line)) <= 0)
				return 0;	/* the harness is done */
		}
		if (!(p[0].revents & POLLIN))
			continue;
		if (read(donefd, &v, sizeof(v)) != sizeof(v))
			die("read donefd");
		printf("done %lld\n", atomic_load(&done_ns));
		/* Nothing is written to the threads' fds before "ready": no
		 * thread counts again before left is reset. */
		round_no++;
		atomic_store(&left, nthreads);
	}
}
