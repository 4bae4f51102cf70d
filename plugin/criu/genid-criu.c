// SPDX-License-Identifier: MIT
/*
 * genid-criu.so - CRIU plugin that keeps genid's generation safe across
 * checkpoint/restore.
 *
 * Dump: records the generation and, for every socket of the dumped tasks that
 * is connected to the genid daemon, whether it is a watcher and what it
 * acked, in IMAGES_DIR/genid.json. The socket's queue is not dumped. The
 * recorded generation is read again once the tasks are frozen, so it is at
 * least any generation they can have seen.
 *
 * Restore: before any task resumes, bumps the generation past the recorded
 * one (reason "criu-restore"), then gives every recorded socket a new
 * connection, attached as "restored" with the recorded acked generation, so
 * a restored watcher is outdated and readable the moment it resumes. A record
 * that cannot be read back whole fails the restore; so does a socket that
 * cannot be given its new connection.
 *
 * All policy lives in the daemon; this file only carries state across.
 * Settings come from the environment of criu (runc passes its own on):
 *   GENID_RUN_DIR           the daemon's run dir (default /run/genid)
 *   GENID_CRIU_BEST_EFFORT  "1": restore even when the daemon is unreachable,
 *                           with a warning; restored sockets then see EOF and
 *                           their clients reconnect by themselves
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <criu/criu-plugin.h>

#include "genid.h"

#define RECORD_NAME	"genid.json"
#define RECORD_VERSION	1
#define RECORD_MAX	(64 << 20)	/* 65536 watchers take about 10 MB */
#define PAGE_LEN	4096
#define REASON		"criu-restore"
/*
 * Set in criu's environment once a restore is bumped, to the generation: the
 * action scripts criu runs inherit it (genidctl's then does not bump again).
 */
#define RESTORED_ENV	"GENID_CRIU_RESTORED"

/*
 * IO_TIMEOUT_MS bounds each exchange with the daemon: a stopped daemon must
 * not hang a dump whose tasks are frozen, nor a restore.
 */
#define IO_TIMEOUT_MS	5000

/*
 * FAIL_FD is what RESTORE_UNIX_SK returns to fail the restore. CRIU 4.1.1
 * does not fail on a negative return: open_unixsk_standalone (sk-unix.c)
 * then restores the socket as if there were no plugin, and with
 * --ext-unix-sk connects a fresh socket that the daemon knows nothing of.
 * It takes any fd >= 0 as the restored socket and calls fcntl on it first
 * (restore_sk_common -> rst_file_params -> set_fd_flags): on an fd that
 * cannot be open that fails, and the restore with it.
 */
#define FAIL_FD		INT_MAX

/* Exported by the criu binary; its log.h is not installed. */
extern void print_on_level(unsigned int loglevel, const char *format, ...)
	__attribute__((format(printf, 2, 3)));

#define pr_err(fmt, ...)	print_on_level(1, "genid: " fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...)	print_on_level(2, "genid: " fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...)	print_on_level(3, "genid: " fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...)	print_on_level(4, "genid: " fmt, ##__VA_ARGS__)

