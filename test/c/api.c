// SPDX-License-Identifier: MIT
/*
 * api - every call of plugin/criu/genid.h against the real daemon, and its
 * restored rule against a scripted peer. Run as root (it bumps on the admin
 * socket) by test/e2e/capi_test.go, which starts the daemon:
 *
 *	api RUN_DIR
 *
 * Prints "ok WHAT" for each part, "restart" when it wants the daemon
 * restarted and bumped once (it then reconnects), and "PASS" at the end.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "genid.h"

#define CHECK(cond)							\
	do {								\
		if (!(cond)) {						\
			fprintf(stderr, "api.c:%d: %s\n", __LINE__, #cond); \
			exit(1);					\
		}							\
	} while (0)

static const char *dir;

static void ok(const char *what)
{
	printf("ok %s\n", what);
	fflush(stdout);
}

static void path(char *out, size_t cap, const char *name)
{
	CHECK((size_t)snprintf(out, cap, "%s/%s", dir, name) < cap);
}

static uint32_t bump(struct genid_conn *admin)
{
	uint32_t gen = 0;

	CHECK(genid_admin_bump(admin, NULL, 0, "api.c", &gen) == 0);
	return gen;
}

/* The page: mapped from a run dir or a page, and refused from untrusted dirs. */
static void test_page(void)
{
	char tmp[] = "/tmp/genid-api-XXXXXX", file[256];
	struct genid_page pg, pg2;
	struct genid_conn c;
	uint32_t gen;
	int fd;

	CHECK(genid_map(&pg, dir) == 0);
	CHECK(genid_open(&c, dir) == 0);
	CHECK(genid_get(&c, &gen) == 0);
	CHECK(genid_page_generation(&pg) == gen);
	path(file, sizeof(file), GENID_PAGE_NAME);
	CHECK(genid_map(&pg2, file) == 0);
	CHECK(genid_page_generation(&pg2) == gen);
	genid_unmap(&pg2);
	genid_unmap(&pg2);	/* twice: harmless */
	CHECK(pg2.gen == NULL);
	genid_close(&c);
	genid_close(&c);

	/* A run dir that others may write to, or that another user owns. */
	CHECK(mkdtemp(tmp));
	snprintf(file, sizeof(file), "%s/%s", tmp, GENID_PAGE_NAME);
	fd = open(file, O_WRONLY | O_CREAT, 0644);
	CHECK(fd >= 0 && ftruncate(fd, GENID_PAGE_SIZE) == 0);
	close(fd);
	CHECK(chmod(tmp, 0755) == 0);
	CHECK(genid_map(&pg2, tmp) == 0);
	genid_unmap(&pg2);
	CHECK(chmod(tmp, 0777) == 0);
	CHECK(genid_map(&pg2, tmp) == -EPERM && pg2.gen == NULL);
	CHECK(genid_open(&c, tmp) == -EPERM && c.fd == -1);
	CHECK(chmod(tmp, 01777) == 0);	/* sticky, as /tmp: trusted */
	CHECK(genid_map(&pg2, tmp) == 0);
	genid_unmap(&pg2);
	CHECK(chmod(tmp, 0755) == 0 && chown(tmp, 65534, 65534) == 0);
	CHECK(genid_map(&pg2, tmp) == -EPERM);
	CHECK(chown(tmp, 0, 0) == 0);
	/* A page too short to hold a generation; no page at all. */
	CHECK(truncate(file, 2) == 0);
	CHECK(genid_map(&pg2, tmp) == -EINVAL);
	CHECK(unlink(file) == 0);
	CHECK(genid_map(&pg2, tmp) == -ENOENT);
	CHECK(genid_open(&c, tmp) == -ENOENT);
	CHECK(rmdir(tmp) == 0);
	genid_unmap(&pg);
	ok("page");
}

