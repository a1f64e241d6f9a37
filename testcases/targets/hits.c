/* Multithreaded hits: N threads call one probed site ITERS times each, released together by a
 * barrier. The program counts its own calls atomically and checks every result, so the
 * harness compares the kernel's hit counts with an oracle the kernel cannot influence. Every call
 * also checks that the probe left all other general-purpose registers alone (call_checked).
 *
 * usage: hits SITE NTHREADS ITERS [SECONDS]   SITE = push | mov | riprel | ret | nop10
 *        (with SECONDS, each thread also stops at that deadline: a fixed-length run; with
 *        HITS_STOP_FILE=PATH in the environment, also as soon as PATH exists)
 * prints: calls=<total> bad=<wrong results> threads=<n>
 *        With HITS_EXIT_TOGETHER=1 in the environment, the threads also wait for each other
 *        after their last call, so no thread exits while a sibling still calls the site (a
 *        control for hit losses that depend on threads outliving their siblings).
 *
 *        hits peek SITE SECONDS [STOPFILE]   one thread calls SITE for SECONDS (or until
 *        STOPFILE exists, checked every 1024 calls) and reads the site's
 *        first code byte before every call: whether a breakpoint was ever written into
 *        this process (a consumer's filter must keep it out of processes it does not follow)
 * prints: calls=<n> int3_seen=<reads that saw 0xcc> first=<the byte last read>
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern long site_push(long);
extern long site_mov(long);
extern long site_riprel(long);
extern long site_ret(long);
extern long site_nop10(long);
extern long call_checked(long (*site)(long), long in, long *regs_ok);

static long (*site)(long);
static long expected_kind;       /* 0: returns arg (mov), 1: arg+1 (ret), 2: constant, 3: any */
static long iterations;
static double deadline;            /* CLOCK_MONOTONIC seconds; 0: none */
static const char *stop_file;      /* stop once it exists; NULL: none */
static pthread_barrier_t start_line;
static pthread_barrier_t finish_line; /* only with HITS_EXIT_TOGETHER=1 */
static int exit_together;
static uint64_t calls;
static uint64_t bad;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
	long id = (long)arg;
	pthread_barrier_wait(&start_line);
	for (long i = 0; i < iterations; i++) {
		if ((i & 255) == 0 && ((deadline && now() > deadline) ||
				       (stop_file && access(stop_file, F_OK) == 0)))
			break;
		long in = id * 1000003 + i;
		long regs_ok = 0;
		long out = call_checked(site, in, &regs_ok);
		long want = expected_kind == 0 ? in : expected_kind == 1 ? in + 1 : 0x1122334455667788;
		__atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
		if ((expected_kind != 3 && out != want) || !regs_ok)
			__atomic_fetch_add(&bad, 1, __ATOMIC_RELAXED);
	}
	if (exit_together)
		pthread_barrier_wait(&finish_line);
	return NULL;
}

static long (*site_named(const char *name))(long)
{
	if (!strcmp(name, "push")) return site_push;
	if (!strcmp(name, "mov")) return site_mov;
	if (!strcmp(name, "riprel")) return site_riprel;
	if (!strcmp(name, "ret")) return site_ret;
	if (!strcmp(name, "nop10")) return site_nop10;
	return NULL;
}

static int peek(const char *name, double seconds, const char *stop)
{
	long (*fn)(long) = site_named(name);
	if (!fn) {
		fprintf(stderr, "unknown site %s\n", name);
		return 2;
	}
	unsigned long long n = 0, seen = 0;
	unsigned char first = 0;
	double end = now() + seconds;
	while (now() < end) {
		if (stop && (n & 1023) == 0 && access(stop, F_OK) == 0)
			break;
		first = *(volatile unsigned char *)fn;
		seen += first == 0xcc;
		long regs_ok = 0;
		call_checked(fn, (long)n, &regs_ok);
		n++;
	}
	printf("calls=%llu int3_seen=%llu first=0x%02x\n", n, seen, first);
	return 0;
}

int main(int argc, char **argv)
{
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "peek"))
		return peek(argv[2], atof(argv[3]), argc == 5 ? argv[4] : NULL);
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: %s push|mov|riprel|ret|nop10 NTHREADS ITERS [SECONDS]\n",
			argv[0]);
		return 2;
	}
	if (!strcmp(argv[1], "push")) { site = site_push; expected_kind = 3; }
	else if (!strcmp(argv[1], "mov")) { site = site_mov; expected_kind = 0; }
	else if (!strcmp(argv[1], "riprel")) { site = site_riprel; expected_kind = 2; }
	else if (!strcmp(argv[1], "ret")) { site = site_ret; expected_kind = 1; }
	else if (!strcmp(argv[1], "nop10")) { site = site_nop10; expected_kind = 1; }
	else { fprintf(stderr, "unknown site %s\n", argv[1]); return 2; }
	long nthreads = atol(argv[2]);
	iterations = atol(argv[3]);
	if (nthreads < 1 || nthreads > 1024 || iterations < 0) {
		fprintf(stderr, "bad thread count or iterations\n");
		return 2;
	}
	if (argc == 5)
		deadline = now() + atof(argv[4]);
	stop_file = getenv("HITS_STOP_FILE");
	pthread_t *tids = calloc(nthreads, sizeof(*tids));
	pthread_barrier_init(&start_line, NULL, nthreads);
	const char *together = getenv("HITS_EXIT_TOGETHER");
	exit_together = together && !strcmp(together, "1");
	pthread_barrier_init(&finish_line, NULL, nthreads);
	for (long t = 0; t < nthreads; t++)
		if (pthread_create(&tids[t], NULL, worker, (void *)t)) {
			perror("pthread_create");
			return 2;
		}
	for (long t = 0; t < nthreads; t++)
		pthread_join(tids[t], NULL);
	printf("calls=%llu bad=%llu threads=%ld\n", (unsigned long long)calls,
	       (unsigned long long)bad, nthreads);
	return bad ? 1 : 0;
}
