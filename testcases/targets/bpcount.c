/* Counts how often each of a list of code addresses is executed by one process, without
 * uprobes: the way a debugger does it, with ptrace. Each address gets an int3 in the traced
 * child; on the trap the original byte is put back, the child single-steps over the
 * instruction, and the int3 goes back in. Only the site's own byte is ever written (read,
 * change one byte, write back), so sites may be adjacent instructions. An oracle for uprobes
 * hit counts that shares none of their code (only the int3).
 *
 * Most function entries start with one of a few simple instructions (endbr64, push, mov
 * between registers, a jump, a call, ret): those are emulated on the trap with the child's
 * registers (and, for push/pop/call/ret, its stack), one stop per hit instead of two and no
 * text written. Every other instruction is single-stepped as above. BPCOUNT_STEP_ONLY=1 in
 * the environment turns emulation off (tests/test_bpcount.py compares both ways).
 *
 * usage: bpcount ADDRFILE -- CMD [ARG...]
 *   ADDRFILE: one hexadecimal virtual address per line (a non-PIE static CMD)
 * prints on stderr, after CMD ran (its stdout/stderr pass through):
 *   bpcount status=<wait status> traps=<total> emulated=<of them, emulated> then one line
 *   per address: <addr> <count>
 * exit: 0, or 2 on a setup error; CMD must not fork (its children are not traced)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

enum emulation { UNDECODED, STEP, ENDBR64, PUSH, POP, MOV64, MOV32, JMP, JCC, CALL, RET };

struct site {
	uint64_t addr;
	uint8_t byte; /* the original byte at addr */
	uint64_t count;
	enum emulation how; /* decoded on the first hit */
	uint8_t length; /* of the instruction */
	uint8_t reg, src; /* PUSH/POP: the register; MOV: destination, source; JCC: condition */
	int32_t displacement; /* JMP, JCC, CALL */
};

static struct site *sites;
static size_t nsites;

static int by_addr(const void *a, const void *b)
{
	uint64_t x = ((const struct site *)a)->addr, y = ((const struct site *)b)->addr;
	return x < y ? -1 : x > y;
}

static struct site *find(uint64_t addr)
{
	struct site key = {.addr = addr};
	return bsearch(&key, sites, nsites, sizeof(*sites), by_addr);
}

/* the byte at addr becomes `byte`; the 7 after it stay what they are now (other sites) */
static int poke_byte(pid_t pid, uint64_t addr, uint8_t byte)
{
	errno = 0;
	long word = ptrace(PTRACE_PEEKTEXT, pid, (void *)addr, NULL);
	if (errno)
		return -1;
	uint64_t patched = ((uint64_t)word & ~0xffULL) | byte;
	return (int)ptrace(PTRACE_POKETEXT, pid, (void *)addr, (void *)patched);
}

/* x86 register number (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..r15) -> its field */
static unsigned long long *reg_field(struct user_regs_struct *regs, unsigned number)
{
	unsigned long long *fields[16] = {
		&regs->rax, &regs->rcx, &regs->rdx, &regs->rbx, &regs->rsp, &regs->rbp,
		&regs->rsi, &regs->rdi, &regs->r8,  &regs->r9,  &regs->r10, &regs->r11,
		&regs->r12, &regs->r13, &regs->r14, &regs->r15,
	};
	return fields[number & 15];
}

/* the instruction's first 16 bytes as the program has them: the int3s of this and any
 * other site in the range replaced by their original bytes */
static int original_code(pid_t pid, uint64_t addr, uint8_t code[16])
{
	for (int i = 0; i < 16; i += 8) {
		errno = 0;
		long word = ptrace(PTRACE_PEEKTEXT, pid, (void *)(addr + i), NULL);
		if (errno)
			return -1;
		memcpy(code + i, &word, 8);
	}
	for (int i = 0; i < 16; i++) {
		struct site *other = find(addr + i);
		if (other)
			code[i] = other->byte;
	}
	return 0;
}