/* A watcher: blocking and non-blocking reads, the fd, acks, the barrier. */
static void test_watcher(struct genid_conn *admin)
{
	struct genid_conn w, c;
	struct genid_page pg;
	struct pollfd pfd;
	uint32_t gen, g, g2, flags, n;
	char sock[256];

	CHECK(genid_map(&pg, dir) == 0);
	path(sock, sizeof(sock), GENID_SOCKET_NAME);
	CHECK(genid_open(&w, dir) == 0);
	CHECK(genid_open(&c, sock) == 0);	/* a socket's path works too */
	CHECK(genid_read_event(&w, &g, NULL) == -EAGAIN);	/* not a watcher yet */
	CHECK(genid_watch(&w, &gen) == 0);
	CHECK(genid_watch(&w, &g) == 0 && g == gen);	/* twice: the same */
	CHECK(genid_acked(&w) == gen);
	CHECK(genid_fd(&w) == w.fd);
	CHECK(genid_read_event(&w, &g, &flags) == -EAGAIN);
	pfd = (struct pollfd){ .fd = genid_fd(&w), .events = POLLIN };
	CHECK(poll(&pfd, 1, 0) == 0);	/* up to date: nothing to read */
	CHECK(genid_outdated(&c, &n) == 0 && n == 0);
	CHECK(genid_wait_watchers(&c, 1000) == 0);

	/* A bump: on the page at once, then readable, and outdated until acked. */
	g = bump(admin);
	CHECK(g == gen + 1);
	CHECK(genid_page_generation(&pg) == g);
	CHECK(poll(&pfd, 1, 10000) == 1 && (pfd.revents & POLLIN));
	CHECK(genid_read_event(&w, &g2, &flags) == 0 && g2 == g && flags == 0);
	CHECK(genid_read_event(&w, &g2, NULL) == 0 && g2 == g);	/* until acked */
	CHECK(genid_wait_event(&w, &g2, NULL) == 0 && g2 == g);	/* at once */
	CHECK(genid_outdated(&c, &n) == 0 && n == 1);
	CHECK(genid_wait_watchers(&c, 50) == GENID_ST_TIMEOUT);
	CHECK(!strcmp(genid_strstatus(GENID_ST_TIMEOUT), "timeout") && c.msg[0]);
	CHECK(genid_wait_watchers(&w, 0) == GENID_ST_INTERRUPTED);	/* never on itself */
	CHECK(genid_ack(&w, g - 1) == GENID_ST_STALE && w.msg[0]);
	CHECK(genid_acked(&w) == gen);
	CHECK(genid_ack(&w, g) == 0 && genid_acked(&w) == g);
	CHECK(genid_ack(&w, g) == 0);	/* twice: harmless */
	CHECK(genid_read_event(&w, &g2, NULL) == -EAGAIN);
	CHECK(genid_outdated(&c, &n) == 0 && n == 0);
	CHECK(genid_wait_watchers(&c, 0) == 0);
	CHECK(genid_wait_watchers(&w, 1000) == 0);
	ok("watcher");

	/* Two bumps before it reads: the wait returns the newest. */
	bump(admin);
	g = bump(admin);
	CHECK(genid_get(&c, &g2) == 0 && g2 == g);
	CHECK(genid_wait_event(&w, &g2, NULL) == 0);
	if (g2 != g) {	/* the second event was not there yet */
		CHECK(genid_ack(&w, g2) == GENID_ST_STALE);
		CHECK(genid_wait_event(&w, &g2, NULL) == 0 && g2 == g);
	}
	CHECK(genid_ack(&w, g) == 0);
	ok("newest");

	/* Quiet acks: no reply to wait for; a refused one is skipped later. */
	g = bump(admin);
	CHECK(genid_wait_event(&w, &g2, NULL) == 0 && g2 == g);
	CHECK(genid_ack_quiet(&w, g - 1) == 0);	/* refused: stale */
	CHECK(genid_ack_quiet(&w, g) == 0 && genid_acked(&w) == g);
	CHECK(genid_get(&w, &g2) == 0 && g2 == g);	/* skips the refusal */
	CHECK(genid_wait_watchers(&c, 5000) == 0);
	CHECK(genid_read_event(&w, &g2, NULL) == -EAGAIN);
	ok("quiet");

	/* The hot path's way: ack what the page says, before the event came. */
	g = bump(admin);
	CHECK(genid_page_generation(&pg) == g);
	CHECK(genid_ack(&w, genid_page_generation(&pg)) == 0);
	CHECK(genid_read_event(&w, &g2, NULL) == -EAGAIN);	/* the event, read: up to date */
	CHECK(genid_outdated(&c, &n) == 0 && n == 0);
	ok("page ack");

	/* What a scope's socket refuses, to anyone. */
	CHECK(genid_admin_bump(&c, NULL, 0, "not here", NULL) == GENID_ST_PERMISSION);
	CHECK(strstr(c.msg, "admin"));
	CHECK(genid_ack(&c, g) == GENID_ST_NOT_WATCHER);
	ok("refusals");

	/* The admin socket's calls. */
	CHECK(genid_admin_get(admin, NULL, &g2) == 0 && g2 == g);
	CHECK(genid_admin_get(admin, "no-such-scope", &g2) == GENID_ST_NOT_FOUND);
	CHECK(genid_admin_wait_watchers(admin, NULL, 1000) == 0);
	CHECK(genid_admin_bump(admin, NULL, g + 10, "min", &g2) == 0 && g2 == g + 10);
	CHECK(genid_admin_wait_watchers(admin, "", 50) == GENID_ST_TIMEOUT);
	CHECK(genid_wait_event(&w, &g2, NULL) == 0 && g2 == g + 10);
	CHECK(genid_ack(&w, g2) == 0);
	CHECK(genid_admin_wait_watchers(admin, NULL, 5000) == 0);
	CHECK(genid_admin_bump(admin, "a-name-longer-than-sixty-four-bytes-is-refused-before-it-is-sent-x",
			       0, NULL, NULL) == -ENAMETOOLONG);
	ok("admin");

	/* Closed: unregistered. */
	genid_close(&w);
	CHECK(genid_fd(&w) == -1);
	bump(admin);
	CHECK(genid_wait_watchers(&c, 5000) == 0);
	genid_close(&c);
	genid_unmap(&pg);
	ok("close");
}

