/* SPDX-License-Identifier: MIT */
/*
 * genid.h - C client of genid, the system generation counter. Header only:
 * include it, nothing to link.
 *
 * Speaks PROTOCOL.md: the page RUN_DIR/generation, mapped for the hot-path
 * check, and the daemon's unix socket RUN_DIR/genid.sock for everything
 * else. It mirrors the Go client (package genid):
 *
 *	Go                       C
 *	genid.Open (the page)    genid_map, genid_page_generation, genid_unmap
 *	Client.WaitChange        genid_page_wait     (sleeps on the page)
 *	(the connection)         genid_open, genid_open_timeout, genid_close
 *	Client.Watch             genid_watch
 *	Watcher.Wait             genid_wait_event    (blocks)
 *	Watcher.TryWait          genid_read_event    (never blocks)
 *	(the watcher's fd)       genid_fd            (readable when outdated)
 *	Watcher.Ack              genid_ack, genid_ack_quiet
 *	Watcher.Acked            genid_acked
 *	Client.Outdated          genid_outdated
 *	Client.WaitWatchers      genid_wait_watchers
 *	(reconnect)              genid_reconnect
 *	Admin                    genid_admin_bump, genid_admin_get,
 *	                         genid_admin_wait_watchers, genid_admin_restore,
 *	                         genid_admin_query_peer (and genid_attach)
 *
 * Calls on a connection return 0 on success, a positive GENID_ST_* code
 * when the daemon refused the request (its message is then in c->msg), or
 * a negative errno when the connection failed. A struct genid_conn is not
 * safe for concurrent use: give each thread its own.
 *
 * Across a CRIU checkpoint/restore with genid's plugin, the connection is
 * replaced under the process and the daemon marks the first event on the
 * new one "restored"; a call that was waiting for its reply then sends its
 * request again, so a program blocked in any call at checkpoint time gets
 * a correct answer after restore (PROTOCOL.md, "Events").
 *
 *	struct genid_conn c;
 *	uint32_t gen;
 *
 *	if (genid_open(&c, GENID_DEFAULT_RUN_DIR) || genid_watch(&c, &gen))
 *		die();
 *	while (genid_wait_event(&c, &gen, NULL) == 0) {
 *		rebuild_state();
 *		genid_ack(&c, gen);	// GENID_ST_STALE: a newer one came, wait again
 *	}
 *
 * Names that begin with genid__ are not API.
 */
#ifndef GENID_H
#define GENID_H

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GENID_DEFAULT_RUN_DIR	"/run/genid"
#define GENID_SOCKET_NAME	"genid.sock"
#define GENID_ADMIN_SOCKET_NAME	"admin.sock"
#define GENID_PAGE_NAME		"generation"
#define GENID_SCOPES_DIR	"scopes"
#define GENID_PAGE_SIZE		4096

#define GENID_VERSION		1
#define GENID_HDR_SIZE		16
#define GENID_MAX_REASON	256
#define GENID_MAX_NAME		64	/* a scope's name */
#define GENID_MAX_IMAGES_DIR	248	/* a restore's images dir, as sent */

enum genid_op {
	GENID_OP_GET		= 1,
	GENID_OP_WATCH		= 2,
	GENID_OP_ACK		= 3,
	GENID_OP_OUTDATED	= 4,
	GENID_OP_WAIT_WATCHERS	= 5,
	GENID_OP_BUMP		= 6,
	GENID_OP_STATUS		= 7,
	GENID_OP_ATTACH		= 8,
	GENID_OP_QUERY_PEER	= 9,
	GENID_OP_SCOPE_CREATE	= 10,
	GENID_OP_SCOPE_REMOVE	= 11,
	GENID_OP_SCOPES		= 12,
	GENID_OP_RESTORE	= 13,
	GENID_OP_EVENT		= 0x80,
	GENID_OP_REFUSED	= 0x81,	/* the connection, refused at connect */
};

#define GENID_FLAG_WATCHER	(1u << 0)
#define GENID_FLAG_RESTORED	(1u << 1)	/* an event: the connection was restored */
#define GENID_FLAG_QUIET	(1u << 2)	/* ack: reply only to refuse */
#define GENID_FLAG_AVOID	(1u << 0)	/* restore: past the recorded generation */
#define GENID_FLAG_BEGIN	(1u << 1)	/* restore: open the restore only */

enum genid_status {
	GENID_ST_OK		= 0,
	GENID_ST_BAD_REQUEST	= 1,
	GENID_ST_UNKNOWN_OP	= 2,
	GENID_ST_STALE		= 3,
	GENID_ST_PERMISSION	= 4,
	GENID_ST_TIMEOUT	= 5,
	GENID_ST_INTERRUPTED	= 6,
	GENID_ST_OVERFLOW	= 7,
	GENID_ST_LIMIT		= 8,
	GENID_ST_VERSION	= 9,
	GENID_ST_NOT_WATCHER	= 10,
	GENID_ST_NOT_FOUND	= 11,
	GENID_ST_INTERNAL	= 12,
	GENID_ST_EXISTS		= 13,
};

struct genid_hdr {
	uint8_t version;
	uint8_t op;
	uint16_t status;
	uint32_t id;
	uint32_t len;
	uint32_t reserved;
};

/* A connection to the daemon. Read fd and msg; leave the rest to genid.h. */
struct genid_conn {
	int fd;
	/* The message of the last refused request. */
	char msg[256];

