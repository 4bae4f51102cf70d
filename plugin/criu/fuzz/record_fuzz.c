// SPDX-License-Identifier: MIT
/*
 * record_fuzz - a libFuzzer harness on the CRIU plugin's reader of the
 * checkpoint record (parse_record in ../genid-criu.c, included whole), run
 * under AddressSanitizer and UndefinedBehaviorSanitizer by `make fuzz`,
 * which builds it with CRIU's plugin header (from the test bed if this host
 * lacks it) and seeds it with records the Go writer made (seeds/).
 *
 * A record the reader accepts must hold what the restore relies on: it was
 * consumed whole, every name is a scope's name, every socket's scope is
 * listed. With GENID_FUZZ_VERDICT set, it prints "HASH accept" or "HASH
 * reject: WHY" for each input (HASH: its FNV-1a, 64 bits, in hex): seeds/
 * compares that with the Go reader's verdict. record_roundtrip.c runs the
 * same checks without libFuzzer, and the writer on what the reader took.
 */
#include "../genid-criu.c"

/* The images dir: none for the reader; record_roundtrip.c opens one. */
static int images_fd = -1;

/* What CRIU's binary gives a plugin. */
int criu_get_image_dir(void)
{
	return images_fd;
}

/* The plugin's last log line: record_roundtrip.c checks what an I/O error says. */
static char last_log[512];

void print_on_level(unsigned int loglevel, const char *format, ...)
{
	va_list ap;

	va_start(ap, format);
	vsnprintf(last_log, sizeof(last_log), format, ap);
	va_end(ap);
}

static int verdict;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	verdict = getenv("GENID_FUZZ_VERDICT") != NULL;
	return 0;
}

static int name_ok(const char *s)
{
	const char *c;

	if (strlen(s) > GENID_MAX_NAME || *s == '.' || *s == '-')
		return 0;
	for (c = s; *c; c++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", *c))
			return 0;
	return 1;
}

/* fnv64a names an input in the verdicts (seeds/ hashes the same). */
static uint64_t fnv64a(const uint8_t *data, size_t size)
{
	uint64_t h = 14695981039346656037ULL;
	size_t i;

	for (i = 0; i < size; i++)
		h = (h ^ data[i]) * 1099511628211ULL;
	return h;
}

/*
 * check_record runs the reader on one input and aborts where what it
 * accepted breaks what the restore relies on; it returns the reader's
 * error, or NULL if it accepted the input.
 */
static const char *check_record(const uint8_t *data, size_t size)
{
	struct rbuf r = { .p = data, .end = data + size };
	size_t i, j;

	if (size == 0)
		r.err = "empty";	/* as read_record has it */
	else
		parse_record(&r);
	if (verdict) {
		printf("%016" PRIx64 " %s%s\n", fnv64a(data, size), r.err ? "reject: " : "accept",
		       r.err ? r.err : "");
		fflush(stdout);
	}
	if (!r.err) {
		if (r.p != r.end)
			abort();
		for (i = 0; i < g.nr_scopes; i++) {
			if (!name_ok(g.scopes[i].name) || (!g.scopes[i].have_gen && g.scopes[i].gen))
				abort();
			for (j = 0; j < g.nr_scopes; j++)
				if (i != j && !strcmp(g.scopes[i].name, g.scopes[j].name))
					abort();
		}
		for (i = 0; i < g.nr_sks; i++)
			if (!name_ok(g.sks[i].scope) || !find_scope(g.sks[i].scope))
				abort();
	}
	free_record();
	return r.err;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	check_record(data, size);
	return 0;
}
