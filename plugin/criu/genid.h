/* SPDX-License-Identifier: MIT */
/*
 * genid.h - C client of the genid daemon, header only.
 *
 * Speaks the protocol of PROTOCOL.md over the daemon's unix socket. Every
 * function returns 0 on success, a positive GENID_ST_* code when the daemon
 * refused the request, or a negative errno when the connection failed
 * (-ETIMEDOUT: no answer within the time given to genid_open_timeout).
 *
 *	struct genid_conn c;
 *	uint32_t gen, flags;
 *
 *	if (genid_open(&c, "/run/genid/genid.sock") < 0 || genid_watch(&c, &gen))
 *		die();
 *	while (genid_wait_event(&c, &gen, &flags) == 0) {
 *		rebuild_state();
 *		genid_ack(&c, gen);	// GENID_ST_STALE: a newer one came, wait again
 *		// or genid_ack_quiet(&c, gen): no reply to wait for
 *	}
 */
#ifndef GENID_H
#define GENID_H

#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GENID_DEFAULT_RUN_DIR	"/run/genid"
#define GENID_SOCKET_NAME	"genid.sock"
#define GENID_ADMIN_SOCKET_NAME	"admin.sock"
#define GENID_PAGE_NAME		"generation"
#define GENID_SCOPES_DIR	"scopes"

#define GENID_VERSION		1
#define GENID_HDR_SIZE		16
#define GENID_MAX_REASON	256
#define GENID_MAX_NAME		64	/* a scope's name */

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
};

#define GENID_FLAG_WATCHER	(1u << 0)
#define GENID_FLAG_RESTORED	(1u << 1)
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

struct genid_conn {
	int fd;
	uint32_t next_id;
	/* Send and receive timeout in ms; 0: block for ever (watchers). */
	unsigned int timeout_ms;
	/* The newest event read while waiting for a reply, not yet handed out. */
	int event_pending;
	uint32_t event_gen;
	uint32_t event_flags;
	/* The message of the last refused request. */
	char msg[256];
};

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

static inline int genid_write_all(int fd, const void *buf, size_t len)
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

static inline int genid_read_all(int fd, void *buf, size_t len)
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

static inline uint32_t genid_le32(const void *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline void genid_put_le32(void *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, sizeof(v));
}

/*
 * GENID_CONNECT_RETRY_MS is how long genid_connect keeps trying a socket that
 * refuses: the daemon binds its path a moment before it listens, and a client
 * started along with it can come in between. A stale socket, left by a
 * daemon that is gone, is refused that much later.
 */
#define GENID_CONNECT_RETRY_MS	200

/*
 * genid_set_timeout bounds every send and receive on fd (and a connect to a
 * full backlog) to timeout_ms; 0 removes the bound. A request/reply exchange
 * wants one, so that a stopped daemon cannot hang the caller; a watcher
 * blocked on events must not have one.
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
 * genid_connect_timeout returns a connected socket or -errno; with a
 * timeout_ms, the socket keeps that timeout (see genid_set_timeout).
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

/* genid_connect returns a connected socket or -errno. */
static inline int genid_connect(const char *path)
{
	return genid_connect_timeout(path, 0);
}

/*
 * genid_open_timeout opens a connection whose every call fails with
 * -ETIMEDOUT when the daemon does not take or answer it within timeout_ms.
 */
static inline int genid_open_timeout(struct genid_conn *c, const char *path,
				     unsigned int timeout_ms)
{
	memset(c, 0, sizeof(*c));
	c->timeout_ms = timeout_ms;
	c->fd = genid_connect_timeout(path, timeout_ms);
	return c->fd < 0 ? c->fd : 0;
}

static inline int genid_open(struct genid_conn *c, const char *path)
{
	return genid_open_timeout(c, path, 0);
}