/* what to do with a site's instruction: one of the emulated forms, or STEP */
static void decode(pid_t pid, struct site *site)
{
	uint8_t c[16];
	site->how = STEP;
	if (original_code(pid, site->addr, c))
		return;
	unsigned rex = (c[0] & 0xf0) == 0x40 ? c[0] : 0;
	const uint8_t *op = c + (rex ? 1 : 0);
	unsigned length = rex ? 1 : 0;
	if (!rex && c[0] == 0xf3 && c[1] == 0x0f && c[2] == 0x1e && c[3] == 0xfa) {
		site->how = ENDBR64, site->length = 4;
	} else if ((!rex || (rex & ~1u) == 0x40) && op[0] >= 0x50 && op[0] <= 0x5f) {
		/* push/pop r64, REX.B the only prefix bit they use here */
		site->how = op[0] < 0x58 ? PUSH : POP;
		site->reg = (op[0] & 7) | (rex & 1) << 3;
		site->length = length + 1;
	} else if ((op[0] == 0x89 || op[0] == 0x8b) && (op[1] & 0xc0) == 0xc0) {
		/* mov between registers: 89 is r/m <- reg, 8b is reg <- r/m */
		unsigned reg = (op[1] >> 3 & 7) | (rex & 4) << 1;
		unsigned rm = (op[1] & 7) | (rex & 1) << 3;
		site->how = rex & 8 ? MOV64 : MOV32;
		site->reg = op[0] == 0x89 ? rm : reg;
		site->src = op[0] == 0x89 ? reg : rm;
		site->length = length + 2;
	} else if (rex) {
		/* another REX-prefixed instruction: stepped */
	} else if (c[0] == 0xeb || (c[0] >= 0x70 && c[0] <= 0x7f)) {
		site->how = c[0] == 0xeb ? JMP : JCC;
		site->reg = c[0] & 15;
		site->displacement = (int8_t)c[1];
		site->length = 2;
	} else if (c[0] == 0xe9 || c[0] == 0xe8) {
		site->how = c[0] == 0xe9 ? JMP : CALL;
		memcpy(&site->displacement, c + 1, 4);
		site->length = 5;
	} else if (c[0] == 0x0f && c[1] >= 0x80 && c[1] <= 0x8f) {
		site->how = JCC, site->reg = c[1] & 15;
		memcpy(&site->displacement, c + 2, 4);
		site->length = 6;
	} else if (c[0] == 0xc3) {
		site->how = RET, site->length = 1;
	}
}

/* whether condition code cc (the low nibble of a jcc opcode) holds for these flags */
static bool condition(unsigned cc, unsigned long long flags)
{
	bool cf = flags & 1, pf = flags >> 2 & 1, zf = flags >> 6 & 1;
	bool sf = flags >> 7 & 1, of = flags >> 11 & 1;
	bool base[8] = {of, cf, zf, cf || zf, sf, pf, sf != of, zf || sf != of};
	return base[cc >> 1 & 7] != (cc & 1);
}

/* a push/pop on the trapped child's stack: 0, or -1 (nothing moved) when it cannot be accessed */
static int push(pid_t pid, struct user_regs_struct *regs, unsigned long long value)
{
	if (ptrace(PTRACE_POKEDATA, pid, (void *)(regs->rsp - 8), (void *)value))
		return -1;
	regs->rsp -= 8;
	return 0;
}

static int pop(pid_t pid, struct user_regs_struct *regs, unsigned long long *value)
{
	errno = 0;
	long word = ptrace(PTRACE_PEEKDATA, pid, (void *)regs->rsp, NULL);
	if (errno)
		return -1;
	regs->rsp += 8;
	*value = (unsigned long long)word;
	return 0;
}

/* the site's instruction carried out on the trapped child (trapped: its registers `at`):
 * 1 done, 0 not emulated, -1 the child's stack could not be read or written; on 0 and -1
 * the child's registers are still `at` (the caller steps the instruction: it faults as it
 * would have) */