	uint32_t next_id;
	/* Send and receive timeout in ms; 0: block for ever (watchers). */
	unsigned int timeout_ms;
	/* A watcher: what it acked, and the newest generation events told. */
	int watching;
	uint32_t acked;
	uint32_t latest;
	/* The flags of the events not handed out yet. */
	uint32_t event_flags;
	/* The socket, for genid_reconnect. */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* A mapped page: genid_map. */
struct genid_page {
	const uint32_t *gen;
};

/*
 * NAME
 *	genid_strstatus - the name of a result code
 * SYNOPSIS
 *	const char *genid_strstatus(int st);
 * DESCRIPTION
 *	Names a positive GENID_ST_* code as PROTOCOL.md does ("stale
 *	generation", "timeout"...). For the daemon's own words, read c->msg.
 * RETURN VALUE
 *	A static string; "unknown status" for a code it does not know.
 */
static inline const char *genid_strstatus(int st)
{
	switch (st) {
	case GENID_ST_OK:		return "ok";
	case GENID_ST_BAD_REQUEST:	return "bad request";
	case GENID_ST_UNKNOWN_OP:	return "unknown op";
	case GENID_ST_STALE:		return "stale generation";
	case GENID_ST_PERMISSION:	return "permission denied";
	case GENID_ST_TIMEOUT:		return "timeout";
	case GENID_ST_INTERRUPTED:	return "interrupted";
	case GENID_ST_OVERFLOW:		return "generation overflow";
	case GENID_ST_LIMIT:		return "limit reached";
	case GENID_ST_VERSION:		return "unsupported version";
	case GENID_ST_NOT_WATCHER:	return "not a watcher";
	case GENID_ST_NOT_FOUND:	return "not found";
	case GENID_ST_INTERNAL:		return "internal error";
	case GENID_ST_EXISTS:		return "exists";
	}
	return "unknown status";
}

/* ---- Not API: helpers ------------------------------------------------- */

static inline uint32_t genid__le32(const void *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline void genid__put_le32(void *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, sizeof(v));
}

static inline int genid__write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= n;
	}
	return 0;
}

static inline int genid__read_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len > 0) {
		ssize_t n = read(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= n;
	}
	return 0;
}

/* genid__read_file reads up to cap - 1 bytes of a small file, NUL-terminated. */
static inline int genid__read_file(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = read(fd, buf, cap - 1);
	close(fd);
	if (n < 0)
		return -EIO;
	buf[n] = '\0';
	return 0;
}

/*
 * genid__foreign_root tells whether uid is the overflow uid of a user
 * namespace: inside one, files of users it does not map (the host's root
 * among them) show as that uid, and a run dir bind-mounted from the host
 * into a container is one of those.
 */
static inline int genid__foreign_root(uid_t uid)
{
	char buf[256], *nl;
	unsigned long a, b, c, overflow = 65534;

	if (!genid__read_file("/proc/sys/kernel/overflowuid", buf, sizeof(buf)))
		sscanf(buf, "%lu", &overflow);
	if (uid != overflow)
		return 0;
	if (genid__read_file("/proc/self/uid_map", buf, sizeof(buf)))
		return 0;
	/* The initial namespace maps every uid to itself, in one line. */
	nl = strchr(buf, '\n');
	if (sscanf(buf, "%lu %lu %lu", &a, &b, &c) == 3 && a == 0 && b == 0 &&
	    c == 4294967295UL && (!nl || !nl[1]))
		return 0;
	return 1;
}

/*
 * genid__trust refuses a run dir that another user could have made, as the
 * Go client does: a client would read that user's page and talk to that
 * user's daemon. It must be a directory (not a link to one), owned by root
 * or by this process's user, and writable by nobody else.
 */
static inline int genid__trust(const char *dir)
{
	struct stat st;

	if (lstat(dir, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))
		return -ENOTDIR;
	if (st.st_uid != 0 && st.st_uid != geteuid() && !genid__foreign_root(st.st_uid))
		return -EPERM;
	if ((st.st_mode & 0022) && !(st.st_mode & S_ISVTX))
		return -EPERM;
	return 0;
}

/*
 * genid__resolve turns what genid_open and genid_map take (a run dir, or
 * the file itself; NULL: the default run dir) into a file's path.
 */
static inline int genid__resolve(const char *path, const char *name, char *out, size_t cap)
{
	struct stat st;
	int ret;

	if (!path)
		path = GENID_DEFAULT_RUN_DIR;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		ret = genid__trust(path);
		if (ret)
			return ret;
		if ((size_t)snprintf(out, cap, "%s/%s", path, name) >= cap)
			return -ENAMETOOLONG;
		return 0;
	}
	if (strlen(path) >= cap)
		return -ENAMETOOLONG;
	strcpy(out, path);
	return 0;
}

/* ---- The page ----------------------------------------------------------- */

/*
 * NAME
 *	genid_map - map a scope's page, for the hot-path check
 * SYNOPSIS
 *	int genid_map(struct genid_page *pg, const char *path);
 * DESCRIPTION
 *	Maps the generation page read-only. path is a run dir (its page
 *	RUN_DIR/generation; NULL: /run/genid, which in a container is its
 *	own scope) or a page itself (/dev/sysgenid). A run dir that another
 *	user could have made is refused: it must be a directory, owned by
 *	root or this user, and writable by nobody else. The daemon need not
 *	run. The mapping survives fork and CRIU checkpoint/restore (CRIU maps
 *	the file at its path again, which the restore gives the restored
 *	scope). See PROTOCOL.md, "The page".
 * RETURN VALUE
 *	0, or a negative errno.
 * ERRORS
 *	-ENOENT no page (no daemon ever ran there); -EPERM an untrusted run
 *	dir; -EINVAL a file too short to be a page; others of open and mmap.
 */
static inline int genid_map(struct genid_page *pg, const char *path)
{
	char file[4096];
	struct stat st;
	void *p;
	int fd, ret;

	pg->gen = NULL;
	ret = genid__resolve(path, GENID_PAGE_NAME, file, sizeof(file));
	if (ret)
		return ret;
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	if (st.st_size < 4) {
		close(fd);
		return -EINVAL;
	}
	p = mmap(NULL, GENID_PAGE_SIZE, PROT_READ, MAP_SHARED, fd, 0);
	ret = -errno;
	close(fd);
	if (p == MAP_FAILED)
		return ret;
	pg->gen = p;
	return 0;
}

/*
 * NAME
 *	genid_page_generation - the current generation, from the page
 * SYNOPSIS
 *	uint32_t genid_page_generation(const struct genid_page *pg);
 * DESCRIPTION
 *	One atomic load, no system call: cheap enough to check before every
 *	use of what must not survive a restore (cached secrets, nonces).
 *	Remember the generation before rebuilding, and check again after:
 *
 *	again:
 *		if (genid_page_generation(&pg) != made_at) {
 *			made_at = genid_page_generation(&pg);
 *			rebuild();
 *			goto again;
 *		}
 *
 *	The daemon stores a bump on the page before it tells any watcher.
 * RETURN VALUE
 *	The generation.
 */
