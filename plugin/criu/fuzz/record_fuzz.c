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
 * compares that with the Go reader's verdict.
 */
#include "../genid-criu.c"

/* What CRIU's binary gives a plugin: not reached by the reader. */
int criu_get_image_dir(void)
{
	return -1;
}

void print_on_level(unsigned int loglevel, const char *format, ...)
{
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct rbuf r = { .p = data, .end = data + size };
	size_t i, j;

	if (size == 0)
		r.err = "empty";	/* as read_record has it */
	else
		parse_record(&r);
	if (verdict) {
		uint64_t h = 14695981039346656037ULL;

		for (i = 0; i < size; i++)
			h = (h ^ data[i]) * 1099511628211ULL;
		printf("%016" PRIx64 " %s%s\n", h, r.err ? "reject: " : "accept", r.err ? r.err : "");
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
	return 0;
}