/* pr_refuse: a refused restore, in CRIU's log and on criu's own stderr. */
#define pr_refuse(fmt, ...)						\
	do {								\
		fprintf(stderr, "genid: restore refused: " fmt, ##__VA_ARGS__); \
		pr_err("restore refused: " fmt, ##__VA_ARGS__);		\
	} while (0)

struct sk_record {
	uint32_t ino;		/* inode of the task's socket at dump */
	uint32_t flags;		/* GENID_FLAG_WATCHER */
	uint32_t acked;
	int nonblock;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static struct {
	char sock[PATH_MAX];	/* configured socket path */
	char page[PATH_MAX];	/* configured generation page */
	int best_effort;

	int have_gen;		/* generation known at dump / found in the record */
	uint32_t gen;
	int page_seen;		/* dump: the configured page was read at init */
	int recorded;		/* dump: genid.json was written */

	struct sk_record *sks;
	size_t nr_sks, cap_sks;

	int daemon_ok;		/* restore: the bump went through */
	uint32_t restored_gen;
} g;

static void load_config(void)
{
	const char *dir = getenv("GENID_RUN_DIR");
	const char *be = getenv("GENID_CRIU_BEST_EFFORT");

	if (!dir || !*dir)
		dir = GENID_DEFAULT_RUN_DIR;
	snprintf(g.sock, sizeof(g.sock), "%s/%s", dir, GENID_SOCKET_NAME);
	snprintf(g.page, sizeof(g.page), "%s/%s", dir, GENID_PAGE_NAME);
	g.best_effort = be && (!strcmp(be, "1") || !strcmp(be, "yes") || !strcmp(be, "true"));
}

/* conn_err says why an exchange with the daemon failed. */
static const char *conn_err(const struct genid_conn *c, int ret)
{
	if (ret > 0)
		return c->msg[0] ? c->msg : genid_strstatus(ret);
	if (ret == -ETIMEDOUT)
		return "no answer within 5 s (is the daemon stopped?)";
	return strerror(-ret);
}

/* note_gen raises the recorded generation to gen; 1 if it rose. */
static int note_gen(uint32_t gen)
{
	if (g.have_gen && gen <= g.gen)
		return 0;
	g.gen = gen;
	g.have_gen = 1;
	return 1;
}

static int add_sk(const struct sk_record *r)
{
	struct sk_record *sks;
	size_t cap;

	if (g.nr_sks == g.cap_sks) {
		cap = g.cap_sks ? 2 * g.cap_sks : 16;
		sks = realloc(g.sks, cap * sizeof(*sks));
		if (!sks)
			return -ENOMEM;
		g.sks = sks;
		g.cap_sks = cap;
	}
	g.sks[g.nr_sks++] = *r;
	return 0;
}

/*
 * read_page reads the generation from the configured page, as any process
 * may. It returns -ENOENT when there is no page, and logs any other error:
 * a page too short to hold the generation would raise SIGBUS in criu.
 */
static int read_page(uint32_t *gen)
{
	struct stat st;
	void *mem;
	int fd, ret;

	fd = open(g.page, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		if (ret != -ENOENT)
			pr_err("open %s: %s\n", g.page, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		pr_err("stat %s: %s\n", g.page, strerror(-ret));
		close(fd);
		return ret;
	}
	if (!S_ISREG(st.st_mode)) {
		pr_err("%s is not a regular file: not a generation page\n", g.page);
		close(fd);
		return -EINVAL;
	}
	if (st.st_size < (off_t)sizeof(uint32_t)) {
		pr_err("%s is %lld bytes, too short for a generation page (the daemon makes it %d)\n",
		       g.page, (long long)st.st_size, PAGE_LEN);
		close(fd);
		return -EINVAL;
	}
	mem = mmap(NULL, PAGE_LEN, PROT_READ, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		ret = -errno;
		pr_err("mmap %s: %s\n", g.page, strerror(-ret));
		close(fd);
		return ret;
	}
	close(fd);
	*gen = __atomic_load_n((uint32_t *)mem, __ATOMIC_ACQUIRE);
	munmap(mem, PAGE_LEN);
	return 0;
}

/*
 * put_str writes s as a JSON string: quotes, backslashes and control
 * characters of a path would otherwise break the record.
 */
static void put_str(FILE *f, const char *s)
{
	const unsigned char *p;

	fputc('"', f);
	for (p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
	fputc('"', f);
}

/* write_record rewrites IMAGES_DIR/genid.json with what is known so far. */
static int write_record(void)
{
	char tmp[] = RECORD_NAME ".tmp";
	int dir = criu_get_image_dir();
	time_t now = time(NULL);
	char stamp[32];
	struct tm tm;
	size_t i;
	FILE *f;
	int fd, err;

	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&now, &tm));
	fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		pr_err("create %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	f = fdopen(fd, "w");
	if (!f) {
		pr_err("fdopen %s: %s\n", tmp, strerror(errno));
		close(fd);
		unlinkat(dir, tmp, 0);
		return -1;
	}
	fprintf(f, "{\n  \"version\": %d,\n", RECORD_VERSION);
	if (g.have_gen)
		fprintf(f, "  \"generation\": %" PRIu32 ",\n", g.gen);
	fprintf(f, "  \"socket\": ");
	put_str(f, g.sock);
	fprintf(f, ",\n  \"time\": \"%s\",\n  \"sockets\": [", stamp);
	for (i = 0; i < g.nr_sks; i++) {
		struct sk_record *r = &g.sks[i];

		fprintf(f, "%s\n    {\"inode\": %" PRIu32 ", \"watcher\": %s, \"acked\": %" PRIu32
			", \"nonblock\": %s, \"path\": ", i ? "," : "", r->ino,
			r->flags & GENID_FLAG_WATCHER ? "true" : "false", r->acked,
			r->nonblock ? "true" : "false");
		put_str(f, r->path);
		fputc('}', f);
	}
	fprintf(f, "%s]\n}\n", g.nr_sks ? "\n  " : "");
	err = ferror(f) ? EIO : 0;
	if (fclose(f) && !err)
		err = errno;
	if (err) {
		pr_err("write %s: %s\n", tmp, strerror(err));
		unlinkat(dir, tmp, 0);
		return -1;
	}
	if (renameat(dir, tmp, dir, RECORD_NAME)) {
		pr_err("rename %s: %s\n", tmp, strerror(errno));
		unlinkat(dir, tmp, 0);
		return -1;
	}
	g.recorded = 1;
	return 0;
}

/*
 * A JSON reader, enough for the record: what the plugin writes and what
 * plugin/record.go's encoding/json writes (any layout, unknown keys skipped,
 * keys matched without regard to case as encoding/json does). Whatever is
 * not valid JSON, or not the record's shape, is an error: a restore must not
 * go on with half a record.
 */
struct jp {
	const char *buf, *p, *end;
	const char *err;	/* the first error */
	char msg[64];		/* room for an error with a value in it */
	int depth;
};

#define JP_MAX_DEPTH	32

static int jp_fail(struct jp *j, const char *why)
{
	if (!j->err)
		j->err = why;
	return -1;
}

static void jp_ws(struct jp *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

/* jp_peek returns the next significant character, or 0 at the end. */
static char jp_peek(struct jp *j)
{
	jp_ws(j);
	return j->p < j->end ? *j->p : 0;
}

static int jp_expect(struct jp *j, char c, const char *why)
{
	if (jp_peek(j) != c)
		return jp_fail(j, j->p < j->end ? why : "cut short");
	j->p++;
	return 0;
}

static int jp_word(struct jp *j, const char *w)
{
	size_t n = strlen(w);

	if ((size_t)(j->end - j->p) < n)
		return jp_fail(j, "cut short");
	if (memcmp(j->p, w, n))
		return jp_fail(j, "invalid literal");
	j->p += n;
	return 0;
}

static int jp_hex4(struct jp *j, uint32_t *v)
{
	int i;

	*v = 0;
	if (j->end - j->p < 4)
		return jp_fail(j, "cut short");
	for (i = 0; i < 4; i++) {
		char c = *j->p++;

		*v <<= 4;
		if (c >= '0' && c <= '9')
			*v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			*v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			*v |= c - 'A' + 10;
		else
			return jp_fail(j, "invalid \\u escape");
	}
	return 0;
}

/* jp_utf8 puts code point cp in out (room for 4), returns its length. */
static size_t jp_utf8(uint32_t cp, char *out)
{
	if (cp < 0x80) {
		out[0] = cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = 0xc0 | cp >> 6;
		out[1] = 0x80 | (cp & 0x3f);
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = 0xe0 | cp >> 12;
		out[1] = 0x80 | (cp >> 6 & 0x3f);
		out[2] = 0x80 | (cp & 0x3f);
		return 3;
	}
	out[0] = 0xf0 | cp >> 18;
	out[1] = 0x80 | (cp >> 12 & 0x3f);
	out[2] = 0x80 | (cp >> 6 & 0x3f);
	out[3] = 0x80 | (cp & 0x3f);
	return 4;
}

/* jp_escape decodes the escape after a backslash into out (room for 4). */
static int jp_escape(struct jp *j, char *out, size_t *n)
{
	uint32_t cp, lo;
	char c;

	if (j->p >= j->end)
		return jp_fail(j, "cut short");
	c = *j->p++;
	*n = 1;
	switch (c) {
	case '"': case '\\': case '/':
		out[0] = c;
		return 0;
	case 'b': out[0] = '\b'; return 0;
	case 'f': out[0] = '\f'; return 0;
	case 'n': out[0] = '\n'; return 0;
	case 'r': out[0] = '\r'; return 0;
	case 't': out[0] = '\t'; return 0;
	case 'u':
		break;
	default:
		return jp_fail(j, "invalid escape");
	}
	if (jp_hex4(j, &cp))
		return -1;
	if (cp >= 0xdc00 && cp <= 0xdfff)
		cp = 0xfffd;		/* a lone low surrogate, as encoding/json reads it */
	else if (cp >= 0xd800 && cp <= 0xdbff) {
		if (j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u') {
			j->p += 2;
			if (jp_hex4(j, &lo))
				return -1;
			if (lo < 0xdc00 || lo > 0xdfff)
				return jp_fail(j, "invalid surrogate pair");
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		} else {
			cp = 0xfffd;
		}
	}
	if (cp == 0)
		return jp_fail(j, "NUL in a string");
	*n = jp_utf8(cp, out);
	return 0;
}

/*
 * jp_string reads a string into out (cap bytes with the NUL), or checks and
 * skips it when out is NULL. A string longer than out is an error, unless
 * long is given: it is then set, and out holds the start of the string.
 */
static int jp_string_long(struct jp *j, char *out, size_t cap, int *long_)
{
	size_t len = 0, n;
	char tmp[4];

	if (jp_expect(j, '"', "string expected"))
		return -1;
	for (;;) {
		unsigned char c;

		if (j->p >= j->end)
			return jp_fail(j, "cut short");
		c = *j->p++;
		if (c == '"')
			break;
		if (c < 0x20)
			return jp_fail(j, "control character in a string");
		if (c == '\\') {
			if (jp_escape(j, tmp, &n))
				return -1;
		} else {
			tmp[0] = c;
			n = 1;
		}
		if (!out)
			continue;
		if (len + n >= cap) {
			if (!long_)
				return jp_fail(j, "string too long");
			*long_ = 1;
			continue;
		}
		memcpy(out + len, tmp, n);
		len += n;
	}
	if (out)
		out[len] = '\0';
	return 0;
}

static int jp_string(struct jp *j, char *out, size_t cap)
{
	return jp_string_long(j, out, cap, NULL);
}

/* jp_u32 reads an unsigned integer that fits in 32 bits, and nothing else. */
static int jp_u32(struct jp *j, uint32_t *v)
{
	uint64_t x = 0;
	const char *start;

	jp_ws(j);
	start = j->p;
	if (j->p < j->end && *j->p == '-')
		return jp_fail(j, "negative number");
	while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
		x = x * 10 + (*j->p++ - '0');
		if (x > UINT32_MAX)
			return jp_fail(j, "number out of range");
	}
	if (j->p == start)
		return jp_fail(j, j->p < j->end ? "number expected" : "cut short");
	if (*start == '0' && j->p - start > 1)
		return jp_fail(j, "leading zero");
	if (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))
		return jp_fail(j, "not an integer");
	*v = x;
	return 0;
}

static int jp_bool(struct jp *j, int *v)
{
	char c = jp_peek(j);

	if (c == 't') {
		*v = 1;
		return jp_word(j, "true");
	}
	if (c == 'f') {
		*v = 0;
		return jp_word(j, "false");
	}
	return jp_fail(j, j->p < j->end ? "true or false expected" : "cut short");
}

/* jp_null takes a null if one comes next. */
static int jp_null(struct jp *j)
{
	if (jp_peek(j) != 'n')
		return 0;
	return jp_word(j, "null") ? -1 : 1;
}

static int jp_skip_number(struct jp *j)
{
	const char *d;

	if (j->p < j->end && *j->p == '-')
		j->p++;
	d = j->p;
	while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
		j->p++;
	if (j->p == d || (*d == '0' && j->p - d > 1))
		return jp_fail(j, "invalid number");
	if (j->p < j->end && *j->p == '.') {
		d = ++j->p;
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
		if (j->p == d)
			return jp_fail(j, "invalid number");
	}
	if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
		j->p++;
		if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
			j->p++;
		d = j->p;
		while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
			j->p++;
		if (j->p == d)
			return jp_fail(j, "invalid number");
	}
	return 0;
}

/*
 * jp_next steps over the ',' between members or elements: 1 when another
 * one follows, 0 at the closing character.
 */
static int jp_next(struct jp *j, char close, int first)
{
	char c = jp_peek(j);

	if (c == close) {
		j->p++;
		return 0;
	}
	if (first)
		return 1;
	if (c != ',')
		return jp_fail(j, c ? "',' expected" : "cut short");
	j->p++;
	return 1;
}

/* jp_skip checks and skips one value of any kind. */
static int jp_skip(struct jp *j)
{
	char c = jp_peek(j);
	int more, first;

	switch (c) {
	case '"':
		return jp_string(j, NULL, 0);
	case 't':
		return jp_word(j, "true");
	case 'f':
		return jp_word(j, "false");
	case 'n':
		return jp_word(j, "null");
	case '{':
	case '[':
		break;
	case 0:
		return jp_fail(j, "cut short");
	default:
		if (c == '-' || (c >= '0' && c <= '9'))
			return jp_skip_number(j);
		return jp_fail(j, "value expected");
	}
	if (++j->depth > JP_MAX_DEPTH)
		return jp_fail(j, "nested too deep");
	j->p++;
	for (first = 1; (more = jp_next(j, c == '{' ? '}' : ']', first)) > 0; first = 0) {
		if (c == '{' && (jp_string(j, NULL, 0) || jp_expect(j, ':', "':' expected")))
			return -1;
		if (jp_skip(j))
			return -1;
	}
	j->depth--;
	return more;
}

/*
 * jp_key reads a member's key into key and the ':' after it. seen has one
 * bit per known key of names[]: a known key twice is an error, since its
 * two values may disagree. It returns the key's index in names, or -1 for
 * an unknown key (and sets j->err on an error).
 */
#define JP_UNKNOWN	(-2)

static int jp_key(struct jp *j, const char *const *names, unsigned int *seen)
{
	char key[32];
	int i, long_ = 0;

	if (jp_string_long(j, key, sizeof(key), &long_) || jp_expect(j, ':', "':' expected"))
		return -1;
	if (long_)
		return JP_UNKNOWN;
	for (i = 0; names[i]; i++) {
		if (strcasecmp(key, names[i]))
			continue;
		if (*seen & 1u << i) {
			jp_fail(j, "duplicate key");
			return -1;
		}
		*seen |= 1u << i;
		return i;
	}
	return JP_UNKNOWN;
}

enum { SK_INODE, SK_WATCHER, SK_ACKED, SK_NONBLOCK, SK_PATH };
static const char *const sk_keys[] = { "inode", "watcher", "acked", "nonblock", "path", NULL };
#define SK_REQUIRED	(1u << SK_INODE | 1u << SK_WATCHER | 1u << SK_ACKED)

static int jp_socket(struct jp *j)
{
	struct sk_record r = { 0 };
	unsigned int seen = 0;
	int more, first, k, b, ret = 0;

	if (jp_expect(j, '{', "socket entry expected"))
		return -1;
	for (first = 1; (more = jp_next(j, '}', first)) > 0; first = 0) {
		k = jp_key(j, sk_keys, &seen);
		switch (k) {
		case SK_INODE:
			ret = jp_u32(j, &r.ino);
			break;
		case SK_WATCHER:
			ret = jp_bool(j, &b);
			r.flags = b ? GENID_FLAG_WATCHER : 0;
			break;
		case SK_ACKED:
			ret = jp_u32(j, &r.acked);
			break;
		case SK_NONBLOCK:
			ret = jp_bool(j, &r.nonblock);
			break;
		case SK_PATH:
			ret = jp_string(j, r.path, sizeof(r.path));
			break;
		case JP_UNKNOWN:
			ret = jp_skip(j);
			break;
		default:
			return -1;
		}
		if (ret)
			return -1;
	}
	if (more < 0)
		return -1;
	if ((seen & SK_REQUIRED) != SK_REQUIRED)
		return jp_fail(j, "socket entry without inode, watcher or acked");
	if (add_sk(&r))
		return jp_fail(j, "out of memory");
	return 0;
}

static int jp_sockets(struct jp *j)
{
	int more, first;

	if (jp_null(j))
		return j->err ? -1 : 0;
	if (jp_expect(j, '[', "array of sockets expected"))
		return -1;
	for (first = 1; (more = jp_next(j, ']', first)) > 0; first = 0)
		if (jp_socket(j))
			return -1;
	return more;
}

enum { R_VERSION, R_GENERATION, R_SOCKETS, R_SOCKET, R_TIME, R_WRITER };
static const char *const record_keys[] = {
	"version", "generation", "sockets", "socket", "time", "writer", NULL
};

/* parse_record fills g from the record in buf; j->err says what is wrong. */
static int parse_record(struct jp *j)
{
	unsigned int seen = 0;
	uint32_t version = 0;
	int more, first, k, ret = 0;

	if (jp_expect(j, '{', "not a JSON object"))
		return -1;
	for (first = 1; (more = jp_next(j, '}', first)) > 0; first = 0) {
		k = jp_key(j, record_keys, &seen);
		switch (k) {
		case R_VERSION:
			ret = jp_u32(j, &version);
			break;
		case R_GENERATION:
			ret = jp_null(j);
			if (ret == 0) {
				ret = jp_u32(j, &g.gen);
				g.have_gen = !ret;
			}
			ret = ret < 0 ? -1 : 0;
			break;
		case R_SOCKETS:
			ret = jp_sockets(j);
			break;
		case R_SOCKET:
		case R_TIME:
		case R_WRITER:
			ret = jp_null(j);
			if (ret == 0)
				ret = jp_string(j, NULL, 0);
			ret = ret < 0 ? -1 : 0;
			break;
		case JP_UNKNOWN:
			ret = jp_skip(j);
			break;
		default:
			return -1;
		}
		if (ret)
			return -1;
	}
	if (more < 0)
		return -1;
	jp_ws(j);
	if (j->p < j->end)
		return jp_fail(j, "data after the record");
	if (!(seen & 1u << R_VERSION))
		return jp_fail(j, "no version");
	if (version != RECORD_VERSION) {
		snprintf(j->msg, sizeof(j->msg), "unsupported version %" PRIu32, version);
		return jp_fail(j, j->msg);
	}
	return 0;
}

/*
 * read_record reads the dump's record back: 1 when there is one, 0 when the
 * checkpoint was taken without genid, -1 (logged) when it cannot be read
 * whole and right.
 */
static int read_record(void)
{
	int fd = openat(criu_get_image_dir(), RECORD_NAME, O_RDONLY | O_CLOEXEC);
	struct jp j = { 0 };
	size_t len = 0, cap = 0;
	struct stat st;
	char *buf = NULL, *nbuf;
	ssize_t n;

	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		pr_refuse("open %s: %s\n", RECORD_NAME, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		pr_refuse("%s: not a regular file\n", RECORD_NAME);
		close(fd);
		return -1;
	}
	/* Read to the end, however large: one read() may return less. */
	for (;;) {
		if (len == cap) {
			cap = cap ? 2 * cap : (size_t)st.st_size + 1;
			if (cap > RECORD_MAX) {
				pr_refuse("%s: larger than %d bytes\n", RECORD_NAME, RECORD_MAX);
				goto err;
			}
			nbuf = realloc(buf, cap);
			if (!nbuf) {
				pr_refuse("%s: out of memory\n", RECORD_NAME);
				goto err;
			}
			buf = nbuf;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			pr_refuse("read %s: %s\n", RECORD_NAME, strerror(errno));
			goto err;
		}
		if (n == 0)
			break;
		len += n;
	}
	close(fd);
	fd = -1;

	j.buf = j.p = buf;
	j.end = buf + len;
	if (len == 0)
		jp_fail(&j, "empty");
	else
		parse_record(&j);
	if (j.err) {
		pr_refuse("%s is corrupt: %s at byte %zu of %zu: a restore needs the record of its checkpoint whole\n",
			  RECORD_NAME, j.err, (size_t)(j.p - j.buf), len);
		goto err;
	}
	free(buf);
	return 1;
err:
	if (fd >= 0)
		close(fd);
	free(buf);
	return -1;
}

static int dump_init(void)
{
	int ret = read_page(&g.gen);

	if (ret == -ENOENT) {
		pr_info("no generation page at %s: nothing to record yet\n", g.page);
		return 0;
	}
	if (ret) {
		pr_err("cannot read the generation at %s: refusing to dump\n", g.page);
		return -1;
	}
	g.have_gen = 1;
	g.page_seen = 1;
	pr_info("generation at checkpoint: %" PRIu32 "\n", g.gen);
	return write_record();
}

/*
 * poison_record leaves an empty record, which a restore refuses: the dump
 * cannot be failed from its exit hook, and a record that may be behind what
 * the tasks saw must not be restored from.
 */
static void poison_record(void)
{
	int fd = openat(criu_get_image_dir(), RECORD_NAME,
			O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	if (fd >= 0)
		close(fd);
	pr_err("the generation the frozen tasks saw is not recorded: %s emptied, "
	       "a restore of this checkpoint will be refused%s\n", RECORD_NAME,
	       fd < 0 ? " (emptying failed too: do not restore it)" : "");
}

/*
 * dump_fini runs in cr_dump_finish (cr-dump.c) after the images are written
 * and before the tasks are thawed or killed: the generation now is at least
 * any the tasks saw, though the page was read at init, before they froze.
 * It runs after the post-dump action script, though: a script that copies
 * the images away takes the record as the socket hooks left it.
 */
static void dump_fini(void)
{
	uint32_t gen;
	int ret = read_page(&gen);

	/*
	 * No page at init: the tasks can have read none but one a daemon
	 * started meanwhile, which starts at 0 (and is empty for a moment).
	 */
	if (ret && !g.page_seen)
		return;
	if (ret) {
		poison_record();
		return;
	}
	if (!note_gen(gen) && g.recorded)
		return;
	pr_info("generation %" PRIu32 " once the tasks were frozen: recording it\n", g.gen);
	if (write_record())
		poison_record();
}

static int restore_init(void)
{
	struct genid_conn c;
	char val[16];
	uint32_t min = 0;
	int ret;

	unsetenv(RESTORED_ENV);	/* one inherited by criu is not this restore's */
	ret = read_record();
	if (ret < 0)
		return -1;
	if (ret == 0)
		pr_warn("no %s in the images (checkpoint taken without the plugin): bumping by one\n",
			RECORD_NAME);
	if (g.have_gen) {
		if (g.gen == UINT32_MAX) {
			pr_refuse("recorded generation %" PRIu32 " cannot be bumped past\n", g.gen);
			return -1;
		}
		min = g.gen + 1;
	}

	ret = genid_open_timeout(&c, g.sock, IO_TIMEOUT_MS);
	if (ret < 0) {
		if (g.best_effort) {
			fprintf(stderr, "genid: WARNING: genid daemon unreachable at %s: %s; "
				"restoring anyway (GENID_CRIU_BEST_EFFORT): processes are not told of this restore\n",
				g.sock, conn_err(&c, ret));
			pr_warn("daemon unreachable at %s: %s; best effort: restoring anyway\n",
				g.sock, conn_err(&c, ret));
			return 0;
		}
		pr_refuse("genid daemon unreachable at %s: %s "
			  "(start it, or set GENID_CRIU_BEST_EFFORT=1 to restore without it)\n",
			  g.sock, conn_err(&c, ret));
		return -1;
	}
	ret = genid_bump(&c, min, REASON, &g.restored_gen);
	genid_close(&c);
	if (ret) {
		pr_refuse("bump at %s failed: %s\n", g.sock, conn_err(&c, ret));
		return -1;
	}
	g.daemon_ok = 1;
	pr_info("generation bumped to %" PRIu32 " (checkpoint had %s%" PRIu32 ")\n",
		g.restored_gen, g.have_gen ? "" : "none, ", g.gen);
	snprintf(val, sizeof(val), "%" PRIu32, g.restored_gen);
	if (setenv(RESTORED_ENV, val, 1))
		pr_warn("setenv %s: %s: an action script may bump again\n", RESTORED_ENV, strerror(errno));
	return 0;
}

static int genid_plugin_init(int stage)
{
	load_config();
	switch (stage) {
	case CR_PLUGIN_STAGE__DUMP:
		return dump_init();
	case CR_PLUGIN_STAGE__RESTORE:
		return restore_init();
	}
	return 0;
}

static void genid_plugin_exit(int stage, int ret)
{
	if (stage == CR_PLUGIN_STAGE__DUMP && ret == 0)
		dump_fini();
	free(g.sks);
	g.sks = NULL;
	g.nr_sks = 0;
	g.cap_sks = 0;
}

CR_PLUGIN_REGISTER("genid", genid_plugin_init, genid_plugin_exit)

/*
 * DUMP_UNIX_SK runs in the main criu process with a copy of the task's
 * socket, once the tasks are frozen. Only sockets whose peer is a genid
 * daemon that knows them are taken; anything else is left to CRIU
 * (-ENOTSUP).
 */
static int genid_dump_unix_sk(int fd, int id)
{
	struct {
		struct sockaddr_un un;
		char nul;	/* ends a sun_path that fills its 108 bytes */
	} a;
	struct sockaddr_un *addr = &a.un;
	socklen_t len = sizeof(a.un);
	struct sk_record r = { .ino = (uint32_t)id };
	const char *base;
	struct genid_conn c;
	uint32_t gen;
	int ret, fl;

	memset(&a, 0, sizeof(a));
	if (getpeername(fd, (struct sockaddr *)addr, &len) < 0 || addr->sun_family != AF_UNIX)
		return -ENOTSUP;
	if (len <= offsetof(struct sockaddr_un, sun_path) || addr->sun_path[0] == '\0')
		return -ENOTSUP;	/* unnamed or abstract peer */
	base = strrchr(addr->sun_path, '/');
	if (!base || strcmp(base + 1, GENID_SOCKET_NAME))
		return -ENOTSUP;

	/* The peer's bound path, as criu (in the daemon's mount namespace) sees it. */
	ret = genid_open_timeout(&c, addr->sun_path, IO_TIMEOUT_MS);
	if (ret < 0) {
		pr_err("socket %" PRIu32 " is connected to %s, which does not answer: %s\n",
		       r.ino, addr->sun_path, conn_err(&c, ret));
		return -1;
	}
	ret = genid_query_peer(&c, r.ino, &r.flags, &r.acked);
	/*
	 * The tasks are frozen: this daemon's generation now is at least any
	 * its clients saw, and that the page was read at init does not matter.
	 */
	if (!ret)
		ret = genid_get(&c, &gen);
	genid_close(&c);
	if (ret == GENID_ST_NOT_FOUND)
		return -ENOTSUP;	/* a socket named genid.sock, but not ours */
	if (ret) {
		pr_err("query of socket %" PRIu32 " at %s failed: %s\n", r.ino, addr->sun_path,
		       conn_err(&c, ret));
		return -1;
	}
	note_gen(gen);
	note_gen(r.acked);

	fl = fcntl(fd, F_GETFL);
	r.nonblock = fl >= 0 && (fl & O_NONBLOCK);
	snprintf(r.path, sizeof(r.path), "%s", addr->sun_path);
	if (add_sk(&r))
		return -ENOMEM;
	pr_info("socket %" PRIu32 ": %s, acked %" PRIu32 "; generation %" PRIu32 "\n", r.ino,
		r.flags & GENID_FLAG_WATCHER ? "watcher" : "client", r.acked, gen);
	return write_record() ? -1 : 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__DUMP_UNIX_SK, genid_dump_unix_sk)

/* dead_socket stands in for a connection the daemon could not take. */
static int dead_socket(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		pr_err("socketpair: %s: failing the restore\n", strerror(errno));
		return FAIL_FD;
	}
	close(sv[1]);
	return sv[0];
}

/*
 * RESTORE_UNIX_SK runs inside the restoring task, in its namespaces: the
 * connection is made from there, so the daemon sees the task's pid. The
 * daemon's reply to attach is read here; the event that follows it (flag
 * "restored") is left for the task. Every failure returns FAIL_FD.
 */
static int genid_restore_unix_sk(int id)
{
	const char *paths[3];
	struct sk_record *r = NULL;
	struct genid_conn c;
	uint32_t gen;
	size_t i;
	int ret = -ENOENT, fd;

	for (i = 0; i < g.nr_sks && !r; i++)
		if (g.sks[i].ino == (uint32_t)id)
			r = &g.sks[i];
	if (!r)
		return -ENOTSUP;

	if (!g.daemon_ok) {
		pr_warn("socket %" PRIu32 ": daemon unreachable, restoring a closed connection\n", r->ino);
		return dead_socket();
	}

	/*
	 * The daemon that was just bumped, as seen from the task: the configured
	 * path, then the one the task used at dump (both the host's paths), then
	 * the one a container has the host's run dir mounted at.
	 */
	paths[0] = g.sock;
	paths[1] = r->path;
	paths[2] = GENID_DEFAULT_RUN_DIR "/" GENID_SOCKET_NAME;
	for (i = 0; i < 3; i++) {
		ret = genid_open_timeout(&c, paths[i], IO_TIMEOUT_MS);
		if (ret == 0)
			break;
	}
	if (ret < 0) {
		pr_err("socket %" PRIu32 ": cannot reach the daemon from the restored task: %s\n",
		       r->ino, conn_err(&c, ret));
		if (g.best_effort)
			return dead_socket();
		pr_err("socket %" PRIu32 ": failing the restore\n", r->ino);
		return FAIL_FD;
	}

	ret = genid_attach(&c, r->flags | GENID_FLAG_RESTORED, r->acked, &gen);
	if (ret) {
		pr_err("socket %" PRIu32 ": attach failed: %s: failing the restore\n", r->ino,
		       conn_err(&c, ret));
		genid_close(&c);
		return FAIL_FD;
	}
	fd = c.fd;
	/* The task's socket had no timeouts of ours; CRIU then restores its own. */
	ret = genid_set_timeout(fd, 0);
	if (!ret && r->nonblock && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		ret = -errno;
	if (ret) {
		pr_err("socket %" PRIu32 ": set up the new connection: %s: failing the restore\n",
		       r->ino, strerror(-ret));
		close(fd);
		return FAIL_FD;
	}
	/* The task's fd was not close-on-exec unless CRIU restores it so. */
	fcntl(fd, F_SETFD, 0);
	pr_info("socket %" PRIu32 ": reattached as %s, acked %" PRIu32 ", generation %" PRIu32 "\n",
		r->ino, r->flags & GENID_FLAG_WATCHER ? "watcher" : "client", r->acked, gen);
	return fd;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESTORE_UNIX_SK, genid_restore_unix_sk)
