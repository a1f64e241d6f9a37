/* Driver for generated instruction cases (harness/templates/insn_cases.S.j2).
 *
 * For every case: reset the scratch memory, the private stack and the FP/SIMD state to
 * known patterns, run the case, and print the complete resulting state as one line:
 *   case <name> gpr=<18 x u64> fx~=<delta> ymm~=<delta or ymm=-> ms=<seed> mem~=<delta>
 *        memh=<hash of the rest of the scratch area> stk~=<delta> sig=<signal>
 * The byte areas are printed as their differences from the state the case started from
 * (delta: comma-separated OFFSET:HEX runs, offsets in hex; empty when nothing changed): the
 * FP/SIMD and stack starts once, on a first line "ref fx=<512 bytes> ymm=<512 bytes>
 * stk=<256 bytes>", the scratch start as the seed of its fill pattern (harness/insn.py
 * rebuilds every area). Most instructions change a few bytes: the output is ~7 times
 * smaller than the whole state, which the guest would otherwise push through SSH.
 * If the instruction raises a signal (SIGSEGV, SIGILL, SIGFPE, SIGBUS, SIGTRAP), the state is
 * taken from the signal's ucontext instead (the "pad" slot of gpr then holds the faulting
 * RIP) and sig=<signo>.<si_code>.<si_addr>; the next case runs normally.
 * The harness runs the program unprobed and probed and compares the lines field by field.
 * --tf: single-step each case with RFLAGS.TF (as the kernel does when it executes a probed
 *       insn out of line) and add tf=<offset of the first trap after the probed insn from
 *       it, or -1>: the emulator's single-step must stop right after the insn.
 * usage: insn [--pause] [--tf] [--kmsg] [--twice] [CASE-NAME...]   (no names: every case;
 *        --pause: stop with SIGSTOP first, so probes can be enabled while the program maps
 *        its file; --kmsg: write "uprobe-harness: CASE <name>" to /dev/kmsg before each
 *        case, so that a kernel splat in the console log can be attributed to the case that
 *        caused it; --twice: run each case twice in a row, the second printed as <name>@2:
 *        a probe's later hits may take another path than its first)
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/ucontext.h>
#include <unistd.h>

#ifdef __i386__           /* a 32-bit (compat) task: eight GPRs in the low halves, r8-r15 0 */
#define FXSAVE "fxsave"
#define FXSR_OFFSET 112          /* the FXSAVE image follows the fsave header in the frame */
#else
#define FXSAVE "fxsave64"
#define FXSR_OFFSET 0
#endif

#define STACK_BYTES 65536
#define STACK_WINDOW 256
#define SCRATCH_BYTES 4096
#define SCRATCH_SHOWN 512

extern const uint64_t case_count;
extern void (*const case_table[])(void);
extern const char *const case_names[];
extern const uint64_t case_uses_avx;
extern const uint64_t case_probe_addr[];
extern const uint64_t case_gpr_init[][18];   /* per case: rax..r15, rflags, rsp-offset */

uint64_t gpr_cur[18] __attribute__((aligned(64)));
uint64_t gpr_out[18] __attribute__((aligned(64)));
uint8_t fx_in[512] __attribute__((aligned(64)));
uint8_t fx_out[512] __attribute__((aligned(64)));
uint8_t ymm_in[512] __attribute__((aligned(64)));
uint8_t ymm_out[512] __attribute__((aligned(64)));
uint8_t scratch[SCRATCH_BYTES] __attribute__((aligned(64)));
uint8_t test_stack[STACK_BYTES] __attribute__((aligned(64)));

static void fill(uint8_t *p, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = seed >> 16;
	}
}

static void init_fp_state(void)
{
	/* Start from the real state, then put known values in the x87 stack and XMM regs. */
	__asm__ volatile("fninit; " FXSAVE " %0" : "=m"(fx_in));
	double values[8] = {1.5, -2.25, 3.0e10, 0.1, -7.0, 1.0 / 3.0, 42.0, 2.718281828};
	uint16_t fcw = 0x037f;
	__asm__ volatile("fldcw %0" ::"m"(fcw));
	for (int i = 0; i < 8; i++)
		__asm__ volatile("fldl %0" ::"m"(values[i]));
	__asm__ volatile(FXSAVE " %0; fninit" : "=m"(fx_in));
	fill(fx_in + 160, 256, 0x5eed);          /* xmm0..xmm15 */
	uint32_t mxcsr = 0x1f80;                  /* default: all exceptions masked, RN */
	memcpy(fx_in + 24, &mxcsr, 4);
	memset(fx_in + 6, 0, 18);                 /* FOP, FIP, FDP: not part of the pattern */
	memcpy(ymm_in, fx_in + 160, 256);         /* low halves agree with the xmm values */
	fill(ymm_in, 512, 0xa77e);
	for (int i = 0; i < 16; i++)
		memcpy(ymm_in + 32 * i, fx_in + 160 + 16 * i, 16);
}