static inline uint32_t genid_page_generation(const struct genid_page *pg)
{
	return __atomic_load_n(pg->gen, __ATOMIC_ACQUIRE);
}

/*
 * NAME
 *	genid_page_wait - sleep on the page until the generation moves
 * SYNOPSIS
 *	int genid_page_wait(const struct genid_page *pg, uint32_t seen,
 *			    int timeout_ms, uint32_t *gen);
 * DESCRIPTION
 *	Sleeps until the page's generation differs from seen, and stores it
 *	in *gen. The generation is a futex word that the daemon wakes with
 *	each bump, so the thread sleeps on the page itself: no connection,
 *	and a bump made by a restarted daemon wakes it too. The daemon does
 *	not know of the thread: a barrier (genid_wait_watchers) does not wait
 *	for it to rebuild; use a watcher for that. A signal does not end the
 *	wait (nor does a CRIU restore, which the daemon's bump ends). The
 *	thread sleeps on the file it mapped: if the run dir was removed and
 *	made again, map it again.
 *	timeout_ms < 0 waits without limit.
 * RETURN VALUE
 *	0, or a negative errno.
 * ERRORS
 *	-ETIMEDOUT the generation was still seen after timeout_ms; others
 *	of futex(2).
 */
static inline int genid_page_wait(const struct genid_page *pg, uint32_t seen,
				  int timeout_ms, uint32_t *gen)
{
	struct timespec now, end = { 0 }, left, *tp = NULL;

	if (timeout_ms >= 0) {
		if (clock_gettime(CLOCK_MONOTONIC, &end) < 0)
			return -errno;
		end.tv_sec += timeout_ms / 1000;
		end.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
		if (end.tv_nsec >= 1000000000) {
			end.tv_sec++;
			end.tv_nsec -= 1000000000;
		}
		tp = &left;
	}
	for (;;) {
		uint32_t g = genid_page_generation(pg);

		if (g != seen) {
			*gen = g;
			return 0;
		}
		if (tp) {
			if (clock_gettime(CLOCK_MONOTONIC, &now) < 0)
				return -errno;
			left.tv_sec = end.tv_sec - now.tv_sec;
			left.tv_nsec = end.tv_nsec - now.tv_nsec;
			if (left.tv_nsec < 0) {
				left.tv_sec--;
				left.tv_nsec += 1000000000;
			}
			if (left.tv_sec < 0)
				return -ETIMEDOUT;
		}
		/* Not FUTEX_PRIVATE_FLAG: the word is shared with the daemon. */
		if (syscall(SYS_futex, pg->gen, FUTEX_WAIT, seen, tp, NULL, 0) < 0 &&
		    errno != EAGAIN && errno != EINTR && errno != ETIMEDOUT)
			return -errno;
	}
}

/*
 * NAME
 *	genid_unmap - release a page mapped by genid_map
 * SYNOPSIS
 *	void genid_unmap(struct genid_page *pg);
 * DESCRIPTION
 *	Unmaps the page. Unmapping one that is not mapped does nothing.
 */
static inline void genid_unmap(struct genid_page *pg)
{
	if (pg->gen)
		munmap((void *)pg->gen, GENID_PAGE_SIZE);
	pg->gen = NULL;
}

/* ---- Connections -------------------------------------------------------- */

/*
 * GENID_CONNECT_RETRY_MS is how long genid_connect keeps trying a socket that
 * refuses: the daemon binds its path a moment before it listens, and a client
 * started along with it can come in between. A stale socket, left by a
 * daemon that is gone, is refused that much later.
 */
#define GENID_CONNECT_RETRY_MS	200

/*
 * NAME
 *	genid_set_timeout - bound the sends and receives on a socket
 * SYNOPSIS
 *	int genid_set_timeout(int fd, unsigned int timeout_ms);
 * DESCRIPTION
 *	Bounds every send and receive on fd (and a connect to a full backlog)
 *	to timeout_ms; 0 removes the bound. A request/reply exchange wants
 *	one, so that a stopped daemon cannot hang the caller; a watcher
 *	blocked on events must not have one.
 * RETURN VALUE
 *	0, or a negative errno of setsockopt.
 */
static inline int genid_set_timeout(int fd, unsigned int timeout_ms)
{
	struct timeval tv = {
		.tv_sec = timeout_ms / 1000,
		.tv_usec = (timeout_ms % 1000) * 1000,
	};

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -errno;
	return 0;
}

/*
 * NAME
 *	genid_connect_timeout, genid_connect - connect to a socket of the daemon
 * SYNOPSIS
 *	int genid_connect_timeout(const char *path, unsigned int timeout_ms);
 *	int genid_connect(const char *path);
 * DESCRIPTION
 *	Connects a close-on-exec unix stream socket to path, trying a socket
 *	that refuses again for GENID_CONNECT_RETRY_MS (PROTOCOL.md,
 *	"Connecting"). With a timeout_ms, the socket keeps that timeout (see
 *	genid_set_timeout). For a socket of one's own; most programs want
 *	genid_open.
 * RETURN VALUE
 *	The socket, or a negative errno.
 * ERRORS
 *	-ECONNREFUSED a stale socket (its daemon is gone); -ENOENT no
 *	socket; -ETIMEDOUT the backlog stayed full; -ENAMETOOLONG.
 */
static inline int genid_connect_timeout(const char *path, unsigned int timeout_ms)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	const struct timespec ms = { .tv_nsec = 1000000 };
	int fd, err, tries = 0;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	strcpy(addr.sun_path, path);

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (timeout_ms) {
		err = genid_set_timeout(fd, timeout_ms);
		if (err) {
			close(fd);
			return err;
		}
	}
	while (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		err = -errno;
		if (err == -EAGAIN && timeout_ms)
			err = -ETIMEDOUT;	/* the backlog stayed full */
		if (err != -ECONNREFUSED || ++tries > GENID_CONNECT_RETRY_MS) {
			close(fd);
			return err;
		}
		nanosleep(&ms, NULL);
	}
	return fd;
}

static inline int genid_connect(const char *path)
{
	return genid_connect_timeout(path, 0);
}

