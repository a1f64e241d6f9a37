#define _GNU_SOURCE
/* Optimized uprobes: the probed program checks itself.
 *
 * usage: opt state NTHREADS ITERS [prof]
 *                                   every thread calls site_opt ITERS times through run_site
 *                                   (opt_sites.S) and compares the whole state after the call
 *                                   with the state before it
 *        opt pause NCALLS            calls site_opt NCALLS times, prints the site's bytes, then
 *                                   waits for SIGUSR1 (the harness removes the probe) and
 *                                   prints them again
 *                                   (prof: under a SIGPROF sampler, see on_prof)
 *        opt sys                     makes syscall 336 (uprobe) from ordinary code
 *        opt time SITE N             ns per call of one site (bench_probe_cost.py): plain, nop10,
 *                                    nop10_split, push, mov, riprel, ret
 *        opt reach|sud|seccomp|fork|stepped|calls ...   see opt_env.c
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
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#include "opt.h"

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

static void fill_ctx(struct opt_ctx *ctx, long id, long i, uint64_t site)
{
	memset(ctx, 0, sizeof(*ctx));
	for (int r = 0; r < 14; r++)
		ctx->gpr_in[r] = ((uint64_t)id << 48) ^ ((uint64_t)i << 8) ^
				 (0x0101010101010101ull * (r + 1));
	ctx->flags_in = FLAGS[(i + id) % 8];
	ctx->site = site;
	for (int x = 0; x < 16; x++)
		for (int b = 0; b < 16; b++)
			ctx->xmm_in[x][b] = (uint8_t)(x * 16 + b + i + id);
	ctx->fill = (uint8_t)((i * 7 + id) | 1);
}

enum { BAD_GPR = 1, BAD_FLAGS = 2, BAD_XMM = 4, BAD_REDZONE = 8, BAD_BELOW = 16 };

static int compare_ctx(const struct opt_ctx *ctx)
{
	int bad = 0;
	int gpr = ctx->gpr_out[15] != (uint64_t)ctx;
	for (int r = 0; r < 14; r++)
		gpr |= ctx->gpr_out[r] != ctx->gpr_in[r];
	if (gpr)
		bad |= BAD_GPR;
	if ((ctx->flags_out & 0xcd5) != (ctx->flags_in & 0xcd5))   /* arith + DF + IF */
		bad |= BAD_FLAGS;
	if (memcmp(ctx->xmm_out, ctx->xmm_in, sizeof(ctx->xmm_in)))
		bad |= BAD_XMM;
	for (int b = 0; b < WINDOW; b++)
		if (ctx->stack_out[b] != (uint8_t)ctx->fill)
			bad |= b >= WINDOW - REDZONE ? BAD_REDZONE : BAD_BELOW;
	return bad;
}

static const char *const GPR_NAMES[16] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "-", "r15"};

int opt_check_site_once(uint64_t site)
{
	struct opt_ctx *ctx = aligned_alloc(64, sizeof(*ctx));
	fill_ctx(ctx, 1, 1, site);
	run_site(ctx);
	int bad = compare_ctx(ctx) & ~BAD_BELOW;     /* the optimized path writes below */
	/* say what changed: child_bad=<mask> (1 gpr, 2 flags, 4 xmm, 8 red zone), each
	   changed register as in/out, each changed red-zone byte */
	printf("child_bad=%d ", bad);
	for (int r = 0; r < 14; r++)
		if (ctx->gpr_out[r] != ctx->gpr_in[r])
			printf("%s=%#llx/%#llx ", GPR_NAMES[r], (unsigned long long)ctx->gpr_in[r],
			       (unsigned long long)ctx->gpr_out[r]);
	if ((ctx->flags_out & 0xcd5) != (ctx->flags_in & 0xcd5))
		printf("flags=%#llx/%#llx ", (unsigned long long)ctx->flags_in,
		       (unsigned long long)ctx->flags_out);
	for (int b = WINDOW - REDZONE; b < WINDOW; b++)     /* the red zone only */
		if (ctx->stack_out[b] != (uint8_t)ctx->fill)
			printf("sp-%d=%02x ", WINDOW - b, ctx->stack_out[b]);
	fflush(stdout);
	free(ctx);
	return bad;
}

static void *worker(void *arg)
{
	long id = (long)arg;
	struct opt_ctx *ctx = aligned_alloc(64, sizeof(*ctx));

	pthread_barrier_wait(&start_line);
	for (long i = 0; i < iterations; i++) {
		fill_ctx(ctx, id, i, (uint64_t)site_opt);
		run_site(ctx);
		__atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
		int bad = compare_ctx(ctx);
		if (bad & BAD_GPR)
			__atomic_fetch_add(&gpr_bad, 1, __ATOMIC_RELAXED);
		if (bad & BAD_FLAGS)
			__atomic_fetch_add(&flags_bad, 1, __ATOMIC_RELAXED);
		if (bad & BAD_XMM)
			__atomic_fetch_add(&xmm_bad, 1, __ATOMIC_RELAXED);
		if (bad & BAD_REDZONE)
			__atomic_fetch_add(&redzone_bad, 1, __ATOMIC_RELAXED);
		if (bad & BAD_BELOW)
			__atomic_fetch_add(&below_bad, 1, __ATOMIC_RELAXED);
	}
	free(ctx);
	return NULL;
}