static inline void genid_close(struct genid_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/*
 * GENID_MAX_REQ is the largest request payload genid.h sends: a bump on the
 * admin socket (the scope's name, min, flags, reason).
 */
#define GENID_MAX_REQ		(1 + GENID_MAX_NAME + 8 + GENID_MAX_REASON)

/*
 * genid_timed_out turns the EAGAIN of a timed connection's blocking socket
 * into what it means. A non-blocking socket without a timeout keeps EAGAIN.
 */
static inline int genid_timed_out(const struct genid_conn *c, int ret)
{
	if (ret == -EAGAIN && c->timeout_ms)
		return -ETIMEDOUT;
	return ret;
}

/*
 * genid_send sends one frame in one write: a frame split across two writes
 * can wake the daemon twice.
 */
static inline int genid_send(struct genid_conn *c, uint8_t op, uint32_t id,
			     const void *payload, uint32_t len)
{
	unsigned char frame[GENID_HDR_SIZE + GENID_MAX_REQ] = { GENID_VERSION, op };
	int ret;

	if (len > GENID_MAX_REQ)
		return -EMSGSIZE;
	genid_put_le32(frame + 4, id);
	genid_put_le32(frame + 8, len);
	if (len)
		memcpy(frame + GENID_HDR_SIZE, payload, len);
	ret = genid_write_all(c->fd, frame, GENID_HDR_SIZE + len);
	return genid_timed_out(c, ret);
}

/*
 * genid_recv reads one frame. Up to cap bytes of payload land in buf; the
 * rest is read and dropped (*len says how much there was).
 */
static inline int genid_recv(struct genid_conn *c, struct genid_hdr *h,
			     void *buf, uint32_t cap)
{
	unsigned char raw[GENID_HDR_SIZE], sink[256];
	uint32_t left;
	int ret;

	ret = genid_read_all(c->fd, raw, sizeof(raw));
	if (ret)
		return genid_timed_out(c, ret);
	h->version = raw[0];
	h->op = raw[1];
	h->status = raw[2] | raw[3] << 8;
	h->id = genid_le32(raw + 4);
	h->len = genid_le32(raw + 8);
	h->reserved = genid_le32(raw + 12);
	if (h->version != GENID_VERSION)
		return -EPROTO;

	left = h->len;
	if (cap > left)
		cap = left;
	ret = genid_read_all(c->fd, buf, cap);
	if (ret)
		return genid_timed_out(c, ret);
	left -= cap;
	while (left > 0) {
		uint32_t n = left < sizeof(sink) ? left : sizeof(sink);

		ret = genid_read_all(c->fd, sink, n);
		if (ret)
			return genid_timed_out(c, ret);
		left -= n;
	}
	return 0;
}

static inline void genid_note_event(struct genid_conn *c, const unsigned char *p)
{
	c->event_pending = 1;
	c->event_gen = genid_le32(p);
	c->event_flags |= genid_le32(p + 4);
}

/*
 * genid_call sends a request and reads until its reply. Events read meanwhile
 * are kept for genid_wait_event. A refusal returns its status and leaves the
 * daemon's message in c->msg.
 */
static inline int genid_call(struct genid_conn *c, uint8_t op,
			     const void *req, uint32_t reqlen,
			     void *rep, uint32_t repcap)
{
	unsigned char buf[512];
	struct genid_hdr h;
	uint32_t id = ++c->next_id;
	int ret;

	ret = genid_send(c, op, id, req, reqlen);
	if (ret)
		return ret;
	for (;;) {
		ret = genid_recv(c, &h, buf, sizeof(buf));
		if (ret)
			return ret;
		if (h.op == GENID_OP_EVENT) {
			if (h.len >= 8)
				genid_note_event(c, buf);
			continue;
		}
		if (h.id != id)
			continue;
		if (h.status) {
			uint32_t n = h.len < sizeof(buf) ? h.len : sizeof(buf);

			if (n >= sizeof(c->msg))
				n = sizeof(c->msg) - 1;
			memcpy(c->msg, buf, n);
			c->msg[n] = '\0';
			return h.status;
		}
		if (h.len < repcap)
			return -EPROTO;
		if (repcap)
			memcpy(rep, buf, repcap);
		return 0;
	}
}

/*
 * genid_call_var is genid_call for a reply of varying length: up to repcap
 * bytes land in rep, and *replen says how long it was.
 */
static inline int genid_call_var(struct genid_conn *c, uint8_t op,
				 const void *req, uint32_t reqlen,
				 void *rep, uint32_t repcap, uint32_t *replen)
{
	unsigned char buf[512];
	struct genid_hdr h;
	uint32_t id = ++c->next_id;
	int ret;

	ret = genid_send(c, op, id, req, reqlen);
	if (ret)
		return ret;
	for (;;) {
		ret = genid_recv(c, &h, buf, sizeof(buf));
		if (ret)
			return ret;
		if (h.op == GENID_OP_EVENT) {
			if (h.len >= 8)
				genid_note_event(c, buf);
			continue;
		}
		if (h.id != id)
			continue;
		if (h.status) {
			uint32_t n = h.len < sizeof(buf) ? h.len : sizeof(buf);

			if (n >= sizeof(c->msg))
				n = sizeof(c->msg) - 1;
			memcpy(c->msg, buf, n);
			c->msg[n] = '\0';
			return h.status;
		}
		if (h.len > sizeof(buf))
			return -EPROTO;
		*replen = h.len;
		memcpy(rep, buf, h.len < repcap ? h.len : repcap);
		return 0;
	}
}

static inline int genid_call_u32(struct genid_conn *c, uint8_t op, const void *req,
				 uint32_t reqlen, uint32_t *out)
{
	unsigned char rep[4];
	int ret = genid_call(c, op, req, reqlen, rep, sizeof(rep));

	if (!ret && out)
		*out = genid_le32(rep);
	return ret;
}

static inline int genid_get(struct genid_conn *c, uint32_t *gen)
{
	return genid_call_u32(c, GENID_OP_GET, NULL, 0, gen);
}

/* genid_watch makes the connection a watcher, acked = *gen = current. */
static inline int genid_watch(struct genid_conn *c, uint32_t *gen)
{
	return genid_call_u32(c, GENID_OP_WATCH, NULL, 0, gen);
}

static inline int genid_ack(struct genid_conn *c, uint32_t gen)
{
	unsigned char req[4];

	genid_put_le32(req, gen);
	return genid_call(c, GENID_OP_ACK, req, sizeof(req), NULL, 0);
}

/*
 * genid_ack_quiet acknowledges gen without waiting for a reply: the daemon
 * answers only a refusal, which the calls after it read and drop. Made for
 * event loops: the one refusal an ack of an event's generation can get is
 * stale, and then the event of the newer generation is on its way. It costs
 * the daemon and the watcher one wake-up less than genid_ack.
 */
static inline int genid_ack_quiet(struct genid_conn *c, uint32_t gen)
{
	unsigned char req[8];

	genid_put_le32(req, gen);
	genid_put_le32(req + 4, GENID_FLAG_QUIET);
	return genid_send(c, GENID_OP_ACK, ++c->next_id, req, sizeof(req));
}

static inline int genid_outdated(struct genid_conn *c, uint32_t *n)
{
	return genid_call_u32(c, GENID_OP_OUTDATED, NULL, 0, n);
}

/* genid_wait_watchers: timeout in ms, 0 = none. */
static inline int genid_wait_watchers(struct genid_conn *c, uint32_t timeout_ms)
{
	unsigned char req[4];

	genid_put_le32(req, timeout_ms);
	return genid_call(c, GENID_OP_WAIT_WATCHERS, req, sizeof(req), NULL, 0);
}

/*
 * genid_put_name writes a scope's name as the admin socket's requests begin
 * ("" or NULL: the host scope) and returns the bytes it took, or 0 if the
 * name is longer than GENID_MAX_NAME.
 */
static inline size_t genid_put_name(unsigned char *p, const char *scope)
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
 * genid_get_name reads a scope's name at the front of a reply of len bytes
 * into out (of cap bytes, NUL-terminated); it returns the bytes it took, or
 * 0 if the reply is too short or the name does not fit.
 */
static inline size_t genid_get_name(const unsigned char *p, uint32_t len, char *out, size_t cap)
{
	if (len < 1 || len < 1u + p[0] || (size_t)p[0] >= cap)
		return 0;
	memcpy(out, p + 1, p[0]);
	out[p[0]] = '\0';
	return 1 + p[0];
}

/*
 * genid_admin_bump, on the admin socket: scope's new generation is
 * max(current + 1, min). Only an administrator may.
 */
static inline int genid_admin_bump(struct genid_conn *c, const char *scope, uint32_t min,
				   const char *reason, uint32_t *gen)
{
	unsigned char req[GENID_MAX_REQ];
	size_t o = genid_put_name(req, scope), n = reason ? strlen(reason) : 0;

	if (!o)
		return -ENAMETOOLONG;
	if (n > GENID_MAX_REASON)
		n = GENID_MAX_REASON;
	genid_put_le32(req + o, min);
	genid_put_le32(req + o + 4, 0);
	if (n)
		memcpy(req + o + 8, reason, n);
	return genid_call_u32(c, GENID_OP_BUMP, req, o + 8 + n, gen);
}

/*
 * genid_admin_restore, on the admin socket: with GENID_FLAG_BEGIN, opens a
 * restore on the connection (an administrator's request), after which its
 * restore requests need none. Otherwise it gives restored tasks their scope,
 * past avoid with GENID_FLAG_AVOID: the scope pid (the tasks' root, as the
 * daemon sees it) belongs to, or a new one named after scope if that name is
 * free; with pid 0, the host scope (scope NULL). *gen and out (cap bytes)
 * receive its generation and name.
 */
static inline int genid_admin_restore(struct genid_conn *c, uint32_t flags, const char *scope,
				      uint32_t avoid, uint32_t pid, uint32_t *gen,
				      char *out, size_t cap)
{
	unsigned char req[1 + GENID_MAX_NAME + 12], rep[4 + 1 + GENID_MAX_NAME];
	size_t o = genid_put_name(req, scope);
	uint32_t len;
	int ret;

	if (!o)
		return -ENAMETOOLONG;
	genid_put_le32(req + o, flags);
	genid_put_le32(req + o + 4, avoid);
	genid_put_le32(req + o + 8, pid);
	ret = genid_call_var(c, GENID_OP_RESTORE, req, o + 12, rep, sizeof(rep), &len);
	if (ret)
		return ret;
	if (len < 4 || len > sizeof(rep) || genid_get_name(rep + 4, len - 4, out, cap) != len - 4)
		return -EPROTO;
	*gen = genid_le32(rep);
	return 0;
}

/* genid_attach registers the connection in place of an earlier one. */
static inline int genid_attach(struct genid_conn *c, uint32_t flags, uint32_t acked,
			       uint32_t *gen)
{
	unsigned char req[8];

	genid_put_le32(req, flags);
	genid_put_le32(req + 4, acked);
	return genid_call_u32(c, GENID_OP_ATTACH, req, sizeof(req), gen);
}

/*
 * genid_admin_query_peer, on the admin socket: the state of the connection
 * whose client end has inode ino, and its scope's name (into scope, of cap
 * bytes). Only an administrator may.
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
	ret = genid_call_var(c, GENID_OP_QUERY_PEER, req, sizeof(req), rep, sizeof(rep), &len);
	if (ret)
		return ret;
	if (len < 8 || len > sizeof(rep) || genid_get_name(rep + 8, len - 8, scope, cap) != len - 8)
		return -EPROTO;
	*flags = genid_le32(rep);
	*acked = genid_le32(rep + 4);
	return 0;
}

/*
 * genid_admin_wait_watchers, on the admin socket: waits until no watcher of
 * scope is outdated; timeout in ms, 0 = none.
 */
static inline int genid_admin_wait_watchers(struct genid_conn *c, const char *scope, uint32_t timeout_ms)
{
	unsigned char req[1 + GENID_MAX_NAME + 4];
	size_t o = genid_put_name(req, scope);

	if (!o)
		return -ENAMETOOLONG;
	genid_put_le32(req + o, timeout_ms);
	return genid_call(c, GENID_OP_WAIT_WATCHERS, req, o + 4, NULL, 0);
}

/* genid_admin_get, on the admin socket: scope's generation. */
static inline int genid_admin_get(struct genid_conn *c, const char *scope, uint32_t *gen)
{
	unsigned char req[1 + GENID_MAX_NAME];
	size_t o = genid_put_name(req, scope);

	if (!o)
		return -ENAMETOOLONG;
	return genid_call_u32(c, GENID_OP_GET, req, o, gen);
}

/*
 * genid_wait_event blocks until the daemon reports a new generation (the
 * socket is readable exactly then: poll it first to wait in an event loop).
 */
static inline int genid_wait_event(struct genid_conn *c, uint32_t *gen, uint32_t *flags)
{
	unsigned char buf[64];
	struct genid_hdr h;
	int ret;

	while (!c->event_pending) {
		ret = genid_recv(c, &h, buf, sizeof(buf));
		if (ret)
			return ret;
		if (h.op == GENID_OP_EVENT && h.len >= 8)
			genid_note_event(c, buf);
	}
	*gen = c->event_gen;
	if (flags)
		*flags = c->event_flags;
	c->event_pending = 0;
	c->event_flags = 0;
	return 0;
}

#endif /* GENID_H */