static void hex(const char *tag, const void *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	char line[2 * 4096 + 1];
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		line[2 * i] = digits[b[i] >> 4];
		line[2 * i + 1] = digits[b[i] & 15];
	}
	line[2 * n] = 0;
	printf(" %s=%s", tag, line);
}

/* " tag~=off:hex,off:hex...": the runs of bytes of p that differ from ref */
static void delta(const char *tag, const void *p, const void *ref, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	char line[5 * 4096 + 16];
	const uint8_t *b = p, *r = ref;
	size_t out = 0;
	for (size_t i = 0; i < n;) {
		if (b[i] == r[i]) {
			i++;
			continue;
		}
		out += sprintf(line + out, "%s%zx:", out ? "," : "", i);
		for (; i < n && b[i] != r[i]; i++) {
			line[out++] = digits[b[i] >> 4];
			line[out++] = digits[b[i] & 15];
		}
	}
	line[out] = 0;
	printf(" %s~=%s", tag, line);
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/* Reset what an instruction may leave behind that the C code depends on: RFLAGS (DF, AC,
 * TF), the x87 control state and MXCSR. A function of its own: no red-zone hazard. */
void sane_state(void);
#ifdef __i386__
__asm__(".text\n.globl sane_state\nsane_state:\n\tpushl $0x202\n\tpopfl\n\tfninit\n"
	"\tsubl $4, %esp\n\tmovl $0x1f80, (%esp)\n\tldmxcsr (%esp)\n\taddl $4, %esp\n\tret\n");
#define REG_IP REG_EIP
static const int gpr_order[] = {REG_EAX, REG_EBX, REG_ECX, REG_EDX, REG_ESI, REG_EDI, REG_EBP,
				-1, -1, -1, -1, -1, -1, -1, -1, REG_EFL, REG_EIP, REG_UESP};
#else
__asm__(".text\n.globl sane_state\nsane_state:\n\tpushq $0x202\n\tpopfq\n\tfninit\n"
	"\tsubq $8, %rsp\n\tmovl $0x1f80, (%rsp)\n\tldmxcsr (%rsp)\n\taddq $8, %rsp\n\tret\n");
#define REG_IP REG_RIP
static const int gpr_order[] = {REG_RAX, REG_RBX, REG_RCX, REG_RDX, REG_RSI, REG_RDI, REG_RBP,
				REG_R8, REG_R9, REG_R10, REG_R11, REG_R12, REG_R13, REG_R14,
				REG_R15, REG_EFL, REG_RIP, REG_RSP};
#endif

static sigjmp_buf case_env;
static volatile int case_running;
static char signal_note[64];
static int tf_mode;
static uint64_t tf_probe, tf_last;
static long tf_next = -1;

static void on_signal(int sig, siginfo_t *info, void *context)
{
	sane_state();
	if (!case_running) {             /* a fault in the driver itself: die as usual */
		signal(sig, SIG_DFL);
		return;
	}
	ucontext_t *uc = context;
	greg_t *g = uc->uc_mcontext.gregs;
	if (tf_mode && sig == SIGTRAP && info->si_code == TRAP_TRACE) {
		uint64_t rip = (uintptr_t)g[REG_IP];
		if (tf_last == tf_probe && tf_next < 0) {
			tf_next = (long)(rip - tf_probe);
			g[REG_EFL] &= ~0x100UL;       /* stepped over the insn: run on normally */
		}
		tf_last = rip;
		return;
	}
	for (int r = 0; r < 18; r++)
		gpr_out[r] = gpr_order[r] < 0 ? 0 : (uint64_t)(unsigned long)g[gpr_order[r]];
	if (uc->uc_mcontext.fpregs)
		memcpy(fx_out, (const uint8_t *)uc->uc_mcontext.fpregs + FXSR_OFFSET, sizeof(fx_out));
	snprintf(signal_note, sizeof(signal_note), "%d.%d.%lx", sig, info->si_code,
		 (sig == SIGSEGV || sig == SIGBUS) ? (unsigned long)info->si_addr : 0UL);
	case_running = 0;
	siglongjmp(case_env, 1);
}

static void catch_signals(void)
{
	static uint8_t alt[65536];
	stack_t ss = {.ss_sp = alt, .ss_size = sizeof(alt)};
	sigaltstack(&ss, NULL);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_signal;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
	const int signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
	for (size_t i = 0; i < sizeof(signals) / sizeof(signals[0]); i++)
		sigaction(signals[i], &sa, NULL);
}

static int kmsg_fd = -1;

static int twice;
static uint8_t stk_ref[STACK_WINDOW];   /* the stack window as every case starts with it */
static uint8_t stack_start[STACK_BYTES]; /* the whole test stack as every case starts with it:
					  * filled once, copied per case (the fill's loop, one
					  * iteration per byte, was most of a case's time under TCG) */

static void run_case_once(uint64_t i, int execution)
{
	if (kmsg_fd >= 0) {   /* one write() per record: /dev/kmsg rejects dprintf's pieces */
		char marker[160];
		int n = snprintf(marker, sizeof(marker), "<4>uprobe-harness: CASE %s\n",
				 case_names[i]);
		if (write(kmsg_fd, marker, n) != n)
			kmsg_fd = -1;
	}
	static uint8_t mem_ref[SCRATCH_SHOWN];
	memcpy(gpr_cur, case_gpr_init[i], sizeof(gpr_cur));
	if (tf_mode) {
		gpr_cur[15] |= 0x100;                  /* popfq in the case sets TF */
		tf_probe = case_probe_addr[i];
		tf_last = 0;
		tf_next = -1;
	}
	/* register values that name memory: resolved here so both runs agree */
	for (int r = 0; r < 16; r++) {
		uint64_t v = gpr_cur[r];
		if ((v >> 48) == 0x5c5c)                       /* scratch-relative */
			gpr_cur[r] = (uintptr_t)(scratch + (v & 0xffff));
		else if ((v >> 48) == 0x57a7)                  /* stack-relative */
			gpr_cur[r] = (uintptr_t)(test_stack + STACK_BYTES / 2 + (int16_t)(v & 0xffff));
	}
	gpr_cur[17] = (uintptr_t)(test_stack + STACK_BYTES / 2);
	fill(scratch, sizeof(scratch), 0xc0de + (uint32_t)i);
	memcpy(mem_ref, scratch, sizeof(mem_ref));
	memcpy(test_stack, stack_start, STACK_BYTES);
	memset(gpr_out, 0, sizeof(gpr_out));
	memset(fx_out, 0, sizeof(fx_out));
	memset(ymm_out, 0, sizeof(ymm_out));
	int signalled = 0;
	strcpy(signal_note, "0");
	if (sigsetjmp(case_env, 1) == 0) {
		case_running = 1;
		case_table[i]();
		case_running = 0;
	} else {
		signalled = 1;
	}
	sane_state();
	if (execution > 1)
		printf("case %s@%d", case_names[i], execution);
	else
		printf("case %s", case_names[i]);
	hex("gpr", gpr_out, sizeof(gpr_out));
	delta("fx", fx_out, fx_in, sizeof(fx_out));
	if (case_uses_avx && !signalled)
		delta("ymm", ymm_out, ymm_in, sizeof(ymm_out));
	else
		printf(" ymm=-");
	printf(" ms=%x", 0xc0de + (uint32_t)i);
	delta("mem", scratch, mem_ref, SCRATCH_SHOWN);
	printf(" memh=%016llx", (unsigned long long)fnv1a(scratch + SCRATCH_SHOWN,
							  SCRATCH_BYTES - SCRATCH_SHOWN));
	delta("stk", test_stack + STACK_BYTES / 2 - STACK_WINDOW / 2, stk_ref, STACK_WINDOW);
	printf(" sig=%s", signal_note);
	if (tf_mode)
		printf(" tf=%ld", tf_next);
	printf("\n");
	fflush(stdout);
}

static void run_case(uint64_t i)
{
	run_case_once(i, 1);
	if (twice)
		run_case_once(i, 2);
}

int main(int argc, char **argv)
{
	/* the same address-space layout in every run (no ASLR): the TLS block and the heap lie
	 * where they lay in the other run, so fs-relative forms read the same bytes */
	int persona = personality(0xffffffff);
	if (persona != -1 && !(persona & ADDR_NO_RANDOMIZE)) {
		personality(persona | ADDR_NO_RANDOMIZE);
		execv("/proc/self/exe", argv);         /* on failure: go on with ASLR */
	}
	if (argc > 1 && !strcmp(argv[1], "--pause")) {
		raise(SIGSTOP);
		argv++;
		argc--;
	}
	if (argc > 1 && !strcmp(argv[1], "--tf")) {
		tf_mode = 1;
		argv++;
		argc--;
	}
	if (argc > 1 && !strcmp(argv[1], "--kmsg")) {
		kmsg_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
		argv++;
		argc--;
	}
	if (argc > 1 && !strcmp(argv[1], "--twice")) {
		twice = 1;
		argv++;
		argc--;
	}
	init_fp_state();
	catch_signals();
	fill(stack_start, STACK_BYTES, 0x57ac);
	memcpy(stk_ref, stack_start + STACK_BYTES / 2 - STACK_WINDOW / 2, STACK_WINDOW);
	printf("ref");
	hex("fx", fx_in, sizeof(fx_in));
	hex("ymm", ymm_in, sizeof(ymm_in));
	hex("stk", stk_ref, sizeof(stk_ref));
	printf("\n");
	if (argc == 1) {
		for (uint64_t i = 0; i < case_count; i++)
			run_case(i);
		return 0;
	}
	for (int a = 1; a < argc; a++) {
		uint64_t i = 0;
		while (i < case_count && strcmp(case_names[i], argv[a]))
			i++;
		if (i == case_count) {
			fprintf(stderr, "no case named %s\n", argv[a]);
			return 2;
		}
		run_case(i);
	}
	return 0;
}