/*
 * NAME
 *	genid_open_timeout, genid_open - open a connection to the daemon
 * SYNOPSIS
 *	int genid_open_timeout(struct genid_conn *c, const char *path,
 *			       unsigned int timeout_ms);
 *	int genid_open(struct genid_conn *c, const char *path);
 * DESCRIPTION
 *	Connects c to the daemon. path is a run dir (its socket
 *	RUN_DIR/genid.sock; NULL: /run/genid, which in a container is its own
 *	scope), refused like genid_map refuses it if another user could have
 *	made it; or a socket itself (a scope's, or RUN_DIR/admin.sock for
 *	the genid_admin_* calls). With timeout_ms, every call on c gives up
 *	with -ETIMEDOUT when the daemon does not take or answer it in time:
 *	for request/reply exchanges, not for a watcher, which waits for
 *	events as long as it takes (genid_open: no timeout).
 *	c is set up even on failure: genid_close(c) is then harmless.
 * RETURN VALUE
 *	0, or a negative errno.
 * ERRORS
 *	As genid_connect_timeout; -EPERM an untrusted run dir.
 */
static inline int genid_open_timeout(struct genid_conn *c, const char *path,
				     unsigned int timeout_ms)
{
	int ret;

	memset(c, 0, sizeof(*c));
	c->fd = -1;
	c->timeout_ms = timeout_ms;
	ret = genid__resolve(path, GENID_SOCKET_NAME, c->path, sizeof(c->path));
	if (ret)
		return ret;
	c->fd = genid_connect_timeout(c->path, timeout_ms);
	return c->fd < 0 ? c->fd : 0;
}

static inline int genid_open(struct genid_conn *c, const char *path)
{
	return genid_open_timeout(c, path, 0);
}

/*
 * NAME
 *	genid_close - close a connection
 * SYNOPSIS
 *	void genid_close(struct genid_conn *c);
 * DESCRIPTION
 *	Closes c's socket; a watcher is unregistered. Closing twice is
 *	harmless.
 */
