// SPDX-License-Identifier: MIT
/*
 * record_roundtrip - the CRIU plugin's reader and writer of the checkpoint
 * record on files, without libFuzzer (built by `make fuzz-c`, and for each
 * mutant by hack/mutants-c.sh), under AddressSanitizer and
 * UndefinedBehaviorSanitizer.
 *
 *	GENID_ROUNDTRIP_OUT=DIR record_roundtrip FILE...
 *
 * For each FILE: record_fuzz.c's checks of the reader (its aborts);
 * the restore's reading of it (read_record, from DIR as the images dir),
 * which must agree, and whose verdict it prints ("HASH accept", "HASH
 * reject: WHY", as record_fuzz with GENID_FUZZ_VERDICT); and if it
 * accepted the record, the dump's writing of it (write_record, with the
 * record's run dir as the plugin's), renamed to DIR/HASH (write_back).
 * Both are run again under faults injected in their read and write (see
 * enum fault), with fd 0 free. Then read_record on an images dir without
 * a record (images_cases). `seeds -roundtrip` compares the verdicts with
 * the Go reader's, and DIR/HASH with the Go writer's encoding of the same
 * record. hack/mutants-c.sh runs it on each mutant of the reader and
 * writer (docs/mutants.md).
 *
 * The plugin's run dir is a PATH_MAX buffer, one byte shorter than the
 * record's longest path: a record whose run dir does not fit it is read,
 * not written back (the plugin never has such a run dir to write).
 */
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

/*
 * The plugin's read and write are these, which inject faults (unistd.h is
 * included first, so its declarations keep their names).
 */
static ssize_t rt_read(int fd, void *buf, size_t n);
static ssize_t rt_write(int fd, const void *buf, size_t n);
#define read rt_read
#define write rt_write
#include "record_fuzz.c"
#undef read
#undef write

/*
 * What the plugin's next reads and writes do: as asked; every other one
 * fails with EINTR and the others do half of what was asked at most (the
 * loops must carry on); the second one fails (EIO reading, ENOSPC
 * writing); the second write writes nothing (a write that returns 0, with
 * a stale EINTR in errno); the file grows by a page before the second read
 * (which asks for what it has room for: the sanitizer sees the bytes read).
 * The first write, the header's, is never faulted.
 */
enum fault { FAULT_NONE, FAULT_SHORT, FAULT_ERROR, FAULT_ZERO, FAULT_GROW };
/* The failures are tried on records up to this size: the largest would take seconds each. */
#define FAULT_MAX	(1 << 20)
static int fault, fault_calls;

static ssize_t rt_read(int fd, void *buf, size_t n)
{
	int call = fault_calls++;

	if (fault == FAULT_SHORT && call % 2 == 0) {
		errno = EINTR;
		return -1;
	}
	if (fault == FAULT_ERROR && call == 1) {
		errno = EIO;
		return -1;
	}
	if (fault == FAULT_GROW && call == 1) {
		static const char page[4096];
		int a = openat(images_fd, RECORD_NAME, O_WRONLY | O_APPEND | O_CLOEXEC);

		if (a < 0 || write(a, page, sizeof(page)) != sizeof(page))
			abort();
		close(a);
		return read(fd, buf, n);
	}
	return read(fd, buf, fault == FAULT_NONE || n < 2 ? n : n / 2);
}

static ssize_t rt_write(int fd, const void *buf, size_t n)
{
	int call = fault_calls++;

	/* The header: one write of 16 bytes, which a regular file takes whole. */
	if (call == 0)
		return write(fd, buf, n);
	if (fault == FAULT_SHORT && call % 2 == 1) {
		errno = EINTR;
		return -1;
	}
	if (fault == FAULT_ERROR && call == 1) {
		errno = ENOSPC;
		return -1;
	}
	if (fault == FAULT_ZERO && call == 1) {
		errno = EINTR;
		return 0;
	}
	return write(fd, buf, fault == FAULT_NONE || n < 2 ? n : n / 2);
}

/* faulty runs fn with the faults f, and tells whether it logged what. */
static int faulty(int f, int (*fn)(void), int *rc, const char *what)
{
	fault = f;
	fault_calls = 0;
	last_log[0] = '\0';
	*rc = fn();
	fault = FAULT_NONE;
	return !what || strstr(last_log, what);
}