static int emulate(pid_t pid, const struct site *site, const struct user_regs_struct *at)
{
	struct user_regs_struct copy = *at, *regs = &copy;
	unsigned long long value;
	regs->rip = site->addr + site->length; /* the next insn; jumps add their displacement */
	switch (site->how) {
	case ENDBR64:
		break;
	case PUSH: /* push rsp: the value before the push */
		if (push(pid, regs, *reg_field(regs, site->reg)))
			return -1;
		break;
	case POP: /* pop rsp: the value read wins over the increment */
		if (pop(pid, regs, &value))
			return -1;
		*reg_field(regs, site->reg) = value;
		break;
	case MOV64:
		*reg_field(regs, site->reg) = *reg_field(regs, site->src);
		break;
	case MOV32:
		*reg_field(regs, site->reg) = (uint32_t)*reg_field(regs, site->src);
		break;
	case JMP:
		regs->rip += (int64_t)site->displacement;
		break;
	case JCC:
		if (condition(site->reg, regs->eflags))
			regs->rip += (int64_t)site->displacement;
		break;
	case CALL:
		if (push(pid, regs, regs->rip))
			return -1;
		regs->rip += (int64_t)site->displacement;
		break;
	case RET:
		if (pop(pid, regs, &value))
			return -1;
		regs->rip = value;
		break;
	default:
		return 0;
	}
	return ptrace(PTRACE_SETREGS, pid, NULL, regs) ? -1 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--")) {
		fprintf(stderr, "usage: bpcount ADDRFILE -- CMD [ARG...]\n");
		return 2;
	}
	FILE *f = fopen(argv[1], "r");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	size_t cap = 1024;
	sites = calloc(cap, sizeof(*sites));
	unsigned long long addr;
	while (fscanf(f, "%llx", &addr) == 1) {
		if (nsites == cap)
			sites = realloc(sites, (cap *= 2) * sizeof(*sites));
		sites[nsites++] = (struct site){.addr = addr};
	}
	fclose(f);
	qsort(sites, nsites, sizeof(*sites), by_addr);
	size_t unique = 0; /* an address listed twice would read its own int3 as the original */
	for (size_t i = 0; i < nsites; i++)
		if (unique == 0 || sites[i].addr != sites[unique - 1].addr)
			sites[unique++] = sites[i];
	nsites = unique;
	/* read, then gone: the child's environment (and so its stack) is the same either way */
	const char *step_only = getenv("BPCOUNT_STEP_ONLY");
	bool emulating = !(step_only && strcmp(step_only, "1") == 0);
	unsetenv("BPCOUNT_STEP_ONLY");
	pid_t child = fork();
	if (child == 0) {
		ptrace(PTRACE_TRACEME, 0, NULL, NULL);
		execvp(argv[3], &argv[3]);
		_exit(127);
	}
	int status;
	waitpid(child, &status, 0); /* stopped at exec */
	if (!WIFSTOPPED(status)) {
		fprintf(stderr, "bpcount: the child did not stop at exec\n");
		return 2;
	}
	ptrace(PTRACE_SETOPTIONS, child, NULL, (void *)PTRACE_O_EXITKILL);
	for (size_t i = 0; i < nsites; i++) {
		errno = 0;
		long word = ptrace(PTRACE_PEEKTEXT, child, (void *)sites[i].addr, NULL);
		if (errno || poke_byte(child, sites[i].addr, 0xcc)) {
			fprintf(stderr, "bpcount: cannot patch %llx: %s\n",
				(unsigned long long)sites[i].addr, strerror(errno));
			kill(child, SIGKILL);
			return 2;
		}
		sites[i].byte = (uint8_t)word;
	}
	uint64_t traps = 0, emulated = 0;
	int signal_to_pass = 0;
	for (;;) {
		ptrace(PTRACE_CONT, child, NULL, (void *)(long)signal_to_pass);
		signal_to_pass = 0;
		if (waitpid(child, &status, 0) < 0 || WIFEXITED(status) || WIFSIGNALED(status))
			break;
		if (WSTOPSIG(status) != SIGTRAP) {
			signal_to_pass = WSTOPSIG(status);
			continue;
		}
		struct user_regs_struct regs;
		ptrace(PTRACE_GETREGS, child, NULL, &regs);
		struct site *site = find(regs.rip - 1);
		if (!site) { /* a SIGTRAP of the program's own */
			signal_to_pass = SIGTRAP;
			continue;
		}
		site->count++;
		traps++;
		if (emulating && site->how == UNDECODED)
			decode(child, site);
		if (emulating && emulate(child, site, &regs) == 1) {
			emulated++;
			continue;
		}
		regs.rip = site->addr;
		ptrace(PTRACE_SETREGS, child, NULL, &regs);
		poke_byte(child, site->addr, site->byte);
		ptrace(PTRACE_SINGLESTEP, child, NULL, NULL);
		waitpid(child, &status, 0);
		if (WIFEXITED(status) || WIFSIGNALED(status))
			break;
		poke_byte(child, site->addr, 0xcc);
	}
	fflush(stdout);
	fprintf(stderr, "bpcount status=%d traps=%llu emulated=%llu\n", status,
		(unsigned long long)traps, (unsigned long long)emulated);
	for (size_t i = 0; i < nsites; i++)
		if (sites[i].count)
			fprintf(stderr, "%llx %llu\n", (unsigned long long)sites[i].addr,
				(unsigned long long)sites[i].count);
	return 0;
}
