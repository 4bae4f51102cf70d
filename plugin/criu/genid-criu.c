// SPDX-License-Identifier: MIT
/*
 * genid-criu.so - CRIU plugin that keeps genid's generation safe across
 * checkpoint/restore.
 *
 * Dump: records the generation and, for every socket of the dumped tasks that
 * is connected to the genid daemon, whether it is a watcher and what it
 * acked, in IMAGES_DIR/genid.json. The socket's queue is not dumped.
 *
 * Restore: before any task resumes, bumps the generation past the recorded
 * one (reason "criu-restore"), then gives every recorded socket a new
 * connection, attached as "restored" with the recorded acked generation, so
 * a restored watcher is outdated and readable the moment it resumes.
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
#define REASON		"criu-restore"

/* Exported by the criu binary; its log.h is not installed. */
extern void print_on_level(unsigned int loglevel, const char *format, ...)
	__attribute__((format(printf, 2, 3)));

#define pr_err(fmt, ...)	print_on_level(1, "genid: " fmt, ##__VA_ARGS__)
#define pr_warn(fmt, ...)	print_on_level(2, "genid: " fmt, ##__VA_ARGS__)
#define pr_info(fmt, ...)	print_on_level(3, "genid: " fmt, ##__VA_ARGS__)
#define pr_debug(fmt, ...)	print_on_level(4, "genid: " fmt, ##__VA_ARGS__)

