// SPDX-License-Identifier: MIT
/*
 * vmclockread - reads a VMClock page (Linux's /dev/vmclock0, struct
 * vmclock_abi of include/uapi/linux/vmclock-abi.h) the way the kernel header
 * and AWS-LC's reader (aws-lc PR 3418, crypto/ube/vm_ube_detect.c) do:
 *
 *   - at start: stat the path, open it read-only, map the structure
 *     PROT_READ and MAP_SHARED, close the fd; refuse the page unless its
 *     magic is VMCLOCK_MAGIC, its size covers vm_generation_counter and
 *     VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT is set;
 *   - each reading: seq_count with its low bit cleared, an acquire fence,
 *     vm_generation_counter, an acquire fence, seq_count again; the reading
 *     counts only if seq_count did not change (an odd one never matches), and
 *     gives up after MAX_TRIES.
 *
 * vmclockread PATH        prints the page's header, its counter, and what
 *                         poll() on a new fd of PATH reports at once:
 *                         "magic=0x4b4c4356 size=4096 version=1 flags=0x100
 *                         counter=N poll=0x5"
 * vmclockread PATH watch  prints "counter N" at start and each time the
 *                         counter changes, checking every 20 ms, for ever
 *
 * Exit 1 (with a message) if the page is refused or cannot be read.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if __has_include(<linux/vmclock-abi.h>)
#include <linux/vmclock-abi.h>
#else
/* The kernel's uapi header (Linux 6.13+), where the system lacks it. */
struct vmclock_abi {
	uint32_t magic;
	uint32_t size;
	uint16_t version;
	uint8_t counter_id;
	uint8_t time_type;
	uint32_t seq_count;
	uint64_t disruption_marker;
	uint64_t flags;
	uint8_t pad[2];
	uint8_t clock_status;
	uint8_t leap_second_smearing_hint;
	uint16_t tai_offset_sec;
	uint8_t leap_indicator;
	uint8_t counter_period_shift;
	uint64_t counter_value;
	uint64_t counter_period_frac_sec;
	uint64_t counter_period_esterror_rate_frac_sec;
	uint64_t counter_period_maxerror_rate_frac_sec;
	uint64_t time_sec;
	uint64_t time_frac_sec;
	uint64_t time_esterror_nanosec;
	uint64_t time_maxerror_nanosec;
	uint64_t vm_generation_counter;
};
#define VMCLOCK_MAGIC 0x4b4c4356
#define VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT (1 << 8)
#endif

_Static_assert(offsetof(struct vmclock_abi, seq_count) == 12, "seq_count");
_Static_assert(offsetof(struct vmclock_abi, flags) == 24, "flags");
_Static_assert(offsetof(struct vmclock_abi, vm_generation_counter) == 104, "vm_generation_counter");

#define MAX_TRIES 1024

static int read_counter(volatile struct vmclock_abi *v, uint64_t *out)
{
	uint32_t seq;
	uint64_t gen;
	int i;

	for (i = 0; i < MAX_TRIES; i++) {
		seq = le32toh(v->seq_count) & ~1u;
		atomic_thread_fence(memory_order_acquire);
		gen = le64toh(v->vm_generation_counter);
		atomic_thread_fence(memory_order_acquire);
		if (le32toh(v->seq_count) == seq) {
			*out = gen;
			return 0;
		}
	}
	return -1;
}

int main(int argc, char **argv)
{
	const struct timespec tick = { 0, 20 * 1000 * 1000 };
	volatile struct vmclock_abi *v;
	struct pollfd pfd;
	uint64_t gen, last;
	struct stat st;
	void *addr;
	int fd;

	if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "watch"))) {
		fprintf(stderr, "usage: vmclockread PATH [watch]\n");
		return 2;
	}
	if (stat(argv[1], &st) || (fd = open(argv[1], O_RDONLY | O_CLOEXEC)) < 0) {
		fprintf(stderr, "%s: %m\n", argv[1]);
		return 1;
	}
	addr = mmap(NULL, sizeof(struct vmclock_abi), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (addr == MAP_FAILED) {
		fprintf(stderr, "mmap %s: %m\n", argv[1]);
		return 1;
	}
	v = addr;
	if (le32toh(v->magic) != VMCLOCK_MAGIC) {
		fprintf(stderr, "%s: magic %#" PRIx32 ": not a VMClock page\n", argv[1], le32toh(v->magic));
		return 1;
	}
	if (le32toh(v->size) < offsetof(struct vmclock_abi, vm_generation_counter) + sizeof(v->vm_generation_counter) ||
	    !(le64toh(v->flags) & VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT)) {
		fprintf(stderr, "%s: size %" PRIu32 ", flags %#" PRIx64 ": no VM generation counter\n", argv[1],
			le32toh(v->size), le64toh(v->flags));
		return 1;
	}
	if (read_counter(v, &gen)) {
		fprintf(stderr, "%s: seq_count never still in %d tries\n", argv[1], MAX_TRIES);
		return 1;
	}

	if (argc == 2) {
		/* What a reader that waits in poll() would get. */
		pfd.fd = open(argv[1], O_RDONLY | O_CLOEXEC);
		pfd.events = POLLIN;
		pfd.revents = 0;
		if (pfd.fd < 0 || poll(&pfd, 1, 0) < 0) {
			fprintf(stderr, "poll %s: %m\n", argv[1]);
			return 1;
		}
		close(pfd.fd);
		printf("magic=%#" PRIx32 " size=%" PRIu32 " version=%u flags=%#" PRIx64 " counter=%" PRIu64 " poll=%#x\n",
		       le32toh(v->magic), le32toh(v->size), le16toh(v->version), le64toh(v->flags), gen,
		       (unsigned int)pfd.revents);
		return 0;
	}

	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("counter %" PRIu64 "\n", gen);
	for (last = gen;; nanosleep(&tick, NULL)) {
		if (read_counter(v, &gen)) {
			fprintf(stderr, "%s: seq_count never still in %d tries\n", argv[1], MAX_TRIES);
			return 1;
		}
		if (gen != last)
			printf("counter %" PRIu64 "\n", gen);
		last = gen;
	}
}
