/* Optimized uprobes: the probed program checks itself.
 *
 * usage: opt state NTHREADS ITERS   every thread calls site_opt ITERS times through run_site
 *                                   (opt_sites.S) and compares the whole state after the call
 *                                   with the state before it
 *        opt pause NCALLS            calls site_opt NCALLS times, prints the site's bytes, then
 *                                   waits for SIGUSR1 (the harness removes the probe) and
 *                                   prints them again
 *        opt sys                     makes syscall 336 (uprobe) from ordinary code
 *        opt time SITE N             ns per call of one site (bench_probe_cost.py): plain, nop10,
 *                                    nop10_split, push, mov, riprel, ret
 * prints key=value words: calls, gpr_bad, flags_bad, xmm_bad, redzone_bad, below_bad (the
 * 32 bytes under the 128-byte red zone), site=<10 bytes hex> (detached=... after SIGUSR1),
 * <label>_tramp=<[uprobes-trampoline] if the site holds a call>, <label>_call_target=<in|out|
 * none> (whether that call lands in the trampoline mapping), sys336=<ret> errno=<n>.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 160
#define REDZONE 128

struct opt_ctx {                       /* offsets: OFF_* in opt_sites.S */
	uint64_t gpr_in[16];           /* 0x000 rax rbx rcx rdx rsi rdi rbp r8-r14 ([0..13]) */
	uint64_t flags_in;             /* 0x080 */
	uint64_t site;                 /* 0x088 */
	uint8_t xmm_in[16][16];        /* 0x090 */
	uint64_t gpr_out[16];          /* 0x190 (r15 at [15]) */
	uint64_t flags_out;            /* 0x210 */
	uint64_t fill;                 /* 0x218 (low byte) */
	uint8_t xmm_out[16][16];       /* 0x220 */
	uint8_t stack_out[WINDOW];     /* 0x320 */
};
_Static_assert(__builtin_offsetof(struct opt_ctx, stack_out) == 0x320, "layout");
_Static_assert(__builtin_offsetof(struct opt_ctx, fill) == 0x218, "layout");

extern void site_opt(void);
extern void run_site(struct opt_ctx *ctx);

/* flags the program sets before the call: CF PF AF ZF SF OF in different mixes (no TF,
 * DF or AC); IF and the reserved bit 1 are always set */
static const uint64_t FLAGS[] = {0x202, 0x203, 0x206, 0x212, 0x242, 0x282, 0xa02, 0xad7};

static long iterations;
static uint64_t calls, gpr_bad, flags_bad, xmm_bad, redzone_bad, below_bad;
static pthread_barrier_t start_line;

static void *worker(void *arg)
{
	long id = (long)arg;
	struct opt_ctx *ctx = aligned_alloc(64, sizeof(*ctx));

	pthread_barrier_wait(&start_line);
	for (long i = 0; i < iterations; i++) {
		memset(ctx, 0, sizeof(*ctx));
		for (int r = 0; r < 14; r++)
			ctx->gpr_in[r] = ((uint64_t)id << 48) ^ ((uint64_t)i << 8) ^
					 (0x0101010101010101ull * (r + 1));
		ctx->flags_in = FLAGS[(i + id) % 8];
		ctx->site = (uint64_t)site_opt;
		for (int x = 0; x < 16; x++)
			for (int b = 0; b < 16; b++)
				ctx->xmm_in[x][b] = (uint8_t)(x * 16 + b + i + id);
		ctx->fill = (uint8_t)((i * 7 + id) | 1);
		run_site(ctx);

		__atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
		int gpr = ctx->gpr_out[15] != (uint64_t)ctx;
		for (int r = 0; r < 14; r++)
			gpr |= ctx->gpr_out[r] != ctx->gpr_in[r];
		if (gpr)
			__atomic_fetch_add(&gpr_bad, 1, __ATOMIC_RELAXED);
		if ((ctx->flags_out & 0xcd5) != (ctx->flags_in & 0xcd5))   /* arith + DF + IF */
			__atomic_fetch_add(&flags_bad, 1, __ATOMIC_RELAXED);
		if (memcmp(ctx->xmm_out, ctx->xmm_in, sizeof(ctx->xmm_in)))
			__atomic_fetch_add(&xmm_bad, 1, __ATOMIC_RELAXED);
		int red = 0, below = 0;
		for (int b = 0; b < WINDOW; b++) {
			int differs = ctx->stack_out[b] != (uint8_t)ctx->fill;
			if (b >= WINDOW - REDZONE)
				red |= differs;
			else
				below |= differs;
		}
		if (red)
			__atomic_fetch_add(&redzone_bad, 1, __ATOMIC_RELAXED);
		if (below)
			__atomic_fetch_add(&below_bad, 1, __ATOMIC_RELAXED);
	}
	free(ctx);
	return NULL;
}

