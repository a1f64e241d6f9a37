/* Driver for generated instruction cases (harness/templates/insn_cases.S.j2).
 *
 * For every case: reset the scratch memory, the private stack and the FP/SIMD state to
 * known patterns, run the case, and print the complete resulting state as one line of hex:
 *   case <name> gpr=<18 x u64> fx=<512 bytes> ymm=<512 bytes or -> mem=<512 bytes> stk=<256 bytes>
 * The harness runs the program unprobed and probed and compares the lines field by field.
 * usage: insn [--pause] [--kmsg] [CASE-NAME...]   (no names: every case; --pause: stop with
 *        SIGSTOP first, so probes can be enabled while the program maps its file; --kmsg:
 *        write "uprobe-harness: CASE <name>" to /dev/kmsg before each case, so that a kernel
 *        splat in the console log can be attributed to the case that caused it)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define STACK_BYTES 65536
#define STACK_WINDOW 256

extern const uint64_t case_count;
extern void (*const case_table[])(void);
extern const char *const case_names[];
extern const uint64_t case_uses_avx;
extern const uint64_t case_gpr_init[][18];   /* per case: rax..r15, rflags, rsp-offset */

uint64_t gpr_cur[18] __attribute__((aligned(64)));
uint64_t gpr_out[18] __attribute__((aligned(64)));
uint8_t fx_in[512] __attribute__((aligned(64)));
uint8_t fx_out[512] __attribute__((aligned(64)));
uint8_t ymm_in[512] __attribute__((aligned(64)));
uint8_t ymm_out[512] __attribute__((aligned(64)));
uint8_t scratch[512] __attribute__((aligned(64)));
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
	__asm__ volatile("fninit; fxsave64 %0" : "=m"(fx_in));
	double values[8] = {1.5, -2.25, 3.0e10, 0.1, -7.0, 1.0 / 3.0, 42.0, 2.718281828};
	uint16_t fcw = 0x037f;
	__asm__ volatile("fldcw %0" ::"m"(fcw));
	for (int i = 0; i < 8; i++)
		__asm__ volatile("fldl %0" ::"m"(values[i]));
	__asm__ volatile("fxsave64 %0; fninit" : "=m"(fx_in));
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
	const uint8_t *b = p;
	printf(" %s=", tag);
	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
}

static int kmsg_fd = -1;

static void run_case(uint64_t i)
{
	if (kmsg_fd >= 0) {   /* one write() per record: /dev/kmsg rejects dprintf's pieces */
		char marker[160];
		int n = snprintf(marker, sizeof(marker), "<4>uprobe-harness: CASE %s\n",
				 case_names[i]);
		if (write(kmsg_fd, marker, n) != n)
			kmsg_fd = -1;
	}
	memcpy(gpr_cur, case_gpr_init[i], sizeof(gpr_cur));
	/* register values that name memory: resolved here so both runs agree */
	for (int r = 0; r < 16; r++) {
		uint64_t v = gpr_cur[r];
		if ((v >> 48) == 0x5c5c)                       /* scratch-relative */
			gpr_cur[r] = (uint64_t)(scratch + (v & 0xffff));
		else if ((v >> 48) == 0x57a7)                  /* stack-relative */
			gpr_cur[r] = (uint64_t)(test_stack + STACK_BYTES / 2 + (int16_t)(v & 0xffff));
	}
	gpr_cur[17] = (uint64_t)(test_stack + STACK_BYTES / 2);
	fill(scratch, sizeof(scratch), 0xc0de + (uint32_t)i);
	fill(test_stack, STACK_BYTES, 0x57ac);
	memset(gpr_out, 0, sizeof(gpr_out));
	memset(fx_out, 0, sizeof(fx_out));
	memset(ymm_out, 0, sizeof(ymm_out));
	case_table[i]();
	printf("case %s", case_names[i]);
	hex("gpr", gpr_out, sizeof(gpr_out));
	hex("fx", fx_out, sizeof(fx_out));
	if (case_uses_avx)
		hex("ymm", ymm_out, sizeof(ymm_out));
	else
		printf(" ymm=-");
	hex("mem", scratch, sizeof(scratch));
	hex("stk", test_stack + STACK_BYTES / 2 - STACK_WINDOW / 2, STACK_WINDOW);
	printf("\n");
	fflush(stdout);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "--pause")) {
		raise(SIGSTOP);
		argv++;
		argc--;
	}
	if (argc > 1 && !strcmp(argv[1], "--kmsg")) {
		kmsg_fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
		argv++;
		argc--;
	}
	init_fp_state();
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
