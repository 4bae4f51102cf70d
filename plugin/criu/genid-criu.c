// SPDX-License-Identifier: MIT
/*
 * genid-criu.so - CRIU plugin that keeps genid's generations safe across
 * checkpoint/restore.
 *
 * A container has a genid scope of its own: a directory RUN_DIR/scopes/NAME
 * of the host (its pages "generation" and "vmclock", its socket
 * "genid.sock") that genid's OCI hook bind-mounts into it, at /run/genid,
 * /dev/sysgenid and /dev/vmclock0. The runtime does not know those mounts;
 * this plugin owns them.
 *
 * Dump: records, in IMAGES_DIR/genid.record, each scope the tasks use and
 * its generation once they are frozen: a container's scope from its mounts
 * (DUMP_EXT_MOUNT), and the host's scope when a task is connected to it or
 * when the dump has no container scope (host processes). For every socket
 * of the tasks connected to the daemon it records whether it is a watcher,
 * what it acked, and its scope. The sockets' queues are not dumped.
 *
 * Restore: before any task resumes, each recorded scope is bumped past its
 * recorded generation (reason "criu-restore"): the host's at init; a
 * container's when CRIU restores its mounts (RESTORE_EXT_MOUNT, in the
 * restored tasks' root), where the daemon gives the restored tasks a scope
 * of their own (the one the runtime's hook made for them, or a new one) and
 * the plugin mounts it in place of the old. Then every recorded socket gets
 * a new connection to its scope, attached as "restored" with the recorded
 * acked generation, so a restored watcher is outdated and readable the
 * moment it resumes. A record that cannot be read back whole fails the
 * restore; so does a socket that cannot be given its new connection.
 *
 * The plugin asks the daemon through its admin socket, as criu's root. All
 * policy lives in the daemon; this file only carries state across.
 * Settings come from the environment of criu (runc passes its own on):
 *   GENID_RUN_DIR           the daemon's run dir (default /run/genid; at
 *                           dump, the run dir of the daemon the tasks'
 *                           sockets and mounts lead to)
 *   GENID_CRIU_BEST_EFFORT  "1": restore even when the daemon is unreachable,
 *                           with a warning; restored sockets then see EOF and
 *                           their clients reconnect by themselves
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <criu/criu-plugin.h>
#include <criu/version.h>

#include "genid.h"

/* The CRIU this plugin was built for: genidctl doctor compares it with criu's. */
const char genid_criu_built_for[] = CRIU_VERSION;

#define RECORD_NAME	"genid.record"
#define OLD_RECORD_NAME	"genid.json"	/* genid before scopes */
#define RECORD_MAGIC	"GENIDREC"
#define RECORD_VERSION	3	/* 3: a mount may be the VMClock page */
#define RECORD_VERSION_MIN 2
#define RECORD_MAX	(64 << 20)	/* 65536 watchers take about 5 MB */
#define RECORD_PATH_MAX	4096
#define PAGE_LEN	4096
#define VMCLOCK_NAME	"vmclock"	/* a scope's VMClock page, beside its page */
#define REASON		"criu-restore"
/*
 * Set in criu's environment once the host scope is bumped in a restore, to
 * the generation: the action scripts criu runs inherit it (genidctl's then
 * does not bump again).
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

/* A mount of a scope in the container: its directory, or a page alone. */
struct rmount {
	uint32_t id;		/* its mount id at dump */
	int file;
	int vmclock;		/* the file is the VMClock page, not the generation page */
	char path[RECORD_PATH_MAX + 1];	/* in the container */
};

struct rscope {
	char name[GENID_MAX_NAME + 1];	/* "" for the host scope */
	int have_gen;
	uint32_t gen;
	struct rmount *mounts;
	size_t nr_mounts;
	/* restore: the scope the daemon gave the restored tasks */
	int restored;
	char new_name[GENID_MAX_NAME + 1];
	uint32_t new_gen;
};

struct rsock {
	uint32_t ino;		/* inode of the task's socket at dump */
	uint32_t flags;		/* GENID_FLAG_WATCHER */
	uint32_t acked;
	int nonblock;
	char scope[GENID_MAX_NAME + 1];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
};

static struct {
	char rundir[PATH_MAX];	/* the daemon's run dir */
	int rundir_chosen;	/* set by GENID_RUN_DIR, or by the first socket or mount at dump */
	char admin[PATH_MAX];
	char sock[PATH_MAX];
	char page[PATH_MAX];
	int best_effort;

	/*
	 * The connection to the admin socket, open from its first use to the
	 * plugin's exit: at restore the daemon's restore lasts as long. The
	 * restored tasks' root inherits it (it is forked from criu) and uses
	 * it in RESTORE_EXT_MOUNT; CRIU closes it there before any task's own
	 * files are restored.
	 */
	struct genid_conn ac;
	int ac_open;

	/* The record. */
	int64_t time;
	char writer[256];
	char rec_rundir[RECORD_PATH_MAX + 1];
	struct rscope *scopes;
	size_t nr_scopes;
	struct rsock *sks;
	size_t nr_sks;

	int host_page_seen;	/* dump: the host page was read at init */
	int host_socket;	/* dump: a task is connected to the host scope */
	int recorded;		/* dump: the record was written */
	int daemon_ok;		/* restore: the daemon took the restore */
	char images[PATH_MAX];	/* restore: the images dir, for the daemon's history ("" if unknown) */
} g;

static void set_rundir(const char *dir)
{
	snprintf(g.rundir, sizeof(g.rundir), "%s", dir);
	snprintf(g.admin, sizeof(g.admin), "%s/%s", dir, GENID_ADMIN_SOCKET_NAME);
	snprintf(g.sock, sizeof(g.sock), "%s/%s", dir, GENID_SOCKET_NAME);
	snprintf(g.page, sizeof(g.page), "%s/%s", dir, GENID_PAGE_NAME);
}

