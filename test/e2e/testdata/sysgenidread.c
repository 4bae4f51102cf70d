// SPDX-License-Identifier: MIT
/*
 * sysgenidread - reads a sysgenid page (/dev/sysgenid, the sysgenid
 * proposal's generation counter, which genid serves) the way AWS-LC's
 * snapsafe detection (crypto/fipsmodule/rand/snapsafe_detect.c) does:
 *
 *   - at start: stat the path (absent: snapsafe not supported), open it
 *     read-only, map sizeof(uint32_t) of it PROT_READ and MAP_SHARED, close
 *     the fd;
 *   - each reading: one load of the volatile u32 at offset 0.
 *
 * sysgenidread PATH        prints "generation N"
 * sysgenidread PATH watch  prints N at start and each time it changes,
 *                          checking every 20 ms, for ever
 *
 * Exit 1 (with a message) if the page cannot be mapped.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static volatile uint32_t *map_sysgenid(const char *path)
{
	struct stat st;
	void *addr;
	int fd;

	if (stat(path, &st)) {
		perror(path);
		return NULL;
	}
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		perror(path);
		return NULL;
	}
	addr = mmap(NULL, sizeof(uint32_t), PROT_READ, MAP_SHARED, fd, 0);
	close(fd);
	if (addr == MAP_FAILED) {
		perror("mmap");
		return NULL;
	}
	return addr;
}

int main(int argc, char **argv)
{
	const struct timespec pause = { .tv_nsec = 20 * 1000 * 1000 };
	volatile uint32_t *gen;
	int64_t last = -1;

	if (argc < 2 || (argc == 3 && strcmp(argv[2], "watch")) || argc > 3) {
		fprintf(stderr, "usage: sysgenidread PATH [watch]\n");
		return 2;
	}
	gen = map_sysgenid(argv[1]);
	if (!gen)
		return 1;
	if (argc == 2) {
		printf("generation %" PRIu32 "\n", *gen);
		return 0;
	}
	for (;;) {
		uint32_t g = *gen;

		if (g != last) {
			printf("%" PRIu32 "\n", g);
			fflush(stdout);
			last = g;
		}
		nanosleep(&pause, NULL);
	}
}