struct sk_record {
	uint32_t ino;		/* inode of the task's socket at dump */
	uint32_t flags;		/* GENID_FLAG_WATCHER */
	uint32_t acked;
	int nonblock;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static struct {
	char sock[PATH_MAX];	/* configured socket path */
	int best_effort;

	int have_gen;		/* generation known at dump / found in the record */
	uint32_t gen;

	struct sk_record *sks;
	size_t nr_sks;

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
	g.best_effort = be && (!strcmp(be, "1") || !strcmp(be, "yes") || !strcmp(be, "true"));
}

/* read_page reads the generation from RUN_DIR/generation, as any process may. */
static int read_page(uint32_t *gen)
{
	char path[PATH_MAX];
	size_t n = strlen(g.sock) - strlen(GENID_SOCKET_NAME);
	void *mem;
	int fd;

	snprintf(path, sizeof(path), "%.*s%s", (int)n, g.sock, GENID_PAGE_NAME);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	mem = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (mem == MAP_FAILED)
		return -errno;
	*gen = __atomic_load_n((uint32_t *)mem, __ATOMIC_ACQUIRE);
	munmap(mem, 4096);
	return 0;
}

/* write_record rewrites IMAGES_DIR/genid.json with what is known so far. */
static int write_record(void)
{
	char tmp[] = RECORD_NAME ".tmp";
	int dir = criu_get_image_dir();
	time_t now = time(NULL);
	char stamp[32];
	size_t i;
	FILE *f;
	int fd;

	strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		pr_err("create %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		return -1;
	}
	fprintf(f, "{\n  \"version\": %d,\n", RECORD_VERSION);
	if (g.have_gen)
		fprintf(f, "  \"generation\": %" PRIu32 ",\n", g.gen);
	fprintf(f, "  \"socket\": \"%s\",\n  \"time\": \"%s\",\n  \"sockets\": [", g.sock, stamp);
	for (i = 0; i < g.nr_sks; i++) {
		struct sk_record *r = &g.sks[i];

		fprintf(f, "%s\n    {\"inode\": %" PRIu32 ", \"watcher\": %s, \"acked\": %" PRIu32
			", \"nonblock\": %s, \"path\": \"%s\"}", i ? "," : "", r->ino,
			r->flags & GENID_FLAG_WATCHER ? "true" : "false", r->acked,
			r->nonblock ? "true" : "false", r->path);
	}
	fprintf(f, "%s]\n}\n", g.nr_sks ? "\n  " : "");
	if (fclose(f)) {
		pr_err("write %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	if (renameat(dir, tmp, dir, RECORD_NAME)) {
		pr_err("rename %s: %s\n", tmp, strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * read_record parses the record this plugin wrote. It is not a general JSON
 * parser: it reads back the exact layout of write_record.
 */
static int read_record(void)
{
	char buf[1 << 16], *p;
	int fd = openat(criu_get_image_dir(), RECORD_NAME, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		pr_err("open %s: %s\n", RECORD_NAME, strerror(errno));
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0) {
		pr_err("read %s: %s\n", RECORD_NAME, strerror(errno));
		return -1;
	}
	buf[n] = '\0';

	p = strstr(buf, "\"generation\": ");
	if (p) {
		g.gen = strtoul(p + strlen("\"generation\": "), NULL, 10);
		g.have_gen = 1;
	}
	for (p = buf; (p = strstr(p, "{\"inode\": ")); p++) {
		struct sk_record r = { 0 }, *sks;
		char watcher[8], nonblock[8];

		if (sscanf(p, "{\"inode\": %" SCNu32 ", \"watcher\": %7[a-z], \"acked\": %" SCNu32
			   ", \"nonblock\": %7[a-z], \"path\": \"%107[^\"]\"}",
			   &r.ino, watcher, &r.acked, nonblock, r.path) != 5) {
			pr_err("%s: malformed socket entry\n", RECORD_NAME);
			return -1;
		}
		r.flags = strcmp(watcher, "true") ? 0 : GENID_FLAG_WATCHER;
		r.nonblock = !strcmp(nonblock, "true");
		sks = realloc(g.sks, (g.nr_sks + 1) * sizeof(*sks));
		if (!sks)
			return -1;
		g.sks = sks;
		g.sks[g.nr_sks++] = r;
	}
	return 1;
}

static int dump_init(void)
{
	int ret = read_page(&g.gen);

	if (ret) {
		pr_info("no generation page next to %s (%s): nothing to record yet\n",
			g.sock, strerror(-ret));
		return 0;
	}
	g.have_gen = 1;
	pr_info("generation at checkpoint: %" PRIu32 "\n", g.gen);
	return write_record();
}

static int restore_init(void)
{
	struct genid_conn c;
	uint32_t min = 0;
	int ret;

	ret = read_record();
	if (ret < 0)
		return -1;
	if (ret == 0)
		pr_warn("no %s in the images (checkpoint taken without the plugin): bumping by one\n",
			RECORD_NAME);
	if (g.have_gen) {
		if (g.gen == UINT32_MAX) {
			pr_err("recorded generation %" PRIu32 " cannot be bumped past\n", g.gen);
			return -1;
		}
		min = g.gen + 1;
	}

	ret = genid_open(&c, g.sock);
	if (ret < 0) {
		if (g.best_effort) {
			fprintf(stderr, "genid: WARNING: genid daemon unreachable at %s: %s; "
				"restoring anyway (GENID_CRIU_BEST_EFFORT): processes are not told of this restore\n",
				g.sock, strerror(-ret));
			pr_warn("daemon unreachable at %s: %s; best effort: restoring anyway\n",
				g.sock, strerror(-ret));
			return 0;
		}
		fprintf(stderr, "genid: restore refused: genid daemon unreachable at %s: %s "
			"(start it, or set GENID_CRIU_BEST_EFFORT=1 to restore without it)\n",
			g.sock, strerror(-ret));
		pr_err("daemon unreachable at %s: %s\n", g.sock, strerror(-ret));
		return -1;
	}
	ret = genid_bump(&c, min, REASON, &g.restored_gen);
	genid_close(&c);
	if (ret) {
		const char *why = ret > 0 ? c.msg : strerror(-ret);

		fprintf(stderr, "genid: restore refused: bump at %s failed: %s\n", g.sock, why);
		pr_err("bump at %s failed: %s\n", g.sock, why);
		return -1;
	}
	g.daemon_ok = 1;
	pr_info("generation bumped to %" PRIu32 " (checkpoint had %s%" PRIu32 ")\n",
		g.restored_gen, g.have_gen ? "" : "none, ", g.gen);
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
	free(g.sks);
	g.sks = NULL;
	g.nr_sks = 0;
}

CR_PLUGIN_REGISTER("genid", genid_plugin_init, genid_plugin_exit)

/*
 * DUMP_UNIX_SK runs in the main criu process with a copy of the task's
 * socket. Only sockets whose peer is a genid daemon that knows them are
 * taken; anything else is left to CRIU (-ENOTSUP).
 */
static int genid_dump_unix_sk(int fd, int id)
{
	struct sockaddr_un addr;
	socklen_t len = sizeof(addr);
	struct sk_record r = { .ino = (uint32_t)id }, *sks;
	const char *base;
	struct genid_conn c;
	int ret, fl;

	memset(&addr, 0, sizeof(addr));
	if (getpeername(fd, (struct sockaddr *)&addr, &len) < 0 || addr.sun_family != AF_UNIX)
		return -ENOTSUP;
	if (len <= offsetof(struct sockaddr_un, sun_path) || addr.sun_path[0] == '\0')
		return -ENOTSUP;	/* unnamed or abstract peer */
	base = strrchr(addr.sun_path, '/');
	if (!base || strcmp(base + 1, GENID_SOCKET_NAME))
		return -ENOTSUP;

	/* The peer's bound path, as criu (in the daemon's mount namespace) sees it. */
	ret = genid_open(&c, addr.sun_path);
	if (ret < 0) {
		pr_err("socket %" PRIu32 " is connected to %s, which does not answer: %s\n",
		       r.ino, addr.sun_path, strerror(-ret));
		return -1;
	}
	ret = genid_query_peer(&c, r.ino, &r.flags, &r.acked);
	if (!ret && !g.have_gen && !genid_get(&c, &g.gen))
		g.have_gen = 1;
	genid_close(&c);
	if (ret == GENID_ST_NOT_FOUND)
		return -ENOTSUP;	/* a socket named genid.sock, but not ours */
	if (ret) {
		pr_err("query of socket %" PRIu32 " at %s failed: %s\n", r.ino, addr.sun_path,
		       ret > 0 ? c.msg : strerror(-ret));
		return -1;
	}

	fl = fcntl(fd, F_GETFL);
	r.nonblock = fl >= 0 && (fl & O_NONBLOCK);
	snprintf(r.path, sizeof(r.path), "%s", addr.sun_path);
	sks = realloc(g.sks, (g.nr_sks + 1) * sizeof(*sks));
	if (!sks)
		return -ENOMEM;
	g.sks = sks;
	g.sks[g.nr_sks++] = r;
	pr_info("socket %" PRIu32 ": %s, acked %" PRIu32 "\n", r.ino,
		r.flags & GENID_FLAG_WATCHER ? "watcher" : "client", r.acked);
	return write_record() ? -1 : 0;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__DUMP_UNIX_SK, genid_dump_unix_sk)

/* dead_socket stands in for a connection the daemon could not take. */
static int dead_socket(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	close(sv[1]);
	return sv[0];
}

/*
 * RESTORE_UNIX_SK runs inside the restoring task, in its namespaces: the
 * connection is made from there, so the daemon sees the task's pid. The
 * daemon's reply to attach is read here; the event that follows it (flag
 * "restored") is left for the task.
 */
static int genid_restore_unix_sk(int id)
{
	const char *paths[3];
	struct sk_record *r = NULL;
	struct genid_conn c;
	uint32_t gen;
	size_t i;
	int ret = -ENOENT, fd;

	for (i = 0; i < g.nr_sks; i++)
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
		ret = genid_open(&c, paths[i]);
		if (ret == 0)
			break;
	}
	if (ret < 0) {
		pr_err("socket %" PRIu32 ": cannot reach the daemon from the restored task: %s\n",
		       r->ino, strerror(-ret));
		if (g.best_effort)
			return dead_socket();
		return -1;
	}

	ret = genid_attach(&c, r->flags | GENID_FLAG_RESTORED, r->acked, &gen);
	if (ret) {
		pr_err("socket %" PRIu32 ": attach failed: %s\n", r->ino,
		       ret > 0 ? c.msg : strerror(-ret));
		genid_close(&c);
		return -1;
	}
	fd = c.fd;
	if (r->nonblock && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
		pr_err("socket %" PRIu32 ": O_NONBLOCK: %s\n", r->ino, strerror(errno));
		close(fd);
		return -1;
	}
	/* The task's fd was not close-on-exec unless CRIU restores it so. */
	fcntl(fd, F_SETFD, 0);
	pr_info("socket %" PRIu32 ": reattached as %s, acked %" PRIu32 ", generation %" PRIu32 "\n",
		r->ino, r->flags & GENID_FLAG_WATCHER ? "watcher" : "client", r->acked, gen);
	return fd;
}
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__RESTORE_UNIX_SK, genid_restore_unix_sk)