/* A watcher that lost its daemon reconnects, and sees what it missed. */
static void test_reconnect(void)
{
	struct genid_conn w;
	uint32_t gen, g;
	int ret, i;

	CHECK(genid_open(&w, dir) == 0);
	CHECK(genid_watch(&w, &gen) == 0);
	printf("restart\n");	/* the test restarts the daemon, and bumps once */
	fflush(stdout);
	ret = genid_wait_event(&w, &g, NULL);
	CHECK(ret == -ECONNRESET);
	for (i = 0; i < 1000; i++) {
		ret = genid_reconnect(&w);
		if (ret >= 0)
			break;
		usleep(10000);	/* no daemon yet, or the old one still going */
	}
	if (ret)
		fprintf(stderr, "reconnect: %d %s\n", ret, ret > 0 ? w.msg : strerror(-ret));
	CHECK(ret == 0);
	CHECK(genid_wait_event(&w, &g, NULL) == 0 && g == gen + 1);
	CHECK(genid_ack(&w, g) == 0);
	genid_close(&w);
	ok("reconnect");
}

/* ---- The restored rule, against a scripted peer ---------------------------- */

static void put_frame(int fd, uint8_t op, uint16_t status, uint32_t id, const void *p, uint32_t len)
{
	unsigned char f[GENID_HDR_SIZE + 64] = { GENID_VERSION, op, status & 0xff, status >> 8 };

	genid__put_le32(f + 4, id);
	genid__put_le32(f + 8, len);
	if (len)
		memcpy(f + GENID_HDR_SIZE, p, len);
	CHECK(write(fd, f, GENID_HDR_SIZE + len) == (ssize_t)(GENID_HDR_SIZE + len));
}

static void put_event(int fd, uint32_t gen, uint32_t flags)
{
	unsigned char p[8];

	genid__put_le32(p, gen);
	genid__put_le32(p + 4, flags);
	put_frame(fd, GENID_OP_EVENT, 0, 0, p, sizeof(p));
}

/* peer_read returns how many frames the client sent, all like the first. */
static int peer_read(int fd, uint8_t op, uint32_t id)
{
	unsigned char buf[256];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	uint32_t len;
	int frames = 0;

	CHECK(n >= GENID_HDR_SIZE);
	len = GENID_HDR_SIZE + genid__le32(buf + 8);
	for (ssize_t o = 0; o < n; o += len, frames++) {
		CHECK(o + (ssize_t)len <= n && buf[o + 1] == op && genid__le32(buf + o + 4) == id);
		CHECK(!memcmp(buf + o, buf, len));
	}
	return frames;
}

/* A connection of our own on one end of a socketpair; the peer has the other. */
static void scripted(struct genid_conn *c, int *peer)
{
	int sv[2];

	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	memset(c, 0, sizeof(*c));
	c->fd = sv[0];
	*peer = sv[1];
}