static void print_site(const char *label)
{
	const uint8_t *p = (const uint8_t *)site_opt;
	printf("%s=", label);
	for (int i = 0; i < 10; i++)
		printf("%02x", p[i]);
	printf(" ");
}

/* Whether the site is `lea -0x80(%rsp),%rsp; call rel32` (or, after the probe is gone, the
 * nop10 that keeps the call's rel32 in its last five bytes), and if so whether the call's
 * target lies in a mapping named [uprobes-trampoline]. Also the name of that mapping. */
static void print_trampoline(const char *label)
{
	const uint8_t *p = (const uint8_t *)site_opt;
	int32_t rel;
	memcpy(&rel, p + 6, 4);
	uint64_t target = (uint64_t)p + 10 + rel;
	int has_call = p[5] == 0xe8;
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512], name[128] = "none";
	int inside = 0;
	while (maps && fgets(line, sizeof(line), maps)) {
		if (!strstr(line, "uprobes-trampoline"))
			continue;
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && target >= lo && target < hi)
			inside = 1;
		snprintf(name, sizeof(name), "%s", "[uprobes-trampoline]");
	}
	if (maps)
		fclose(maps);
	printf("%s_tramp=%s %s_call_target=%s ", label, has_call ? name : "none", label,
	       !has_call ? "none" : inside ? "in" : "out");
}

extern void site_opt_split(void);
extern long site_push(long), site_mov(long), site_riprel(long), site_ret(long);

static long call_plain(long in) { return in; }

/* opt time SITE N: nanoseconds per call of one site (N calls after 1,000 warm-up calls) */
static int time_site(const char *name, long n)
{
	static const struct { const char *name; long (*fn)(long); } sites[] = {
		{"plain", call_plain},
		{"nop10", (long (*)(long))site_opt},
		{"nop10_split", (long (*)(long))site_opt_split},
		{"push", site_push}, {"mov", site_mov}, {"riprel", site_riprel},
		{"ret", site_ret},
	};
	long (*volatile fn)(long) = NULL;
	for (unsigned i = 0; i < sizeof(sites) / sizeof(sites[0]); i++)
		if (!strcmp(sites[i].name, name))
			fn = sites[i].fn;
	if (!fn || n < 1) {
		fprintf(stderr, "opt time: unknown site %s or bad count\n", name);
		return 2;
	}
	for (long i = 0; i < 1000; i++)
		fn(i);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		fn(i);
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
	printf("site=%s calls=%ld ns_per_call=%.1f\n", name, n, ns / n);
	return 0;
}

static volatile sig_atomic_t go_on;
static void on_usr1(int sig) { (void)sig; go_on = 1; }

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "sys")) {
		errno = 0;
		long ret = syscall(336);
		printf("sys336=%ld errno=%d\n", ret, errno);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "time"))
		return time_site(argv[2], atol(argv[3]));
	if (argc == 3 && !strcmp(argv[1], "pause")) {
		signal(SIGUSR1, on_usr1);
		long n = atol(argv[2]);
		for (long i = 0; i < n; i++)
			site_opt();
		print_site("site");
		print_trampoline("site");
		printf("\n");
		fflush(stdout);
		while (!go_on)
			pause();
		print_site("detached");
		print_trampoline("detached");
		printf("\n");
		return 0;
	}
	if (argc != 4 || strcmp(argv[1], "state")) {
		fprintf(stderr, "usage: %s state NTHREADS ITERS | pause NCALLS | sys\n", argv[0]);
		return 2;
	}
	long nthreads = atol(argv[2]);
	iterations = atol(argv[3]);
	if (nthreads < 1 || nthreads > 256 || iterations < 1) {
		fprintf(stderr, "bad thread count or iterations\n");
		return 2;
	}
	pthread_t tids[256];
	pthread_barrier_init(&start_line, NULL, nthreads);
	for (long t = 0; t < nthreads; t++)
		if (pthread_create(&tids[t], NULL, worker, (void *)t)) {
			perror("pthread_create");
			return 2;
		}
	for (long t = 0; t < nthreads; t++)
		pthread_join(tids[t], NULL);
	printf("calls=%llu gpr_bad=%llu flags_bad=%llu xmm_bad=%llu redzone_bad=%llu "
	       "below_bad=%llu ", (unsigned long long)calls, (unsigned long long)gpr_bad,
	       (unsigned long long)flags_bad, (unsigned long long)xmm_bad,
	       (unsigned long long)redzone_bad, (unsigned long long)below_bad);
	print_site("site");
	print_trampoline("site");
	printf("\n");
	return 0;
}