static void load_config(void)
{
	const char *dir = getenv("GENID_RUN_DIR");
	const char *be = getenv("GENID_CRIU_BEST_EFFORT");

	g.rundir_chosen = dir && *dir;
	set_rundir(g.rundir_chosen ? dir : GENID_DEFAULT_RUN_DIR);
	g.best_effort = be && (!strcmp(be, "1") || !strcmp(be, "yes") || !strcmp(be, "true"));
}

/*
 * choose_rundir makes dir the dump's daemon: the first socket or mount
 * decides, unless GENID_RUN_DIR did; a second daemon is refused.
 */
static int choose_rundir(const char *dir)
{
	if (!g.rundir_chosen) {
		set_rundir(dir);
		g.rundir_chosen = 1;
		return 0;
	}
	if (strcmp(dir, g.rundir)) {
		pr_err("the tasks use two genid daemons, of %s and of %s: one at a time\n", g.rundir, dir);
		return -1;
	}
	return 0;
}

/*
 * fmt formats into buf, and fails (logged) if it does not fit: a path cut
 * short names another file.
 */
static int __attribute__((format(printf, 3, 4))) fmt(char *buf, size_t cap, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vsnprintf(buf, cap, f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= cap) {
		pr_err("a path longer than %zu bytes: %.64s...\n", cap - 1, buf);
		return -1;
	}
	return 0;
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

/* admin opens the connection to the admin socket, once. */
static int admin(void)
{
	int ret;

	if (g.ac_open)
		return 0;
	ret = genid_open_timeout(&g.ac, g.admin, IO_TIMEOUT_MS);
	if (ret < 0)
		return ret;
	g.ac_open = 1;
	return 0;
}

static void admin_close(void)
{
	if (g.ac_open)
		genid_close(&g.ac);
	g.ac_open = 0;
}

/*
 * grow makes room for element n (0-based) of an array of n: capacities are
 * powers of two, so an array of n has room unless n is one (or 0).
 */
static void *grow(void *p, size_t n, size_t size)
{
	if (n & (n - 1))
		return p;
	return realloc(p, (n ? 2 * n : 1) * size);
}

/* find_scope returns the record of scope name, or NULL. */
static struct rscope *find_scope(const char *name)
{
	size_t i;

	for (i = 0; i < g.nr_scopes; i++)
		if (!strcmp(g.scopes[i].name, name))
			return &g.scopes[i];
	return NULL;
}

/* new_scope appends a record of scope name, which must not be there yet. */
static struct rscope *new_scope(const char *name)
{
	struct rscope *s, *n;

	if (strlen(name) > GENID_MAX_NAME)
		return NULL;
	n = grow(g.scopes, g.nr_scopes, sizeof(*n));
	if (!n)
		return NULL;
	g.scopes = n;
	s = &g.scopes[g.nr_scopes++];
	memset(s, 0, sizeof(*s));
	strcpy(s->name, name);
	return s;
}

/* add_scope returns the record of scope name, adding it if need be. */
static struct rscope *add_scope(const char *name)
{
	struct rscope *s = find_scope(name);

	return s ? s : new_scope(name);
}

static int by_name(const void *a, const void *b)
{
	return strcmp((*(struct rscope *const *)a)->name, (*(struct rscope *const *)b)->name);
}

static int name_is(const void *key, const void *elem)
{
	return strcmp(key, (*(struct rscope *const *)elem)->name);
}

static void drop_scope(struct rscope *s)
{
	free(s->mounts);
	memmove(s, s + 1, (g.scopes + g.nr_scopes - (s + 1)) * sizeof(*s));
	g.nr_scopes--;
}

/* note_gen raises a scope's recorded generation to gen. */
static void note_gen(struct rscope *s, uint32_t gen)
{
	if (!s->have_gen || gen > s->gen)
		s->gen = gen;
	s->have_gen = 1;
}

static int add_mount(struct rscope *s, const struct rmount *m)
{
	struct rmount *n = grow(s->mounts, s->nr_mounts, sizeof(*n));

	if (!n)
		return -ENOMEM;
	s->mounts = n;
	s->mounts[s->nr_mounts++] = *m;
	return 0;
}

static int add_sk(const struct rsock *r)
{
	struct rsock *n = grow(g.sks, g.nr_sks, sizeof(*n));

	if (!n)
		return -ENOMEM;
	g.sks = n;
	g.sks[g.nr_sks++] = *r;
	return 0;
}

static void free_record(void)
{
	size_t i;

	for (i = 0; i < g.nr_scopes; i++)
		free(g.scopes[i].mounts);
	free(g.scopes);
	free(g.sks);
	g.scopes = NULL;
	g.sks = NULL;
	g.nr_scopes = g.nr_sks = 0;
}

/*
 * read_page reads the generation from a page, as any process may. It
 * returns -ENOENT when there is none, and logs any other error: a page too
 * short to hold the generation would raise SIGBUS in criu.
 */
static int read_page(const char *path, uint32_t *gen)
{
	struct stat st;
	void *mem;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		ret = -errno;
		if (ret != -ENOENT)
			pr_err("open %s: %s\n", path, strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		pr_err("stat %s: %s\n", path, strerror(-ret));
		close(fd);
		return ret;
	}
	if (!S_ISREG(st.st_mode)) {
		pr_err("%s is not a regular file: not a generation page\n", path);
		close(fd);
		return -EINVAL;
	}
	if (st.st_size < (off_t)sizeof(uint32_t)) {
		pr_err("%s is %lld bytes, too short for a generation page (the daemon makes it %d)\n",
		       path, (long long)st.st_size, PAGE_LEN);
		close(fd);
		return -EINVAL;
	}
	mem = mmap(NULL, PAGE_LEN, PROT_READ, MAP_SHARED, fd, 0);
	if (mem == MAP_FAILED) {
		ret = -errno;
		pr_err("mmap %s: %s\n", path, strerror(-ret));
		close(fd);
		return ret;
	}
	close(fd);
	*gen = __atomic_load_n((uint32_t *)mem, __ATOMIC_ACQUIRE);
	munmap(mem, PAGE_LEN);
	return 0;
}

/*
 * The record's layout (checkpoint/record.go has the table): little-endian,
 * strings with a u8 (names) or u16 (paths) length first.
 */
struct wbuf {
	unsigned char *p;
	size_t len, cap;
	int err;
};

static void put(struct wbuf *b, const void *v, size_t n)
{
	unsigned char *np;
	size_t cap;

	if (b->err)
		return;
	if (b->len + n > b->cap) {
		cap = b->cap ? 2 * b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		np = realloc(b->p, cap);
		if (!np) {
			b->err = ENOMEM;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, v, n);
	b->len += n;
}

static void put_u8(struct wbuf *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(struct wbuf *b, uint16_t v) { v = htole16(v); put(b, &v, 2); }
static void put_u32(struct wbuf *b, uint32_t v) { v = htole32(v); put(b, &v, 4); }
static void put_i64(struct wbuf *b, int64_t v) { uint64_t u = htole64((uint64_t)v); put(b, &u, 8); }

static void put_str8(struct wbuf *b, const char *s)
{
	size_t n = strlen(s);

	if (n > 255) {
		b->err = ENAMETOOLONG;
		return;
	}
	put_u8(b, n);
	put(b, s, n);
}

static void put_str16(struct wbuf *b, const char *s)
{
	size_t n = strlen(s);

	if (n > RECORD_PATH_MAX) {
		b->err = ENAMETOOLONG;
		return;
	}
	put_u16(b, n);
	put(b, s, n);
}

/* write_record rewrites IMAGES_DIR/genid.record with what is known so far. */
static int write_record(void)
{
	char tmp[] = RECORD_NAME ".tmp";
	int dir = criu_get_image_dir();
	struct wbuf b = { 0 };
	unsigned char head[16] = RECORD_MAGIC;
	unsigned char version = RECORD_VERSION_MIN;
	size_t i, j, off;
	ssize_t n;
	int fd, err = 0;

	put_i64(&b, (int64_t)time(NULL));
	put_str8(&b, "");	/* writer: the C plugin */
	put_str16(&b, g.rundir);
	put_u16(&b, g.nr_scopes);
	for (i = 0; i < g.nr_scopes; i++) {
		struct rscope *s = &g.scopes[i];

		put_str8(&b, s->name);
		put_u8(&b, s->have_gen);
		put_u32(&b, s->gen);
		put_u16(&b, s->nr_mounts);
		for (j = 0; j < s->nr_mounts; j++) {
			put_u32(&b, s->mounts[j].id);
			put_u8(&b, (s->mounts[j].file ? 1 : 0) | (s->mounts[j].vmclock ? 2 : 0));
			put_str16(&b, s->mounts[j].path);
			/* The lowest version that holds the record. */
			if (s->mounts[j].vmclock)
				version = 3;
		}
	}
	put_u32(&b, g.nr_sks);
	for (i = 0; i < g.nr_sks; i++) {
		struct rsock *r = &g.sks[i];

		put_u32(&b, r->ino);
		put_u8(&b, (r->flags & GENID_FLAG_WATCHER ? 1 : 0) | (r->nonblock ? 2 : 0));
		put_u32(&b, r->acked);
		put_str8(&b, r->scope);
		put_str16(&b, r->path);
	}
	if (b.err) {
		pr_err("record: %s\n", strerror(b.err));
		free(b.p);
		return -1;
	}
	head[8] = version;
	head[12] = b.len & 0xff;
	head[13] = b.len >> 8 & 0xff;
	head[14] = b.len >> 16 & 0xff;
	head[15] = b.len >> 24 & 0xff;

	fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (fd < 0) {
		pr_err("create %s: %s\n", tmp, strerror(errno));
		free(b.p);
		return -1;
	}
	if (write(fd, head, sizeof(head)) != (ssize_t)sizeof(head))
		err = errno ? errno : EIO;
	for (off = 0; !err && off < b.len; off += n) {
		n = write(fd, b.p + off, b.len - off);
		if (n < 0 && errno == EINTR) {
			n = 0;
			continue;
		}
		if (n <= 0)
			err = n < 0 ? errno : EIO;
	}
	free(b.p);
	if (close(fd) && !err)
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

/* A reader of the record: the first error sticks, every read after it fails. */
struct rbuf {
	const unsigned char *p, *end;
	const char *err;
};

static int take(struct rbuf *r, void *v, size_t n)
{
	if (r->err)
		return -1;
	if ((size_t)(r->end - r->p) < n) {
		r->err = "cut short";
		return -1;
	}
	memcpy(v, r->p, n);
	r->p += n;
	return 0;
}

static uint8_t get_u8(struct rbuf *r) { uint8_t v = 0; take(r, &v, 1); return v; }
static uint16_t get_u16(struct rbuf *r) { uint16_t v = 0; take(r, &v, 2); return le16toh(v); }
static uint32_t get_u32(struct rbuf *r) { uint32_t v = 0; take(r, &v, 4); return le32toh(v); }
static int64_t get_i64(struct rbuf *r) { uint64_t v = 0; take(r, &v, 8); return (int64_t)le64toh(v); }

/* get_str reads n bytes into out (cap bytes, NUL-terminated): no NUL inside. */
static void get_str(struct rbuf *r, size_t n, char *out, size_t cap)
{
	out[0] = '\0';
	if (n >= cap) {
		if (!r->err)
			r->err = "a string too long";
		return;
	}
	if (take(r, out, n))
		return;
	out[n] = '\0';
	if (strlen(out) != n)
		r->err = "a NUL byte in a string";
}

/* get_name reads a scope's name: empty, or letters, digits, '_', '.', '-'. */
static void get_name(struct rbuf *r, char *out)
{
	const char *c;

	get_str(r, get_u8(r), out, GENID_MAX_NAME + 1);
	for (c = out; *c; c++)
		if (!(('a' <= *c && *c <= 'z') || ('A' <= *c && *c <= 'Z') || ('0' <= *c && *c <= '9') ||
		      *c == '_' || *c == '.' || *c == '-') || (c == out && (*c == '.' || *c == '-'))) {
			if (!r->err)
				r->err = "a scope name that is not one";
			return;
		}
}

/* parse_record reads the whole record into g, or sets r->err. */
/*
 * parse_scopes reads the record's header (into head) and its scopes, each
 * appended as read: parse_record checks that no name comes twice.
 */
static void parse_scopes(struct rbuf *r, unsigned char *head)
{
	uint32_t nr, i, j;
	uint16_t ns, nm;

	if (take(r, head, 16) || memcmp(head, RECORD_MAGIC, 8)) {
		r->err = "not a genid record (no magic)";
		return;
	}
	if (head[8] < RECORD_VERSION_MIN || head[8] > RECORD_VERSION || head[9] || head[10] || head[11]) {
		r->err = "a version this plugin does not know";
		return;
	}
	nr = head[12] | head[13] << 8 | head[14] << 16 | (uint32_t)head[15] << 24;
	if (nr != (size_t)(r->end - r->p)) {
		r->err = "its length is not what follows its header: cut short or padded";
		return;
	}
	g.time = get_i64(r);
	get_str(r, get_u8(r), g.writer, sizeof(g.writer));
	get_str(r, get_u16(r), g.rec_rundir, sizeof(g.rec_rundir));
	ns = get_u16(r);
	for (i = 0; i < ns && !r->err; i++) {
		char name[GENID_MAX_NAME + 1];
		struct rscope *s;
		uint8_t flags;

		get_name(r, name);
		if (r->err)
			return;
		s = new_scope(name);
		if (!s) {
			r->err = "out of memory";
			return;
		}
		flags = get_u8(r);
		s->gen = get_u32(r);
		s->have_gen = flags & 1;
		if (flags & ~1)
			r->err = "unknown scope flags";
		else if (!s->have_gen && s->gen)
			r->err = "a generation flagged unknown";
		nm = get_u16(r);
		for (j = 0; j < nm && !r->err; j++) {
			struct rmount m = { 0 };

			m.id = get_u32(r);
			flags = get_u8(r);
			m.file = flags & 1;
			m.vmclock = !!(flags & 2);
			/* 2: the VMClock page, a file; version 3 on. */
			if (flags & ~(head[8] >= 3 ? 3 : 1) || flags == 2)
				r->err = "unknown mount flags";
			get_str(r, get_u16(r), m.path, sizeof(m.path));
			if (!r->err && add_mount(s, &m))
				r->err = "out of memory";
		}
	}
}

static void parse_record(struct rbuf *r)
{
	unsigned char head[16];
	struct rscope **sorted;
	uint32_t nr, i;

	parse_scopes(r, head);
	if (r->err)
		return;
	/*
	 * The scopes by name: a name read twice is found, and each socket's
	 * scope looked up, in time n log n of the (up to 0xffff) scopes, not n².
	 */
	sorted = malloc((g.nr_scopes ? g.nr_scopes : 1) * sizeof(*sorted));
	if (!sorted) {
		r->err = "out of memory";
		return;
	}
	for (i = 0; i < g.nr_scopes; i++)
		sorted[i] = &g.scopes[i];
	qsort(sorted, g.nr_scopes, sizeof(*sorted), by_name);
	for (i = 1; i < g.nr_scopes && !r->err; i++)
		if (!strcmp(sorted[i - 1]->name, sorted[i]->name))
			r->err = "a scope twice";
	nr = get_u32(r);
	/* A socket takes 12 bytes at least: inode, flags, acked, two lengths. */
	if (!r->err && (uint64_t)nr * 12 > (uint64_t)(r->end - r->p))
		r->err = "more sockets than the record could hold";
	for (i = 0; i < nr && !r->err; i++) {
		struct rsock k = { 0 };
		uint8_t flags;

		k.ino = get_u32(r);
		flags = get_u8(r);
		k.flags = flags & 1 ? GENID_FLAG_WATCHER : 0;
		k.nonblock = !!(flags & 2);
		if (flags & ~3)
			r->err = "unknown socket flags";
		k.acked = get_u32(r);
		get_name(r, k.scope);
		get_str(r, get_u16(r), k.path, sizeof(k.path));
		if (!r->err && !bsearch(k.scope, sorted, g.nr_scopes, sizeof(*sorted), name_is))
			r->err = "a socket of a scope the record does not list";
		if (!r->err && add_sk(&k))
			r->err = "out of memory";
	}
	free(sorted);
	if (!r->err && r->p != r->end)
		r->err = "data after the record";
}

/*
 * read_record reads the dump's record back: 1 when there is one, 0 when the
 * checkpoint was taken without genid, -1 (logged) when it cannot be read
 * whole and right.
 */
static int read_record(void)
{
	int fd = openat(criu_get_image_dir(), RECORD_NAME, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct rbuf r = { 0 };
	unsigned char *buf = NULL;
	struct stat st;
	size_t len = 0;
	ssize_t n;

	if (fd < 0 && errno == ENOENT) {
		if (!faccessat(criu_get_image_dir(), OLD_RECORD_NAME, F_OK, 0)) {
			pr_refuse("the checkpoint has a %s of genid before scopes, which this genid does not "
				  "restore: restore it with the genid that took it (see genid's README, CRIU)\n",
				  OLD_RECORD_NAME);
			return -1;
		}
		return 0;
	}
	if (fd < 0) {
		pr_refuse("open %s: %s\n", RECORD_NAME, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		pr_refuse("%s: not a regular file\n", RECORD_NAME);
		close(fd);
		return -1;
	}
	if (st.st_size > RECORD_MAX) {
		pr_refuse("%s: larger than %d bytes\n", RECORD_NAME, RECORD_MAX);
		close(fd);
		return -1;
	}
	buf = malloc(st.st_size + 1);
	if (!buf) {
		pr_refuse("%s: out of memory\n", RECORD_NAME);
		close(fd);
		return -1;
	}
	/* Read to the end, however large: one read() may return less. */
	while ((n = read(fd, buf + len, st.st_size + 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || len + n > (size_t)st.st_size) {
			pr_refuse("read %s: %s\n", RECORD_NAME, n < 0 ? strerror(errno) : "it grew");
			close(fd);
			free(buf);
			return -1;
		}
		len += n;
	}
	close(fd);
	r.p = buf;
	r.end = buf + len;
	if (len == 0)
		r.err = "empty";
	else
		parse_record(&r);
	if (r.err) {
		pr_refuse("%s is corrupt: %s at byte %zu of %zu: a restore needs the record of its checkpoint whole\n",
			  RECORD_NAME, r.err, (size_t)(r.p - buf), len);
		free(buf);
		return -1;
	}
	free(buf);
	return 1;
}

/*
 * poison_record leaves an empty record, which a restore refuses: the dump
 * cannot be failed from its exit hook, and a record that may be behind what
 * the tasks saw must not be restored from.
 */
static void poison_record(void)
{
	int fd = openat(criu_get_image_dir(), RECORD_NAME,
			O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);

	if (fd >= 0)
		close(fd);
	pr_err("the generation the frozen tasks saw is not recorded: %s emptied, "
	       "a restore of this checkpoint will be refused%s\n", RECORD_NAME,
	       fd < 0 ? " (emptying failed too: do not restore it)" : "");
}

/*
 * dump_init records the host scope's generation as it is before the tasks
 * freeze: a dump of host processes, which may read the host page, must never
 * lack it (an action script after the dump may copy the images before
 * dump_fini). A dump that turns out to be a container's drops it again.
 */
static int dump_init(void)
{
	struct rscope *host;
	uint32_t gen;
	int ret = read_page(g.page, &gen);

	if (ret == -ENOENT) {
		pr_info("no generation page at %s: nothing to record yet\n", g.page);
		return 0;
	}
	if (ret) {
		pr_err("cannot read the generation at %s: refusing to dump\n", g.page);
		return -1;
	}
	host = add_scope("");
	if (!host)
		return -1;
	note_gen(host, gen);
	g.host_page_seen = 1;
	pr_info("host scope's generation at checkpoint: %" PRIu32 "\n", gen);
	return write_record();
}

/*
 * dump_fini runs in cr_dump_finish (cr-dump.c) after the images are written
 * and before the tasks are thawed or killed: each scope's generation now is
 * at least any the tasks saw, though the pages were read before they froze.
 * It runs after the post-dump action script, though: a script that copies
 * the images away takes the record as the hooks left it.
 */
static void dump_fini(void)
{
	struct rscope *host = find_scope("");
	int containers = g.nr_scopes - (host != NULL), changed = 0;
	char path[PATH_MAX];
	uint32_t gen;
	size_t i;

	/*
	 * A container's dump: its tasks use their scope, and the host's only
	 * through a socket. No page at init: the tasks can have read none but
	 * one a daemon started meanwhile, which starts at 0.
	 */
	if (host && containers > 0 && !g.host_socket) {
		pr_info("a container's dump: the host scope is not recorded\n");
		drop_scope(host);
		changed = 1;
	}
	for (i = 0; i < g.nr_scopes; i++) {
		struct rscope *s = &g.scopes[i];
		int ret;

		if (!s->name[0]) {
			if (!g.host_page_seen)
				continue;
			snprintf(path, sizeof(path), "%s", g.page);
		} else if (fmt(path, sizeof(path), "%s/%s/%s/%s", g.rundir, GENID_SCOPES_DIR, s->name, GENID_PAGE_NAME)) {
			poison_record();
			return;
		}
		ret = read_page(path, &gen);
		if (ret) {
			poison_record();
			return;
		}
		if (!s->have_gen || gen > s->gen) {
			note_gen(s, gen);
			changed = 1;
		}
	}
	if (!changed && g.recorded)
		return;
	pr_info("generations once the tasks were frozen: recording them\n");
	if (write_record())
		poison_record();
}

/*
 * restored_pid is this process's pid as the daemon sees it: the host's /proc
 * is still mounted where CRIU restores mounts.
 */
static uint32_t restored_pid(void)
{
	char buf[32];
	ssize_t n = readlink("/proc/self", buf, sizeof(buf) - 1);

	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return (uint32_t)strtoul(buf, NULL, 10);
}

/*
 * The images dir's path, as criu opened it, for the daemon's history; ""
 * if it cannot be told or is not plain text (the daemon takes UTF-8 only).
 */
static void images_dir(char *buf, size_t cap)
{
	char link[64];
	ssize_t n, i;

	buf[0] = '\0';
	snprintf(link, sizeof(link), "/proc/self/fd/%d", criu_get_image_dir());
	n = readlink(link, buf, cap - 1);
	if (n <= 0 || buf[0] != '/') {
		buf[0] = '\0';
		return;
	}
	for (i = 0; i < n; i++) {
		if (buf[i] < 0x20 || buf[i] > 0x7e) {
			buf[0] = '\0';
			return;
		}
	}
	buf[n] = '\0';
}

static int restore_init(void)
{
	char val[16], name[GENID_MAX_NAME + 1];
	struct rscope *host;
	int ret;

	unsetenv(RESTORED_ENV);	/* one inherited by criu is not this restore's */
	images_dir(g.images, sizeof(g.images));
	ret = read_record();
	if (ret < 0)
		return -1;
	if (ret == 0) {
		pr_warn("no %s in the images (checkpoint taken without the plugin): bumping the host scope by one\n",
			RECORD_NAME);
		if (!add_scope(""))
			return -1;
	}
	host = find_scope("");
	if (host && host->have_gen && host->gen == UINT32_MAX) {
		pr_refuse("recorded generation %" PRIu32 " cannot be bumped past\n", host->gen);
		return -1;
	}

	ret = admin();
	if (ret < 0) {
		if (g.best_effort) {
			fprintf(stderr, "genid: WARNING: genid daemon unreachable at %s: %s; "
				"restoring anyway (GENID_CRIU_BEST_EFFORT): processes are not told of this restore\n",
				g.admin, conn_err(&g.ac, ret));
			pr_warn("daemon unreachable at %s: %s; best effort: restoring anyway\n",
				g.admin, conn_err(&g.ac, ret));
			return 0;
		}
		pr_refuse("genid daemon unreachable at %s: %s "
			  "(start it, or set GENID_CRIU_BEST_EFFORT=1 to restore without it)\n",
			  g.admin, conn_err(&g.ac, ret));
		return -1;
	}
	/*
	 * Containers' scopes are restored with their mounts, by the restored
	 * tasks' root, which may be in a user namespace: the restore it asks
	 * for is begun here, as criu's root.
	 */
	if (g.nr_scopes - (host != NULL) > 0) {
		uint32_t none;

		ret = genid_admin_restore(&g.ac, GENID_FLAG_BEGIN, NULL, 0, 0, &none, name, sizeof(name));
		if (ret) {
			pr_refuse("restore at %s refused: %s\n", g.admin, conn_err(&g.ac, ret));
			return -1;
		}
	}
	g.daemon_ok = 1;
	if (!host)
		return 0;
	ret = genid_admin_restore_from(&g.ac, host->have_gen ? GENID_FLAG_AVOID : 0, NULL, host->gen, 0, g.images,
				       &host->new_gen, name, sizeof(name));
	if (ret) {
		pr_refuse("restore of the host scope at %s failed: %s\n", g.admin, conn_err(&g.ac, ret));
		return -1;
	}
	host->restored = 1;
	pr_info("host scope bumped to %" PRIu32 " (checkpoint had %s%" PRIu32 ")\n",
		host->new_gen, host->have_gen ? "" : "none, ", host->gen);
	snprintf(val, sizeof(val), "%" PRIu32, host->new_gen);
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
	admin_close();	/* at restore, this ends the restore the daemon knows of */
	free_record();
}

CR_PLUGIN_REGISTER("genid", genid_plugin_init, genid_plugin_exit)

/*
 * rundir_of_socket derives a daemon's run dir from the path its socket is
 * bound to: RUN_DIR/genid.sock (the host scope) or
 * RUN_DIR/scopes/NAME/genid.sock (a container's).
 */
static void rundir_of_socket(const char *path, char *out, size_t cap)
{
	char *slash;
	size_t n;

	snprintf(out, cap, "%s", path);
	slash = strrchr(out, '/');
	*slash = '\0';			/* the socket's directory */
	slash = strrchr(out, '/');
	if (!slash)
		return;
	n = slash - out;
	if (n >= strlen("/" GENID_SCOPES_DIR) &&
	    !strncmp(slash - strlen("/" GENID_SCOPES_DIR), "/" GENID_SCOPES_DIR, strlen("/" GENID_SCOPES_DIR))) {
		slash[-strlen("/" GENID_SCOPES_DIR)] = '\0';
	}
}

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
	struct rsock r = { .ino = (uint32_t)id };
	char dir[PATH_MAX], page[PATH_MAX];
	struct rscope *s;
	const char *base;
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

	rundir_of_socket(addr->sun_path, dir, sizeof(dir));
	if (!g.ac_open && choose_rundir(dir))
		return -1;
	if (strcmp(dir, g.rundir))
		return -ENOTSUP;	/* not the dump's daemon (see choose_rundir) */
	ret = admin();
	if (ret < 0) {
		pr_err("socket %" PRIu32 " is connected to %s, but the daemon's %s does not answer: %s\n",
		       r.ino, addr->sun_path, g.admin, conn_err(&g.ac, ret));
		return -1;
	}
	ret = genid_admin_query_peer(&g.ac, r.ino, &r.flags, &r.acked, r.scope, sizeof(r.scope));
	/*
	 * The tasks are frozen: the scope's generation now is at least any
	 * its clients saw, and that the page was read at init does not matter.
	 */
	if (!ret)
		ret = genid_admin_get(&g.ac, r.scope, &gen);
	if (ret == GENID_ST_NOT_FOUND)
		return -ENOTSUP;	/* a socket named genid.sock, but not ours */
	if (ret) {
		pr_err("query of socket %" PRIu32 " at %s failed: %s\n", r.ino, g.admin,
		       conn_err(&g.ac, ret));
		return -1;
	}
	s = add_scope(r.scope);
	if (!s)
		return -ENOMEM;
	if (!r.scope[0])
		g.host_socket = 1;
	else if (fmt(page, sizeof(page), "%s/%s/%s/%s", g.rundir, GENID_SCOPES_DIR, r.scope, GENID_PAGE_NAME))
		return -1;	/* dump_fini could not read the scope's page */
	note_gen(s, gen);
	note_gen(s, r.acked);

	fl = fcntl(fd, F_GETFL);
	r.nonblock = fl >= 0 && (fl & O_NONBLOCK);
	snprintf(r.path, sizeof(r.path), "%s", addr->sun_path);
	if (add_sk(&r))
		return -ENOMEM;
	pr_info("socket %" PRIu32 ": %s of scope \"%s\", acked %" PRIu32 "; generation %" PRIu32 "\n", r.ino,
		r.flags & GENID_FLAG_WATCHER ? "watcher" : "client", r.scope, r.acked, gen);
	return write_record() ? -1 : 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__DUMP_UNIX_SK, genid_dump_unix_sk)

/*
 * find_mount looks for mount id in the mountinfo of every process (the
 * dumped tasks' mount namespace is not criu's): it fills the pid whose
 * mountinfo has it, the device, and the mount's root within its
 * filesystem. 0 if found.
 */
static int find_mount(int id, pid_t *pid, dev_t *dev, char *root, size_t cap)
{
	char path[300], line[PATH_MAX + 256], scan[64];
	struct dirent *de;
	unsigned int maj, min;
	int mid, found = -1;
	DIR *proc;
	FILE *f;

	proc = opendir("/proc");
	if (!proc)
		return -1;
	snprintf(scan, sizeof(scan), "%%d %%*d %%u:%%u %%%zus", cap - 1);
	while (found && (de = readdir(proc))) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/mountinfo", de->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f))
			if (sscanf(line, scan, &mid, &maj, &min, root) == 4 && mid == id) {
				*pid = atoi(de->d_name);
				*dev = makedev(maj, min);
				found = 0;
				break;
			}
		fclose(f);
	}
	closedir(proc);
	return found;
}

/*
 * host_path turns a mount's root within its filesystem (dev, root) into a
 * path in criu's mount namespace: through the mount of that filesystem here
 * whose root is the longest prefix of it. 0 if found.
 */
static int host_path(dev_t dev, const char *root, char *out, size_t cap)
{
	char line[2 * PATH_MAX + 256], r[PATH_MAX], mp[PATH_MAX];
	unsigned int maj, min;
	size_t best = 0, n;
	int found = -1;
	FILE *f;

	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%*d %*d %u:%u %4095s %4095s", &maj, &min, r, mp) != 4 ||
		    makedev(maj, min) != dev)
			continue;
		n = strlen(r);
		if (!strcmp(r, "/"))
			n = 0;
		else if (strncmp(root, r, n) || (root[n] != '/' && root[n] != '\0'))
			continue;
		if (found == 0 && n < best)
			continue;
		best = n;
		snprintf(out, cap, "%s%s", strcmp(mp, "/") ? mp : "", root + n);
		if (!out[0])
			snprintf(out, cap, "/");
		found = 0;
	}
	fclose(f);
	return found;
}

/* mount_what names what of a scope a mount is, for the log. */
static const char *mount_what(const struct rmount *m)
{
	if (m->vmclock)
		return "VMClock page";
	return m->file ? "page" : "directory";
}

/*
 * DUMP_EXT_MOUNT runs in the main criu process for a mount of the dumped
 * tasks that neither the runtime declared nor CRIU can place: the plugin
 * takes those of a genid scope, the directory (at /run/genid) or a page (at
 * /dev/sysgenid, /dev/vmclock0) that genid's OCI hook bind-mounted.
 */
static int genid_dump_ext_mount(char *mountpoint, int id)
{
	char root[PATH_MAX], host[PATH_MAX], dir[PATH_MAX], name[PATH_MAX], page[PATH_MAX + 16];
	char inside[PATH_MAX + 64];
	struct rmount m = { .id = (uint32_t)id };
	struct stat a, b;
	struct rscope *s;
	const char *mp = mountpoint;
	char *slash;
	dev_t dev;
	pid_t pid = 0;
	uint32_t gen;

	if (find_mount(id, &pid, &dev, root, sizeof(root)) || host_path(dev, root, host, sizeof(host)) ||
	    stat(host, &b))
		return -ENOTSUP;
	snprintf(dir, sizeof(dir), "%s", host);
	slash = strrchr(dir, '/');
	if (!slash)
		return -ENOTSUP;
	/* A page is a file (a scope may be named after one). */
	if (S_ISREG(b.st_mode)) {
		m.file = 1;
		m.vmclock = !strcmp(slash + 1, VMCLOCK_NAME);
		if (!m.vmclock && strcmp(slash + 1, GENID_PAGE_NAME))
			return -ENOTSUP;
		*slash = '\0';
		slash = strrchr(dir, '/');
		if (!slash)
			return -ENOTSUP;
	}
	/* dir is RUN_DIR/scopes/NAME */
	snprintf(name, sizeof(name), "%s", slash + 1);
	*slash = '\0';
	slash = strrchr(dir, '/');
	if (!slash || strcmp(slash + 1, GENID_SCOPES_DIR) || strlen(name) > GENID_MAX_NAME || !name[0])
		return -ENOTSUP;
	*slash = '\0';

	/* The very file the tasks have mounted, not one of the same name. */
	while (mp[0] == '.' && mp[1] == '/')
		mp++;
	snprintf(inside, sizeof(inside), "/proc/%d/root%s", pid, mp);
	if (stat(inside, &a) || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		return -ENOTSUP;
	if (choose_rundir(dir))
		return -1;

	if (fmt(page, sizeof(page), "%s/%s/%s/%s", g.rundir, GENID_SCOPES_DIR, name, GENID_PAGE_NAME))
		return -1;
	if (read_page(page, &gen)) {
		pr_err("mount %d (%s): scope %s has no readable page at %s\n", id, mp, name, page);
		return -1;
	}
	s = add_scope(name);
	if (!s)
		return -ENOMEM;
	note_gen(s, gen);
	snprintf(m.path, sizeof(m.path), "%s", mp);
	if (add_mount(s, &m))
		return -ENOMEM;
	pr_info("mount %d at %s: scope %s's %s, generation %" PRIu32 "\n", id, m.path, name,
		mount_what(&m), gen);
	return write_record() ? -1 : 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__DUMP_EXT_MOUNT, genid_dump_ext_mount)

/* find_recorded_mount returns the scope of recorded mount id, and the mount. */
static struct rscope *find_recorded_mount(uint32_t id, struct rmount **mp)
{
	size_t i, j;

	for (i = 0; i < g.nr_scopes; i++)
		for (j = 0; j < g.scopes[i].nr_mounts; j++)
			if (g.scopes[i].mounts[j].id == id) {
				*mp = &g.scopes[i].mounts[j];
				return &g.scopes[i];
			}
	return NULL;
}

/*
 * restore_scope asks the daemon for the restored tasks' scope, once per
 * recorded scope: the one this process (their root) belongs to, or a new
 * one, past the recorded generation.
 */
static int restore_scope(struct rscope *s)
{
	uint32_t pid;
	int ret;

	if (s->restored)
		return 0;
	pid = restored_pid();
	if (!pid) {
		pr_err("scope %s: cannot tell the restored tasks' pid: %s\n", s->name, strerror(errno));
		return -1;
	}
	if (!g.daemon_ok) {
		/* Best effort without a daemon: the recorded scope, if it is here. */
		snprintf(s->new_name, sizeof(s->new_name), "%s", s->name);
		s->restored = 1;
		pr_warn("scope %s: daemon unreachable: mounting the scope of that name, if any\n", s->name);
		return 0;
	}
	ret = genid_admin_restore_from(&g.ac, s->have_gen ? GENID_FLAG_AVOID : 0, s->name, s->gen, pid, g.images,
				       &s->new_gen, s->new_name, sizeof(s->new_name));
	if (ret) {
		pr_err("restore of scope %s for the restored tasks (pid %" PRIu32 ") failed: %s\n", s->name, pid,
		       conn_err(&g.ac, ret));
		return -1;
	}
	s->restored = 1;
	pr_info("scope %s restored as %s, generation %" PRIu32 " (checkpoint had %s%" PRIu32 ")\n", s->name,
		s->new_name, s->new_gen, s->have_gen ? "" : "none, ", s->gen);
	return 0;
}

/*
 * RESTORE_EXT_MOUNT runs in the restored tasks' root, in their new mount
 * namespace (and user namespace, if any) before it is pivoted into: the
 * host's run dir is still in sight. It mounts the scope the daemon gives the
 * restored tasks where the old one was, read-only as the hook mounted it.
 */
static int genid_restore_ext_mount(int id, char *mountpoint, char *old_root, int *is_file)
{
	unsigned long flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
	char src[PATH_MAX];
	struct rmount *m;
	struct rscope *s;

	s = find_recorded_mount((uint32_t)id, &m);
	if (!s)
		return -ENOTSUP;
	if (restore_scope(s))
		return -1;
	if (fmt(src, sizeof(src), "%s/%s/%s%s", g.rundir, GENID_SCOPES_DIR, s->new_name,
		m->vmclock ? "/" VMCLOCK_NAME : m->file ? "/" GENID_PAGE_NAME : ""))
		return -1;
	if (mount(src, mountpoint, NULL, MS_BIND, NULL)) {
		pr_err("mount %d: bind %s on %s: %s\n", id, src, mountpoint, strerror(errno));
		return -1;
	}
	if (mount(NULL, mountpoint, NULL, flags, NULL))
		pr_warn("mount %d: %s read-only: %s\n", id, mountpoint, strerror(errno));
	pr_info("mount %d at %s: scope %s's %s\n", id, m->path, s->new_name, mount_what(m));
	return 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESTORE_EXT_MOUNT, genid_restore_ext_mount)

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
 * RESTORE_UNIX_SK runs inside the restoring task, in its namespaces, at its
 * container's root: the connection is made from there, so the daemon sees
 * the task's pid. A container's socket connects to its scope where the
 * container has it mounted; a host process's to the host's socket. The
 * daemon's reply to attach is read here; the event that follows it (flag
 * "restored") is left for the task. Every failure returns FAIL_FD.
 */
static int genid_restore_unix_sk(int id)
{
	char inside[RECORD_PATH_MAX + 64];
	const char *paths[3];
	struct rsock *r = NULL;
	struct rscope *s;
	struct genid_conn c;
	uint32_t gen;
	size_t i, n = 0;
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
	s = find_scope(r->scope);
	if (r->scope[0]) {
		/* The scope's directory where the container has it. */
		for (i = 0; s && i < s->nr_mounts && !n; i++)
			if (!s->mounts[i].file) {
				snprintf(inside, sizeof(inside), "%s/%s", s->mounts[i].path, GENID_SOCKET_NAME);
				paths[n++] = inside;
			}
		if (!n) {
			pr_err("socket %" PRIu32 " of scope %s: the container has no mount of the scope's "
			       "directory to reach it by: failing the restore\n", r->ino, r->scope);
			return FAIL_FD;
		}
	} else {
		/*
		 * The host scope's socket, as seen from the task: the
		 * configured path, then the one the task used at dump (both
		 * the host's paths), then where a container that has the
		 * host's run dir mounted sees it.
		 */
		paths[n++] = g.sock;
		paths[n++] = r->path;
		paths[n++] = GENID_DEFAULT_RUN_DIR "/" GENID_SOCKET_NAME;
	}
	for (i = 0; i < n; i++) {
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
	pr_info("socket %" PRIu32 ": reattached to scope \"%s\" as %s, acked %" PRIu32 ", generation %" PRIu32 "\n",
		r->ino, r->scope, r->flags & GENID_FLAG_WATCHER ? "watcher" : "client", r->acked, gen);
	return fd;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESTORE_UNIX_SK, genid_restore_unix_sk)