/* slurp reads a whole file into a malloc'ed buffer. */
static uint8_t *slurp(const char *path, size_t *size)
{
	uint8_t *buf = NULL, *n;
	size_t len = 0, cap = 0;
	ssize_t got;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return NULL;
	for (;;) {
		if (len == cap) {
			cap = cap ? 2 * cap : 65536;
			n = realloc(buf, cap);
			if (!n)
				break;
			buf = n;
		}
		got = read(fd, buf + len, cap - len);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			close(fd);
			if (got == 0) {
				*size = len;
				return buf;
			}
			break;
		}
		len += got;
	}
	close(fd);
	free(buf);
	return NULL;
}

/* put_images writes an input as the images dir's record. */
static int put_images(const uint8_t *data, size_t size)
{
	int fd = openat(images_fd, RECORD_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	size_t off = 0;
	ssize_t n;

	if (fd < 0)
		return -1;
	while (off < size) {
		n = write(fd, data + off, size - off);
		if (n <= 0) {
			close(fd);
			return -1;
		}
		off += n;
	}
	return close(fd);
}

/*
 * write_back writes the record read as a dump does, to DIR/name; then
 * again into a file that may not grow past half its size (RLIMIT_FSIZE),
 * which must fail and leave nothing behind. Before each, errno holds
 * EINTR: a stale errno must not change what it does. The first write
 * is made of short writes and EINTRs; the others (on records up to
 * FAULT_MAX) fail, and must say so.
 * Every write is bounded by RECORD_MAX (a writer that loops fails, it does
 * not fill the disk).
 */
static int write_back(const char *name)
{
	struct rlimit orig, lim;
	struct stat st;
	int rc;

	if (getrlimit(RLIMIT_FSIZE, &orig))
		return -1;
	lim = orig;
	lim.rlim_cur = RECORD_MAX;
	setrlimit(RLIMIT_FSIZE, &lim);
	errno = EINTR;
	faulty(FAULT_SHORT, write_record, &rc, NULL);
	setrlimit(RLIMIT_FSIZE, &orig);
	if (rc || renameat(images_fd, RECORD_NAME, images_fd, name) || fstatat(images_fd, name, &st, 0))
		return -1;
	if (st.st_size > FAULT_MAX)
		return 0;
	lim.rlim_cur = st.st_size / 2;
	if (setrlimit(RLIMIT_FSIZE, &lim))
		return -1;
	errno = EINTR;
	rc = write_record();
	setrlimit(RLIMIT_FSIZE, &orig);
	if (rc != -1 || !faccessat(images_fd, RECORD_NAME ".tmp", F_OK, 0) ||
	    !faccessat(images_fd, RECORD_NAME, F_OK, 0)) {
		fprintf(stderr, "record_roundtrip: a write cut short was taken\n");
		return -1;
	}
	/* A write that fails, or writes nothing: refused with its error, nothing left. */
	if (!faulty(FAULT_ERROR, write_record, &rc, strerror(ENOSPC)) || rc != -1 ||
	    !faulty(FAULT_ZERO, write_record, &rc, strerror(EIO)) || rc != -1 ||
	    !faccessat(images_fd, RECORD_NAME ".tmp", F_OK, 0) || !faccessat(images_fd, RECORD_NAME, F_OK, 0)) {
		fprintf(stderr, "record_roundtrip: a failed write was taken, or not told: %s\n", last_log);
		return -1;
	}
	return 0;
}

static int roundtrip(const char *path)
{
	const char *err;
	char name[32];
	uint8_t *data;
	size_t size = 0;
	int rc = 0, got, again, failed;

	data = slurp(path, &size);
	if (!data) {
		fprintf(stderr, "record_roundtrip: read %s: %s\n", path, strerror(errno));
		return -1;
	}
	snprintf(name, sizeof(name), "%016" PRIx64, fnv64a(data, size));
	/* parse_record does not bound the size: read_record does, before it reads. */
	err = size > RECORD_MAX ? "larger than RECORD_MAX" : check_record(data, size);
	if (put_images(data, size)) {
		fprintf(stderr, "record_roundtrip: write %s: %s\n", RECORD_NAME, strerror(errno));
		free(data);
		return -1;
	}
	/*
	 * The restore's reader: after a stale errno of those it tests; on a
	 * read error, and on a file that grows as it is read (from a second
	 * read: an empty record needs one), which it must refuse, and say;
	 * with short reads and EINTRs, which change nothing. Records larger
	 * than FAULT_MAX are read once, with short reads. It logs why it
	 * refused on stderr: seeds shows it on failure only.
	 */
	got = again = -2;
	if (size <= FAULT_MAX) {
		errno = ENOENT;
		got = read_record();
		free_record();
		errno = EINTR;
		again = read_record();
		free_record();
	}
	if (size > 0 && size <= FAULT_MAX &&
	    (!faulty(FAULT_ERROR, read_record, &failed, strerror(EIO)) || failed != -1)) {
		fprintf(stderr, "record_roundtrip: %s: a read error was taken, or not told: %s\n", path, last_log);
		abort();
	}
	free_record();
	if (size > 0 && size <= FAULT_MAX &&
	    ((!faulty(FAULT_GROW, read_record, &failed, "it grew") || failed != -1) || put_images(data, size))) {
		fprintf(stderr, "record_roundtrip: %s: a record that grew was taken, or not told: %s\n", path, last_log);
		abort();
	}
	free_record();
	faulty(FAULT_SHORT, read_record, &rc, NULL);
	if (size > FAULT_MAX)
		got = again = rc;
	if (again != got || rc != got || (got == 1) != !err) {
		fprintf(stderr, "record_roundtrip: %s: read_record and parse_record disagree\n", path);
		abort();
	}
	printf("%s %s%s\n", name, err ? "reject: " : "accept", err ? err : "");
	fflush(stdout);
	/* The record read last, written back, if the plugin could have a run dir that long. */
	rc = 0;
	if (!err && strlen(g.rec_rundir) < sizeof(g.rundir)) {
		strcpy(g.rundir, g.rec_rundir);
		if (write_back(name)) {
			fprintf(stderr, "record_roundtrip: %s: the record read could not be written back\n", path);
			rc = -1;
		}
	}
	free_record();
	free(data);
	return rc;
}

/*
 * images_cases: read_record on what an images dir may hold besides a
 * record: nothing (0: a checkpoint without genid), the record of genid
 * before scopes (refused), a directory, a symlink or a FIFO in its place
 * (refused).
 */
static int images_cases(void)
{
	int fd, ok = 1;

	unlinkat(images_fd, RECORD_NAME, 0);
	errno = EPERM;
	ok &= read_record() == 0;
	fd = openat(images_fd, OLD_RECORD_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd >= 0)
		close(fd);
	errno = ENOENT;
	ok &= fd >= 0 && read_record() == -1;
	unlinkat(images_fd, OLD_RECORD_NAME, 0);
	ok &= !mkdirat(images_fd, RECORD_NAME, 0755) && read_record() == -1;
	unlinkat(images_fd, RECORD_NAME, AT_REMOVEDIR);
	ok &= !symlinkat(OLD_RECORD_NAME, images_fd, RECORD_NAME) && read_record() == -1;
	unlinkat(images_fd, RECORD_NAME, 0);
	/* A FIFO whose writer writes nothing: refused, not waited on (SIGALRM ends a wait). */
	ok &= !mkfifoat(images_fd, RECORD_NAME, 0644);
	fd = openat(images_fd, RECORD_NAME, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	alarm(5);
	ok &= fd >= 0 && read_record() == -1;
	alarm(0);
	if (fd >= 0)
		close(fd);
	unlinkat(images_fd, RECORD_NAME, 0);
	if (!ok)
		fprintf(stderr, "record_roundtrip: read_record misjudged an images dir without a record\n");
	return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
	const char *out = getenv("GENID_ROUNDTRIP_OUT");
	int i;

	if (!out || argc < 2) {
		fprintf(stderr, "usage: GENID_ROUNDTRIP_OUT=DIR record_roundtrip FILE...\n");
		return 2;
	}
	images_fd = open(out, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (images_fd < 0) {
		fprintf(stderr, "record_roundtrip: %s: %s\n", out, strerror(errno));
		return 1;
	}
	/* A write past RLIMIT_FSIZE fails with EFBIG, not the signal. */
	signal(SIGXFSZ, SIG_IGN);
	/* fd 0 free, as in a criu started without stdin: the plugin's files may get it. */
	close(0);
	for (i = 1; i < argc; i++)
		if (roundtrip(argv[i]))
			return 1;
	if (images_cases())
		return 1;
	unlinkat(images_fd, RECORD_NAME, 0);
	close(images_fd);
	return 0;
}