/* opt state ... prof: a SIGPROF sampler (ITIMER_PROF asks for every 100 us of CPU time;
   the kernel delivers at most one per timer tick) whose handler scribbles
   over the caller-saved registers and xmm0-15 (the kernel must restore them all) and keeps
   the interrupted rip: where in the optimized sequence the signals landed */
#define MAX_SAMPLES 65536
static uint64_t samples[MAX_SAMPLES];
static unsigned long sample_count;

static void on_prof(int sig, siginfo_t *si, void *ucv)
{
	(void)sig; (void)si;
	ucontext_t *uc = ucv;
	unsigned long slot = __atomic_fetch_add(&sample_count, 1, __ATOMIC_RELAXED);
	if (slot < MAX_SAMPLES)
		samples[slot] = (uint64_t)uc->uc_mcontext.gregs[REG_RIP];
	__asm__ volatile("pcmpeqb %%xmm0, %%xmm0\n\tmovdqa %%xmm0, %%xmm1\n\t"
			 "movdqa %%xmm0, %%xmm7\n\tmovdqa %%xmm0, %%xmm15\n\t"
			 "mov $-1, %%rax\n\tmov %%rax, %%rcx\n\tmov %%rax, %%rdx\n\t"
			 "mov %%rax, %%rsi\n\tmov %%rax, %%rdi\n\tmov %%rax, %%r8\n\t"
			 "mov %%rax, %%r9\n\tmov %%rax, %%r10\n\tmov %%rax, %%r11\n\t"
			 "stc\n\tstd\n\tcld"
			 ::: "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
			     "xmm0", "xmm1", "xmm7", "xmm15", "cc", "memory");
}

static void start_sampler(void)
{
	struct sigaction sa = {.sa_sigaction = on_prof, .sa_flags = SA_SIGINFO | SA_RESTART};
	sigaction(SIGPROF, &sa, NULL);
	struct itimerval every = {{0, 100}, {0, 100}};
	setitimer(ITIMER_PROF, &every, NULL);
}

static void stop_sampler(void)
{
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_PROF, &off, NULL);
	signal(SIGPROF, SIG_IGN);
}

/* where the samples landed: in the trampoline, between the lea and the call (site + 5),
   elsewhere in the site */
static void print_samples(void)
{
	unsigned long n = sample_count < MAX_SAMPLES ? sample_count : MAX_SAMPLES;
	unsigned long tramp = 0, between = 0, site = 0;
	uint64_t lo = 0, hi = 0;
	trampoline_mapping(&lo, &hi);
	for (unsigned long i = 0; i < n; i++) {
		uint64_t rip = samples[i];
		if (rip >= lo && rip < hi)
			tramp++;
		else if (rip == (uint64_t)site_opt + 5)
			between++;
		else if (rip >= (uint64_t)site_opt && rip < (uint64_t)site_opt + 11)
			site++;
	}
	printf("samples=%lu samples_in_tramp=%lu samples_between=%lu samples_in_site=%lu ",
	       sample_count, tramp, between, site);
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
	uint64_t target = call_target((const uint8_t *)site_opt), lo, hi;
	int mapped = trampoline_mapping(&lo, &hi);
	printf("%s_tramp=%s %s_call_target=%s ", label,
	       target && mapped ? "[uprobes-trampoline]" : "none", label,
	       !target ? "none" : in_trampoline(target) ? "in" : "out");
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
	int env = opt_env_main(argc, argv);
	if (env >= 0)
		return env;
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
	int prof = argc == 5 && !strcmp(argv[4], "prof");
	if ((argc != 4 && !prof) || strcmp(argv[1], "state")) {
		fprintf(stderr, "usage: %s state NTHREADS ITERS [prof] | pause NCALLS | sys | "
			"time SITE N | reach CASE | sud N | seccomp filter|strict N | fork N | "
			"stepped ENABLE off|offon | calls N LABEL | serve\n", argv[0]);
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
	if (prof)
		start_sampler();
	for (long t = 0; t < nthreads; t++)
		if (pthread_create(&tids[t], NULL, worker, (void *)t)) {
			perror("pthread_create");
			return 2;
		}
	for (long t = 0; t < nthreads; t++)
		pthread_join(tids[t], NULL);
	if (prof) {
		stop_sampler();
		print_samples();
	}
	printf("calls=%llu gpr_bad=%llu flags_bad=%llu xmm_bad=%llu redzone_bad=%llu "
	       "below_bad=%llu ", (unsigned long long)calls, (unsigned long long)gpr_bad,
	       (unsigned long long)flags_bad, (unsigned long long)xmm_bad,
	       (unsigned long long)redzone_bad, (unsigned long long)below_bad);
	print_site("site");
	print_trampoline("site");
	printf("\n");
	return 0;
}
