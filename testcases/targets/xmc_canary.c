/* Cross-modifying-code canary: a user-space replica of the uprobes XOL-slot protocol.
 * Threads take turns on a few shared code slots: write a new instruction sequence through a
 * writable alias of a page, serialize with cpuid, execute it through an executable alias of
 * the same page, and check that the new code ran. Real hardware: never stale. QEMU 7.2
 * multi-threaded TCG: sometimes stale, and then distinct uprobes executed out of line
 * concurrently can fail for reasons that are not the kernel's.
 * usage: xmc_canary NTHREADS ITERS     prints: runs=<n> stale=<n>
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define SLOTS 4
#define SLOT_BYTES 64

static uint8_t *writable, *executable;
static int slot_lock[SLOTS];
static long iterations;
static uint64_t stale, runs;

static void serialize(void)
{
	unsigned a = 0, b, c = 0, d;
	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d)::"memory");
}

static void *worker(void *arg)
{
	long id = (long)arg;
	for (long i = 0; i < iterations; i++) {
		int slot = (int)((id + i) % SLOTS);
		while (__atomic_exchange_n(&slot_lock[slot], 1, __ATOMIC_ACQUIRE))
			;
		uint32_t value = (uint32_t)((id << 20) ^ i);
		uint8_t code[6] = {0xb8, 0, 0, 0, 0, 0xc3};   /* mov $value,%eax; ret */
		memcpy(code + 1, &value, 4);
		memcpy(writable + slot * SLOT_BYTES, code, sizeof(code));
		serialize();
		uint32_t (*fn)(void) = (uint32_t (*)(void))(executable + slot * SLOT_BYTES);
		uint32_t got = fn();
		__atomic_store_n(&slot_lock[slot], 0, __ATOMIC_RELEASE);
		__atomic_fetch_add(&runs, 1, __ATOMIC_RELAXED);
		if (got != value)
			__atomic_fetch_add(&stale, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long nthreads = argc > 1 ? atol(argv[1]) : 4;
	iterations = argc > 2 ? atol(argv[2]) : 20000;
	int fd = memfd_create("xmc", 0);
	if (fd < 0 || ftruncate(fd, 4096)) {
		perror("memfd");
		return 2;
	}
	writable = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	executable = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0);
	if (writable == MAP_FAILED || executable == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	pthread_t tids[256];
	if (nthreads < 1 || nthreads > 256)
		return 2;
	for (long t = 0; t < nthreads; t++)
		pthread_create(&tids[t], NULL, worker, (void *)t);
	for (long t = 0; t < nthreads; t++)
		pthread_join(tids[t], NULL);
	printf("runs=%llu stale=%llu\n", (unsigned long long)runs, (unsigned long long)stale);
	return 0;
}