static void test_restored(void)
{
	unsigned char seven[4];
	struct genid_conn c;
	uint32_t g, flags;
	int peer;

	genid__put_le32(seven, 7);

	/*
	 * Blocked in wait-watchers at checkpoint: the request was lost with
	 * the old connection. The restored event makes it ask again.
	 */
	scripted(&c, &peer);
	put_event(peer, 7, GENID_FLAG_RESTORED);
	put_frame(peer, GENID_OP_WAIT_WATCHERS, 0, 1, NULL, 0);
	CHECK(genid_wait_watchers(&c, 0) == 0);
	CHECK(peer_read(peer, GENID_OP_WAIT_WATCHERS, 1) == 2);
	genid_close(&c);
	close(peer);

	/*
	 * Asked on the new connection already: the resent copy is refused as
	 * a second wait (limit), and the call waits for the first's reply.
	 */
	scripted(&c, &peer);
	put_event(peer, 7, GENID_FLAG_RESTORED);
	put_frame(peer, GENID_OP_WAIT_WATCHERS, GENID_ST_LIMIT, 1, "limit", 5);
	put_frame(peer, GENID_OP_WAIT_WATCHERS, GENID_ST_TIMEOUT, 1, "timeout", 7);
	CHECK(genid_wait_watchers(&c, 100) == GENID_ST_TIMEOUT);
	CHECK(peer_read(peer, GENID_OP_WAIT_WATCHERS, 1) == 2);
	genid_close(&c);
	close(peer);

	/* With no restore, a limit is a limit, and nothing goes twice. */
	scripted(&c, &peer);
	put_event(peer, 7, 0);
	put_frame(peer, GENID_OP_WAIT_WATCHERS, GENID_ST_LIMIT, 1, "limit", 5);
	CHECK(genid_wait_watchers(&c, 0) == GENID_ST_LIMIT && !strcmp(c.msg, "limit"));
	CHECK(peer_read(peer, GENID_OP_WAIT_WATCHERS, 1) == 1);
	genid_close(&c);
	close(peer);

	/*
	 * Blocked in ack at checkpoint: sent again, refused as stale (the
	 * restore bumped), and the restored event is the watcher's next.
	 */
	scripted(&c, &peer);
	put_frame(peer, GENID_OP_WATCH, 0, 1, (unsigned char[]){ 5, 0, 0, 0 }, 4);
	CHECK(genid_watch(&c, &g) == 0 && g == 5);
	CHECK(peer_read(peer, GENID_OP_WATCH, 1) == 1);
	put_event(peer, 7, GENID_FLAG_RESTORED);
	put_frame(peer, GENID_OP_ACK, GENID_ST_STALE, 2, "stale", 5);
	CHECK(genid_ack(&c, 5) == GENID_ST_STALE && genid_acked(&c) == 5);
	CHECK(peer_read(peer, GENID_OP_ACK, 2) == 2);
	CHECK(genid_read_event(&c, &g, &flags) == 0 && g == 7 && flags == GENID_FLAG_RESTORED);
	CHECK(genid_read_event(&c, &g, &flags) == 0 && g == 7 && flags == 0);	/* handed out */
	genid_close(&c);
	close(peer);

	/* Blocked in a wait for events: nothing to send again, the event wakes it. */
	scripted(&c, &peer);
	put_frame(peer, GENID_OP_WATCH, 0, 1, (unsigned char[]){ 5, 0, 0, 0 }, 4);
	CHECK(genid_watch(&c, &g) == 0);
	CHECK(peer_read(peer, GENID_OP_WATCH, 1) == 1);
	put_event(peer, 7, GENID_FLAG_RESTORED);
	CHECK(genid_wait_event(&c, &g, &flags) == 0 && g == 7 && flags == GENID_FLAG_RESTORED);
	CHECK(recv(peer, seven, sizeof(seven), MSG_DONTWAIT) < 0 && errno == EAGAIN);
	/* A restored watcher that is up to date is not woken by its event. */
	put_frame(peer, GENID_OP_ACK, 0, 2, NULL, 0);
	CHECK(genid_ack(&c, 7) == 0);
	CHECK(peer_read(peer, GENID_OP_ACK, 2) == 1);
	put_event(peer, 7, GENID_FLAG_RESTORED);
	CHECK(genid_read_event(&c, &g, NULL) == -EAGAIN);
	genid_close(&c);
	close(peer);

	/* An ack of what the page showed, before its event came: up to date. */
	scripted(&c, &peer);
	put_frame(peer, GENID_OP_WATCH, 0, 1, (unsigned char[]){ 5, 0, 0, 0 }, 4);
	put_frame(peer, GENID_OP_ACK, 0, 2, NULL, 0);
	CHECK(genid_watch(&c, &g) == 0 && genid_ack(&c, 7) == 0);
	CHECK(genid_read_event(&c, &g, NULL) == -EAGAIN);
	put_event(peer, 7, 0);
	CHECK(genid_read_event(&c, &g, NULL) == -EAGAIN);
	put_event(peer, 8, 0);
	CHECK(genid_read_event(&c, &g, NULL) == 0 && g == 8);
	genid_close(&c);
	close(peer);

	/* A daemon that hangs up: the calls say so. */
	scripted(&c, &peer);
	close(peer);
	CHECK(genid_read_event(&c, &g, NULL) == -ECONNRESET);
	CHECK(genid_wait_event(&c, &g, NULL) == -ECONNRESET);
	CHECK(genid_get(&c, &g) == -EPIPE);
	genid_close(&c);
	ok("restored");
}