static inline void genid_close(struct genid_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/*
 * NAME
 *	genid_fd - the descriptor to poll
 * SYNOPSIS
 *	int genid_fd(const struct genid_conn *c);
 * DESCRIPTION
 *	A watcher's socket is readable (POLLIN, EPOLLIN) exactly when it has
 *	become outdated, and at hang-up. Put it in an event loop beside the
 *	loop's other descriptors and call genid_read_event when it is
 *	readable. Do not read from it, nor make it non-blocking, yourself.
 * RETURN VALUE
 *	The descriptor; -1 once closed.
 */
static inline int genid_fd(const struct genid_conn *c)
{
	return c->fd;
}

/* ---- Not API: frames ------------------------------------------------------ */

/*
 * GENID_MAX_REQ is the largest request payload genid.h sends: a bump on the
 * admin socket (the scope's name, min, flags, reason).
 */
#define GENID_MAX_REQ		(1 + GENID_MAX_NAME + 8 + GENID_MAX_REASON)

/*
 * genid__timed_out turns the EAGAIN of a timed connection's blocking socket
 * into what it means.
 */
static inline int genid__timed_out(const struct genid_conn *c, int ret)
{
	if (ret == -EAGAIN && c->timeout_ms)
		return -ETIMEDOUT;
	return ret;
}

/*
 * genid__send sends one frame in one write: a frame split across two writes
 * can wake the daemon twice.
 */
static inline int genid__send(struct genid_conn *c, uint8_t op, uint32_t id,
			      const void *payload, uint32_t len)
{
	unsigned char frame[GENID_HDR_SIZE + GENID_MAX_REQ] = { GENID_VERSION, op };
	int ret;

	if (len > GENID_MAX_REQ)
		return -EMSGSIZE;
	genid__put_le32(frame + 4, id);
	genid__put_le32(frame + 8, len);
	if (len)
		memcpy(frame + GENID_HDR_SIZE, payload, len);
	ret = genid__write_all(c->fd, frame, GENID_HDR_SIZE + len);
	return genid__timed_out(c, ret);
}

/*
 * genid__refusal keeps a refusal's message (the got bytes of its payload
 * that were read) in c->msg, cut to fit, and returns its status.
 */
static inline int genid__refusal(struct genid_conn *c, const struct genid_hdr *h,
				 const void *payload, uint32_t got)
{
	uint32_t n = got < sizeof(c->msg) ? got : sizeof(c->msg) - 1;

	memcpy(c->msg, payload, n);
	c->msg[n] = '\0';
	return h->status ? h->status : GENID_ST_INTERNAL;
}

/*
 * genid__recv reads one frame. Up to cap bytes of payload land in buf; the
 * rest is read and dropped (h->len says how much there was). A connection
 * the daemon refused at connect (GENID_OP_REFUSED: it closes it next)
 * fails with the refusal's status.
 */
static inline int genid__recv(struct genid_conn *c, struct genid_hdr *h,
			      void *buf, uint32_t cap)
{
	unsigned char raw[GENID_HDR_SIZE], sink[256];
	uint32_t left;
	int ret;

	ret = genid__read_all(c->fd, raw, sizeof(raw));
	if (ret)
		return genid__timed_out(c, ret);
	h->version = raw[0];
	h->op = raw[1];
	h->status = raw[2] | raw[3] << 8;
	h->id = genid__le32(raw + 4);
	h->len = genid__le32(raw + 8);
	h->reserved = genid__le32(raw + 12);
	if (h->version != GENID_VERSION)
		return -EPROTO;

	left = h->len;
	if (cap > left)
		cap = left;
	ret = genid__read_all(c->fd, buf, cap);
	if (ret)
		return genid__timed_out(c, ret);
	left -= cap;
	while (left > 0) {
		uint32_t n = left < sizeof(sink) ? left : sizeof(sink);

		ret = genid__read_all(c->fd, sink, n);
		if (ret)
			return genid__timed_out(c, ret);
		left -= n;
	}
	if (h->op == GENID_OP_REFUSED)
		return genid__refusal(c, h, buf, cap);
	return 0;
}

/*
 * genid__why_down turns a send that failed because the daemon closed the
 * connection into the refusal it sent first, if it sent one: a connection
 * refused at connect is closed before its first request goes.
 */
static inline int genid__why_down(struct genid_conn *c, int err)
{
	unsigned char buf[256];
	struct genid_hdr h;
	int ret;

	if (err != -EPIPE && err != -ECONNRESET)
		return err;
	ret = genid__recv(c, &h, buf, sizeof(buf));
	return ret > 0 ? ret : err;
}

/*
 * genid__note_event takes in an event: the newest generation, and its flags
 * until they are handed out. It returns the event's flags.
 */
static inline uint32_t genid__note_event(struct genid_conn *c, const struct genid_hdr *h,
					 const unsigned char *p)
{
	uint32_t flags;

	if (h->len < 8)
		return 0;
	flags = genid__le32(p + 4);
	c->latest = genid__le32(p);
	c->event_flags |= flags;
	return flags;
}

/*
 * genid__call sends a request and reads until its reply: up to repcap bytes
 * of its payload land in rep, and *replen (if not NULL) says how long it
 * was. Events read meanwhile are taken in for genid_wait_event. A refusal
 * returns its status and leaves the daemon's message in c->msg.
 *
 * An event flagged "restored" means the connection was replaced under us
 * (CRIU): a request written before the checkpoint was lost with the old
 * one, so it is sent again (PROTOCOL.md, "Events"). One written on the new
 * connection already then goes twice: the first reply answers the call and
 * a later call skips the second by its id. A second wait-watchers on one
 * connection is refused with "limit" at once: after a resend, that refusal
 * means the first copy is being waited on, and the call waits for its reply.
 */
static inline int genid__call(struct genid_conn *c, uint8_t op, const void *req,
			      uint32_t reqlen, void *rep, uint32_t repcap, uint32_t *replen)
{
	unsigned char buf[512];
	struct genid_hdr h;
	uint32_t id = ++c->next_id, n;
	int ret, resent = 0;

	ret = genid__send(c, op, id, req, reqlen);
	if (ret)
		return genid__why_down(c, ret);
	for (;;) {
		ret = genid__recv(c, &h, buf, sizeof(buf));
		if (ret)
			return ret;
		if (h.op == GENID_OP_EVENT) {
			if (genid__note_event(c, &h, buf) & GENID_FLAG_RESTORED) {
				ret = genid__send(c, op, id, req, reqlen);
				if (ret)
					return ret;
				resent = 1;
			}
			continue;
		}
		if (h.id != id)
			continue;	/* a refused quiet ack, or a resent request's twin */
		if (h.status == GENID_ST_LIMIT && resent && op == GENID_OP_WAIT_WATCHERS)
			continue;
		if (h.status)
			return genid__refusal(c, &h, buf, h.len < sizeof(buf) ? h.len : sizeof(buf));
		if (h.len > sizeof(buf) || (!replen && h.len < repcap))
			return -EPROTO;
		if (replen)
			*replen = h.len;
		n = h.len < repcap ? h.len : repcap;
		if (n)
			memcpy(rep, buf, n);
		return 0;
	}
}

static inline int genid__call_u32(struct genid_conn *c, uint8_t op, const void *req,
				  uint32_t reqlen, uint32_t *out)
{
	unsigned char rep[4];
	int ret = genid__call(c, op, req, reqlen, rep, sizeof(rep), NULL);

	if (!ret && out)
		*out = genid__le32(rep);
	return ret;
}

/*
 * genid__put_name writes a scope's name as the admin socket's requests begin
 * ("" or NULL: the host scope) and returns the bytes it took, or 0 if the
 * name is longer than GENID_MAX_NAME.
 */
static inline size_t genid__put_name(unsigned char *p, const char *scope)
{
	size_t n = scope ? strlen(scope) : 0;

	if (n > GENID_MAX_NAME)
		return 0;
	p[0] = (unsigned char)n;
	if (n)
		memcpy(p + 1, scope, n);
	return 1 + n;
}

/*
 * genid__get_name reads a scope's name at the front of a reply of len bytes
 * into out (of cap bytes, NUL-terminated); it returns the bytes it took, or
 * 0 if the reply is too short or the name does not fit.
 */
static inline size_t genid__get_name(const unsigned char *p, uint32_t len, char *out, size_t cap)
{
	if (len < 1 || len < 1u + p[0] || (size_t)p[0] >= cap)
		return 0;
	memcpy(out, p + 1, p[0]);
	out[p[0]] = '\0';
	return 1 + p[0];
}

/*
 * genid__pump reads the frames that wait on the socket, without blocking
 * for the next: events are taken in, replies (to quiet acks) dropped.
 */
static inline int genid__pump(struct genid_conn *c)
{
	struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
	unsigned char buf[64];
	struct genid_hdr h;
	int ret;

	for (;;) {
		ret = poll(&pfd, 1, 0);
		if (ret < 0 && errno == EINTR)
			continue;
		if (ret < 0)
			return -errno;
		if (ret == 0)
			return 0;
		/* The daemon writes whole frames: the rest of one is there. */
		ret = genid__recv(c, &h, buf, sizeof(buf));
		if (ret)
			return ret;
		if (h.op == GENID_OP_EVENT)
			genid__note_event(c, &h, buf);
	}
}

/* genid__outdated hands out the newest generation if the watcher is outdated. */
static inline int genid__outdated(struct genid_conn *c, uint32_t *gen, uint32_t *flags)
{
	if (c->latest == c->acked)
		return 0;
	*gen = c->latest;
	if (flags)
		*flags = c->event_flags;
	c->event_flags = 0;
	return 1;
}

/* ---- A scope's socket ------------------------------------------------------ */

/*
 * NAME
 *	genid_get - the current generation, from the daemon
 * SYNOPSIS
 *	int genid_get(struct genid_conn *c, uint32_t *gen);
 * DESCRIPTION
 *	Asks the daemon for its scope's generation: a round trip. The mapped
 *	page (genid_page_generation) tells the same without one.
 * RETURN VALUE
 *	0 and *gen, a GENID_ST_* refusal, or a negative errno.
 */
static inline int genid_get(struct genid_conn *c, uint32_t *gen)
{
	return genid__call_u32(c, GENID_OP_GET, NULL, 0, gen);
}

/*
 * NAME
 *	genid_watch - make the connection a watcher
 * SYNOPSIS
 *	int genid_watch(struct genid_conn *c, uint32_t *gen);
 * DESCRIPTION
 *	Registers c as a watcher, up to date: it has acked *gen, the current
 *	generation. From then on the daemon sends it an event at every new
 *	generation, and counts it as outdated until it acks that one.
 *	Watching twice returns what it acked. See PROTOCOL.md, "watch".
 * RETURN VALUE
 *	0 and *gen (may be NULL), a GENID_ST_* refusal, or a negative errno.
 * ERRORS
 *	GENID_ST_LIMIT the daemon's limit of watchers for this user, scope or
 *	in all is reached.
 */
static inline int genid_watch(struct genid_conn *c, uint32_t *gen)
{
	uint32_t g;
	int ret = genid__call_u32(c, GENID_OP_WATCH, NULL, 0, &g);

	if (ret)
		return ret;
	c->watching = 1;
	c->acked = c->latest = g;
	if (gen)
		*gen = g;
	return 0;
}

/*
 * NAME
 *	genid_wait_event - wait until the watcher is outdated
 * SYNOPSIS
 *	int genid_wait_event(struct genid_conn *c, uint32_t *gen, uint32_t *flags);
 * DESCRIPTION
 *	Blocks until the generation differs from the one the watcher acked,
 *	and returns the newest in *gen; at once while the watcher stays
 *	outdated (it has not acked *gen yet). *flags (may be NULL) gathers the
 *	flags of the events since the last return: GENID_FLAG_RESTORED when
 *	the process was restored by CRIU meanwhile. Rebuild, then genid_ack.
 *	For an event loop, see genid_fd and genid_read_event.
 * RETURN VALUE
 *	0, or a negative errno: -ECONNRESET when the daemon went away (see
 *	genid_reconnect), -ETIMEDOUT on a connection opened with a timeout;
 *	or GENID_ST_LIMIT (message in c->msg) on a connection the daemon
 *	refused at connect.
 */
static inline int genid_wait_event(struct genid_conn *c, uint32_t *gen, uint32_t *flags)
{
	unsigned char buf[64];
	struct genid_hdr h;
	int ret;

	for (;;) {
		if (c->latest != c->acked) {
			/* The newest, if more came; a failure shows at the next call. */
			genid__pump(c);
			if (genid__outdated(c, gen, flags))
				return 0;
		}
		ret = genid__recv(c, &h, buf, sizeof(buf));
		if (ret)
			return ret;
		if (h.op == GENID_OP_EVENT)
			genid__note_event(c, &h, buf);
	}
}

/*
 * NAME
 *	genid_read_event - the new generation, if any, without blocking
 * SYNOPSIS
 *	int genid_read_event(struct genid_conn *c, uint32_t *gen, uint32_t *flags);
 * DESCRIPTION
 *	genid_wait_event that never blocks: it takes in what the socket holds
 *	and returns the newest generation if the watcher is outdated. Call it
 *	when genid_fd(c) is readable: a read of sysgenid's fd.
 * RETURN VALUE
 *	0 and *gen (and *flags, as for genid_wait_event); -EAGAIN when the
 *	watcher is up to date; another negative errno when the connection
 *	failed (-ECONNRESET: the daemon went away); or, as genid_wait_event,
 *	the refusal of a connection refused at connect.
 */
static inline int genid_read_event(struct genid_conn *c, uint32_t *gen, uint32_t *flags)
{
	int ret = genid__pump(c);

	if (ret)
		return ret;
	return genid__outdated(c, gen, flags) ? 0 : -EAGAIN;
}

/*
 * NAME
 *	genid_ack - acknowledge a generation
 * SYNOPSIS
 *	int genid_ack(struct genid_conn *c, uint32_t gen);
 * DESCRIPTION
 *	Tells the daemon that the watcher has rebuilt for gen, which must be
 *	the current generation: the watcher is no longer outdated, and
 *	genid_wait_watchers of others may return. Acking twice is harmless.
 * RETURN VALUE
 *	0, a GENID_ST_* refusal, or a negative errno.
 * ERRORS
 *	GENID_ST_STALE gen is not the current generation: a newer one came;
 *	wait for it (genid_wait_event returns it at once).
 *	GENID_ST_NOT_WATCHER c did not watch.
 */
static inline int genid_ack(struct genid_conn *c, uint32_t gen)
{
	unsigned char req[4];
	int ret;

	genid__put_le32(req, gen);
	ret = genid__call(c, GENID_OP_ACK, req, sizeof(req), NULL, 0, NULL);
	if (ret)
		return ret;
	/* Current when the daemon took it, if no event said so yet. */
	c->acked = gen;
	if (gen > c->latest)
		c->latest = gen;
	return 0;
}

/*
 * NAME
 *	genid_ack_quiet - acknowledge a generation, without a reply
 * SYNOPSIS
 *	int genid_ack_quiet(struct genid_conn *c, uint32_t gen);
 * DESCRIPTION
 *	genid_ack that does not wait: the daemon answers only a refusal,
 *	which the calls after it read and drop. Made for event loops: the
 *	one refusal an ack of an event's generation can get is stale, and
 *	then the event of the newer generation is on its way. It saves the
 *	daemon a write and the watcher a wake-up.
 * RETURN VALUE
 *	0 (sent), or a negative errno.
 */
static inline int genid_ack_quiet(struct genid_conn *c, uint32_t gen)
{
	unsigned char req[8];
	int ret;

	genid__put_le32(req, gen);
	genid__put_le32(req + 4, GENID_FLAG_QUIET);
	ret = genid__send(c, GENID_OP_ACK, ++c->next_id, req, sizeof(req));
	if (ret)
		return ret;
	c->acked = gen;
	if (gen > c->latest)
		c->latest = gen;
	return 0;
}

/*
 * NAME
 *	genid_acked - the generation the watcher acked last
 * SYNOPSIS
 *	uint32_t genid_acked(const struct genid_conn *c);
 * RETURN VALUE
 *	What genid_watch returned, or the last generation acked since.
 */
static inline uint32_t genid_acked(const struct genid_conn *c)
{
	return c->acked;
}

/*
 * NAME
 *	genid_outdated - the number of outdated watchers
 * SYNOPSIS
 *	int genid_outdated(struct genid_conn *c, uint32_t *n);
 * DESCRIPTION
 *	Counts the watchers of the scope that have not acked its current
 *	generation.
 * RETURN VALUE
 *	0 and *n, a GENID_ST_* refusal, or a negative errno.
 */
static inline int genid_outdated(struct genid_conn *c, uint32_t *n)
{
	return genid__call_u32(c, GENID_OP_OUTDATED, NULL, 0, n);
}

/*
 * NAME
 *	genid_wait_watchers - wait until every watcher has acked
 * SYNOPSIS
 *	int genid_wait_watchers(struct genid_conn *c, uint32_t timeout_ms);
 * DESCRIPTION
 *	Blocks until no watcher of the scope is outdated: what an orchestrator
 *	waits for before it lets traffic in after a restore. timeout_ms bounds
 *	the wait (0: none); give one, since a watcher that never acks holds
 *	the barrier. Called on a watcher's connection, it never waits on the
 *	caller itself: it is interrupted when that watcher is or becomes
 *	outdated (ack first). See PROTOCOL.md, "wait-watchers".
 * RETURN VALUE
 *	0, a GENID_ST_* refusal, or a negative errno.
 * ERRORS
 *	GENID_ST_TIMEOUT a watcher was still outdated after timeout_ms (see
 *	genid_outdated). GENID_ST_INTERRUPTED this watcher is outdated: a new
 *	generation came; rebuild and ack it, then wait again.
 */
static inline int genid_wait_watchers(struct genid_conn *c, uint32_t timeout_ms)
{
	unsigned char req[4];

	genid__put_le32(req, timeout_ms);
	return genid__call(c, GENID_OP_WAIT_WATCHERS, req, sizeof(req), NULL, 0, NULL);
}

/*
 * NAME
 *	genid_attach - register the connection in place of an earlier one
 * SYNOPSIS
 *	int genid_attach(struct genid_conn *c, uint32_t flags, uint32_t acked,
 *			 uint32_t *gen);
 * DESCRIPTION
 *	With GENID_FLAG_WATCHER, c becomes a watcher that acked acked: it is
 *	outdated at once if that is not the current generation. With
 *	GENID_FLAG_RESTORED as well, it is a connection CRIU restored (the
 *	plugin's; taken only while a restore of the scope is under way).
 *	See PROTOCOL.md, "attach".
 * RETURN VALUE
 *	0 and *gen (the current generation), a GENID_ST_* refusal, or a
 *	negative errno.
 */
static inline int genid_attach(struct genid_conn *c, uint32_t flags, uint32_t acked,
			       uint32_t *gen)
{
	unsigned char req[8];
	uint32_t g;
	int ret;

	genid__put_le32(req, flags);
	genid__put_le32(req + 4, acked);
	ret = genid__call_u32(c, GENID_OP_ATTACH, req, sizeof(req), &g);
	if (ret)
		return ret;
	if (flags & GENID_FLAG_WATCHER) {
		c->watching = 1;
		c->acked = acked;
		c->latest = g;
	}
	if (gen)
		*gen = g;
	return 0;
}

/*
 * NAME
 *	genid_reconnect - connect again after the daemon went away
 * SYNOPSIS
 *	int genid_reconnect(struct genid_conn *c);
 * DESCRIPTION
 *	After a call failed with a negative errno (-ECONNRESET, -EPIPE: the
 *	daemon was restarted), closes c's socket and connects to the same
 *	one again. A watcher registers again with the generation it acked,
 *	so a change made while it was away shows as outdated: the next
 *	genid_wait_event returns it. A request that failed is not sent again.
 *	Call it again, after a pause, while it fails with a negative errno:
 *	-ECONNREFUSED or -ENOENT while no daemon listens, another while the
 *	old one is still going away.
 * RETURN VALUE
 *	0, a GENID_ST_* refusal of the registration, or a negative errno.
 */
static inline int genid_reconnect(struct genid_conn *c)
{
	genid_close(c);
	c->fd = genid_connect_timeout(c->path, c->timeout_ms);
	if (c->fd < 0)
		return c->fd;
	if (!c->watching)
		return 0;
	return genid_attach(c, GENID_FLAG_WATCHER, c->acked, NULL);
}

/* ---- The admin socket (RUN_DIR/admin.sock): an administrator's ------------ */

/*
 * NAME
 *	genid_admin_bump - move a scope's generation
 * SYNOPSIS
 *	int genid_admin_bump(struct genid_conn *c, const char *scope, uint32_t min,
 *			     const char *reason, uint32_t *gen);
 * DESCRIPTION
 *	On the admin socket: sets scope's generation (NULL or "": the host's)
 *	to max(current + 1, min), recording reason (NULL: "manual"; cut at
 *	GENID_MAX_REASON bytes), and returns the new one in *gen (may be
 *	NULL). Only an administrator may. See PROTOCOL.md, "bump".
 * RETURN VALUE
 *	0, a GENID_ST_* refusal, or a negative errno.
 * ERRORS
 *	GENID_ST_PERMISSION not an administrator, or not the admin socket;
 *	GENID_ST_OVERFLOW the generation cannot grow any further;
 *	GENID_ST_NOT_FOUND no such scope; -ENAMETOOLONG.
 */
static inline int genid_admin_bump(struct genid_conn *c, const char *scope, uint32_t min,
				   const char *reason, uint32_t *gen)
{
	unsigned char req[GENID_MAX_REQ];
	size_t o = genid__put_name(req, scope), n = reason ? strlen(reason) : 0;

	if (!o)
		return -ENAMETOOLONG;
	if (n > GENID_MAX_REASON)
		n = GENID_MAX_REASON;
	genid__put_le32(req + o, min);
	genid__put_le32(req + o + 4, 0);
	if (n)
		memcpy(req + o + 8, reason, n);
	return genid__call_u32(c, GENID_OP_BUMP, req, o + 8 + n, gen);
}

/*
 * NAME
 *	genid_admin_restore, genid_admin_restore_from - give restored tasks
 *	their scope
 * SYNOPSIS
 *	int genid_admin_restore(struct genid_conn *c, uint32_t flags, const char *scope,
 *				uint32_t avoid, uint32_t pid, uint32_t *gen,
 *				char *out, size_t cap);
 *	int genid_admin_restore_from(struct genid_conn *c, uint32_t flags, const char *scope,
 *				     uint32_t avoid, uint32_t pid, const char *images,
 *				     uint32_t *gen, char *out, size_t cap);
 * DESCRIPTION
 *	On the admin socket. With GENID_FLAG_BEGIN, opens a restore on the
 *	connection (an administrator's request), after which its restore
 *	requests need none. Otherwise it gives restored tasks their scope,
 *	past avoid with GENID_FLAG_AVOID: the scope pid (the tasks' root, as
 *	the daemon sees it) belongs to, or a new one named after scope if
 *	that name is free; with pid 0, the host scope (scope NULL). *gen and
 *	out (cap bytes) receive its generation and name. The CRIU plugin's
 *	call. See PROTOCOL.md, "restore".
 *
 *	genid_admin_restore_from also names the checkpoint's images dir
 *	(images, NULL for none; "..." and its end if longer than
 *	GENID_MAX_IMAGES_DIR bytes), which the daemon's history shows beside
 *	the bump.
 * RETURN VALUE
 *	0, a GENID_ST_* refusal, or a negative errno (-EPROTO: a reply that
 *	does not fit out).
 */
static inline int genid_admin_restore_from(struct genid_conn *c, uint32_t flags, const char *scope,
					   uint32_t avoid, uint32_t pid, const char *images,
					   uint32_t *gen, char *out, size_t cap)
{
	unsigned char req[1 + GENID_MAX_NAME + 12 + 2 + GENID_MAX_IMAGES_DIR];
	unsigned char rep[4 + 1 + GENID_MAX_NAME];
	size_t o = genid__put_name(req, scope), n = images ? strlen(images) : 0;
	uint32_t len;
	int ret;

	if (!o)
		return -ENAMETOOLONG;
	genid__put_le32(req + o, flags);
	genid__put_le32(req + o + 4, avoid);
	genid__put_le32(req + o + 8, pid);
	o += 12;
	if (n) {
		size_t dots = 0;

		if (n > GENID_MAX_IMAGES_DIR) {	/* "..." and its end */
			images += n - (GENID_MAX_IMAGES_DIR - 3);
			n = GENID_MAX_IMAGES_DIR - 3;
			while (n && (*images & 0xc0) == 0x80) {	/* not amid a UTF-8 sequence */
				images++;
				n--;
			}
			memcpy(req + o + 2, "...", 3);
			dots = 3;
		}
		req[o] = (n + dots) & 0xff;
		req[o + 1] = (n + dots) >> 8;
		memcpy(req + o + 2 + dots, images, n);
		o += 2 + dots + n;
	}
	ret = genid__call(c, GENID_OP_RESTORE, req, o, rep, sizeof(rep), &len);
	if (ret)
		return ret;
	if (len < 4 || len > sizeof(rep) || genid__get_name(rep + 4, len - 4, out, cap) != len - 4)
		return -EPROTO;
	*gen = genid__le32(rep);
	return 0;
}

static inline int genid_admin_restore(struct genid_conn *c, uint32_t flags, const char *scope,
				      uint32_t avoid, uint32_t pid, uint32_t *gen,
				      char *out, size_t cap)
{
	return genid_admin_restore_from(c, flags, scope, avoid, pid, NULL, gen, out, cap);
}

/*
 * NAME
 *	genid_admin_query_peer - what a connection of a dumped task is
 * SYNOPSIS
 *	int genid_admin_query_peer(struct genid_conn *c, uint64_t ino, uint32_t *flags,
 *				   uint32_t *acked, char *scope, size_t cap);
 * DESCRIPTION
 *	On the admin socket: the state of the connection whose client end
 *	has inode ino (GENID_FLAG_WATCHER in *flags, what it acked), and its
 *	scope's name (into scope, of cap bytes). Only an administrator may.
 *	The CRIU plugin's call at dump. See PROTOCOL.md, "query-peer".
 * RETURN VALUE
 *	0, a GENID_ST_* refusal (GENID_ST_NOT_FOUND: no such connection), or
 *	a negative errno.
 */
static inline int genid_admin_query_peer(struct genid_conn *c, uint64_t ino, uint32_t *flags,
					 uint32_t *acked, char *scope, size_t cap)
{
	unsigned char req[1 + 8], rep[8 + 1 + GENID_MAX_NAME];
	uint64_t le = htole64(ino);
	uint32_t len;
	int ret;

	req[0] = 0;	/* the scope's name: any */
	memcpy(req + 1, &le, sizeof(le));
	ret = genid__call(c, GENID_OP_QUERY_PEER, req, sizeof(req), rep, sizeof(rep), &len);
	if (ret)
		return ret;
	if (len < 8 || len > sizeof(rep) || genid__get_name(rep + 8, len - 8, scope, cap) != len - 8)
		return -EPROTO;
	*flags = genid__le32(rep);
	*acked = genid__le32(rep + 4);
	return 0;
}

/*
 * NAME
 *	genid_admin_wait_watchers - wait until every watcher of a scope has acked
 * SYNOPSIS
 *	int genid_admin_wait_watchers(struct genid_conn *c, const char *scope,
 *				      uint32_t timeout_ms);
 * DESCRIPTION
 *	genid_wait_watchers for scope (NULL or "": the host's), on the admin
 *	socket. Only an administrator may.
 * RETURN VALUE
 *	0, a GENID_ST_* refusal (GENID_ST_TIMEOUT), or a negative errno.
 */
static inline int genid_admin_wait_watchers(struct genid_conn *c, const char *scope, uint32_t timeout_ms)
{
	unsigned char req[1 + GENID_MAX_NAME + 4];
	size_t o = genid__put_name(req, scope);

	if (!o)
		return -ENAMETOOLONG;
	genid__put_le32(req + o, timeout_ms);
	return genid__call(c, GENID_OP_WAIT_WATCHERS, req, o + 4, NULL, 0, NULL);
}

/*
 * NAME
 *	genid_admin_get - a scope's generation
 * SYNOPSIS
 *	int genid_admin_get(struct genid_conn *c, const char *scope, uint32_t *gen);
 * DESCRIPTION
 *	genid_get for scope (NULL or "": the host's), on the admin socket.
 *	Only an administrator may.
 * RETURN VALUE
 *	0 and *gen, a GENID_ST_* refusal, or a negative errno.
 */
static inline int genid_admin_get(struct genid_conn *c, const char *scope, uint32_t *gen)
{
	unsigned char req[1 + GENID_MAX_NAME];
	size_t o = genid__put_name(req, scope);

	if (!o)
		return -ENAMETOOLONG;
	return genid__call_u32(c, GENID_OP_GET, req, o, gen);
}

#endif /* GENID_H */