/*
 * A connection the daemon refused at connect (a limit): the calls fail with
 * its refusal, read where a reply was awaited, or after the request could
 * not go because the daemon had already hung up.
 */
static void test_refused(void)
{
	static const char why[] = "uid 1000 has 64 connections: limit";
	struct genid_conn c;
	uint32_t g;
	int peer;

	scripted(&c, &peer);
	put_frame(peer, GENID_OP_REFUSED, GENID_ST_LIMIT, 0, why, sizeof(why) - 1);
	CHECK(genid_get(&c, &g) == GENID_ST_LIMIT && !strcmp(c.msg, why));
	close(peer);
	genid_close(&c);

	scripted(&c, &peer);
	put_frame(peer, GENID_OP_REFUSED, GENID_ST_LIMIT, 0, why, sizeof(why) - 1);
	close(peer);
	CHECK(genid_get(&c, &g) == GENID_ST_LIMIT && !strcmp(c.msg, why));
	genid_close(&c);

	scripted(&c, &peer);
	put_frame(peer, GENID_OP_REFUSED, GENID_ST_LIMIT, 0, why, sizeof(why) - 1);
	close(peer);
	CHECK(genid_wait_event(&c, &g, NULL) == GENID_ST_LIMIT && !strcmp(c.msg, why));
	genid_close(&c);
	ok("refused");
}

struct page_waiter {
	struct genid_page *pg;
	uint32_t seen, gen;
	int ret, asleep;
};

static void *page_waiter(void *arg)
{
	struct page_waiter *w = arg;

	__atomic_store_n(&w->asleep, 1, __ATOMIC_RELEASE);
	w->ret = genid_page_wait(w->pg, w->seen, 10000, &w->gen);
	return NULL;
}

/* Sleeping on the page: a thread is woken by the daemon's bump (in another
 * process, through its own mapping), a moved generation returns at once,
 * and a timeout ends a wait with -ETIMEDOUT. */
static void test_page_wait(struct genid_conn *admin)
{
	struct page_waiter w = { 0 };
	const struct timespec pause = { .tv_nsec = 100 * 1000 * 1000 };
	struct genid_page pg;
	pthread_t t;
	uint32_t gen, g;

	CHECK(genid_map(&pg, dir) == 0);
	gen = genid_page_generation(&pg);
	CHECK(genid_page_wait(&pg, gen, 30, &g) == -ETIMEDOUT);
	CHECK(genid_page_wait(&pg, gen - 1, 0, &g) == 0 && g == gen);

	w.pg = &pg;
	w.seen = gen;
	CHECK(pthread_create(&t, NULL, page_waiter, &w) == 0);
	while (!__atomic_load_n(&w.asleep, __ATOMIC_ACQUIRE))
		nanosleep(&pause, NULL);
	nanosleep(&pause, NULL);	/* into the futex */
	g = bump(admin);
	CHECK(pthread_join(t, NULL) == 0);
	CHECK(w.ret == 0 && w.gen == g && g == gen + 1);
	genid_unmap(&pg);
	ok("page wait");
}

int main(int argc, char **argv)
{
	struct genid_conn admin;
	char sock[256];

	if (argc != 2) {
		fprintf(stderr, "usage: api RUN_DIR\n");
		return 2;
	}
	dir = argv[1];
	test_restored();
	test_refused();
	path(sock, sizeof(sock), GENID_ADMIN_SOCKET_NAME);
	CHECK(genid_open_timeout(&admin, sock, 10000) == 0);
	test_page();
	test_page_wait(&admin);
	test_watcher(&admin);
	genid_close(&admin);
	test_reconnect();
	printf("PASS\n");
	return 0;
}
