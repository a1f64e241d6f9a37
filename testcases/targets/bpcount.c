/* Counts how often each of a list of code addresses is executed by one process, without
 * uprobes: the way a debugger does it, with ptrace. Each address gets an int3 in the traced
 * child; on the trap the original byte is put back, the child single-steps over the
 * instruction, and the int3 goes back in. Only the site's own byte is ever written (read,
 * change one byte, write back), so sites may be adjacent instructions. An oracle for uprobes
 * hit counts that shares none of their code (only the int3).
 *
 * Most instructions real code runs at function entries and in hot loops are a few simple
 * forms (endbr64, push, pop, mov between registers, a jump, a call, ret; add, or, and, sub,
 * xor, cmp and test between registers or with an immediate, or reading a memory operand;
 * mov of an immediate, a load, movsxd): those are emulated on the trap with the child's
 * registers (and, for push/pop/call/ret and the memory operands, its memory), one stop per
 * hit instead of two and no text written. Memory operands: [rip + disp32] and [base reg +
 * disp] (no SIB byte), only ever read. Flags as the CPU sets them (AF cleared by the logical
 * forms, where it is undefined). Every other instruction (any other prefix or form, a
 * memory operand that cannot be read) is single-stepped as above. BPCOUNT_STEP_ONLY=1 in
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

enum emulation {
	UNDECODED, STEP, ENDBR64, PUSH, POP, MOV64, MOV32, JMP, JCC, CALL, RET,
	ALU,	/* op: rm (register or memory) with reg or imm */
	MOVIMM, /* reg <- imm */
	LOAD,	/* reg <- the r/m operand (memory) */
	MOVSXD, /* reg <- the 32-bit r/m operand, sign-extended */
};
/* ALU operations: the /digit of opcodes 0x81/0x83 (ADD..CMP), and TEST */
enum alu { ADD = 0, OR = 1, AND = 4, SUB = 5, XOR = 6, CMP = 7, TEST = 8 };
enum operand { REGISTER, BASED, RIP_RELATIVE }; /* the r/m operand */

struct site {
	uint64_t addr;
	uint8_t byte; /* the original byte at addr */
	uint64_t count;
	enum emulation how; /* decoded on the first hit */
	uint8_t length; /* of the instruction */
	/* PUSH/POP: the register; MOV: destination, source; JCC: condition; ALU, MOVIMM,
	 * LOAD, MOVSXD: the ModRM reg field (or the register of b8+r) */
	uint8_t reg, src;
	int32_t displacement; /* JMP, JCC, CALL; a memory operand's */
	/* ALU, MOVIMM, LOAD, MOVSXD */
	uint8_t op;	       /* enum alu */
	bool wide;	       /* 64-bit operands (REX.W), else 32-bit */
	bool immediate;	       /* ALU: the second operand is imm, not reg */
	bool to_reg;	       /* ALU: reg is the destination (else rm) */
	enum operand operand;  /* the r/m operand */
	uint8_t rm;	       /* its register, or its base register */
	int64_t imm;	       /* sign-extended */
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

/* the ModRM byte at m and the displacement after it: the r/m operand into site; their
 * length, or 0 for a form not emulated (a SIB byte) */
static unsigned modrm(const uint8_t *m, unsigned rex, struct site *site)
{
	unsigned mod = m[0] >> 6, low = m[0] & 7;
	site->reg = (m[0] >> 3 & 7) | (rex & 4) << 1;
	site->rm = low | (rex & 1) << 3;
	site->displacement = 0;
	if (mod == 3) {
		site->operand = REGISTER;
		return 1;
	}
	if (low == 4)
		return 0; /* SIB */
	if (mod == 0 && low == 5) {
		site->operand = RIP_RELATIVE;
		memcpy(&site->displacement, m + 1, 4);
		return 5;
	}
	site->operand = BASED;
	if (mod == 1)
		site->displacement = (int8_t)m[1];
	else if (mod == 2)
		memcpy(&site->displacement, m + 1, 4);
	return mod == 0 ? 1 : mod == 1 ? 2 : 5;
}

/* the ALU forms with a ModRM byte (opcode op, REX rex at the start of c, the opcode at
 * c[prefix]): 0x01.. (add/or/and/sub/xor/cmp rm,reg and reg,rm), 0x85 (test rm,reg),
 * 0x81/0x83 (rm, imm32/imm8); the others movimm (0xc7 /0), load (0x8b with memory),
 * movsxd (REX.W 0x63). A written memory destination is never emulated. true: decoded */
static bool decode_modrm(const uint8_t *c, unsigned prefix, unsigned rex, struct site *site)
{
	static const int8_t alu_of[0x40] = {
		[0x01] = ADD + 1, [0x03] = ADD + 1, [0x09] = OR + 1,  [0x0b] = OR + 1,
		[0x21] = AND + 1, [0x23] = AND + 1, [0x29] = SUB + 1, [0x2b] = SUB + 1,
		[0x31] = XOR + 1, [0x33] = XOR + 1, [0x39] = CMP + 1, [0x3b] = CMP + 1,
	};
	uint8_t opcode = c[prefix];
	unsigned n = modrm(c + prefix + 1, rex, site), imm_length = 0;
	enum emulation how; /* site->how only once the form is known to be emulated */
	if (!n)
		return false;
	site->wide = rex & 8;
	site->immediate = false;
	site->to_reg = false;
	if (opcode < 0x40 && alu_of[opcode]) {
		how = ALU, site->op = alu_of[opcode] - 1;
		site->to_reg = opcode & 2;
	} else if (opcode == 0x85) {
		how = ALU, site->op = TEST;
	} else if (opcode == 0x81 || opcode == 0x83) {
		unsigned digit = site->reg & 7;
		if (digit == 2 || digit == 3) /* adc, sbb */
			return false;
		how = ALU, site->op = digit, site->immediate = true;
		imm_length = opcode == 0x83 ? 1 : 4;
	} else if (opcode == 0xc7 && (site->reg & 7) == 0 && site->operand == REGISTER) {
		how = MOVIMM, site->reg = site->rm, imm_length = 4;
	} else if (opcode == 0x8b && site->operand != REGISTER) {
		how = LOAD;
	} else if (opcode == 0x63 && site->wide) {
		how = MOVSXD;
	} else {
		return false;
	}
	bool writes_rm = how == ALU && !site->to_reg && site->op != CMP && site->op != TEST;
	if (writes_rm && site->operand != REGISTER)
		return false; /* e.g. or [rdi], imm: a store */
	const uint8_t *imm = c + prefix + 1 + n;
	if (imm_length == 1) {
		site->imm = (int8_t)imm[0];
	} else if (imm_length == 4) {
		int32_t value;
		memcpy(&value, imm, 4);
		site->imm = value;
	}
	site->how = how;
	site->length = prefix + 1 + n + imm_length;
	return true;
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
	} else if (op[0] >= 0xb8 && op[0] <= 0xbf) {
		/* mov r32, imm32 (zero-extended) or, with REX.W, r64, imm64 */
		site->how = MOVIMM, site->reg = (op[0] & 7) | (rex & 1) << 3;
		site->wide = rex & 8;
		if (site->wide) {
			memcpy(&site->imm, op + 1, 8);
		} else {
			uint32_t value;
			memcpy(&value, op + 1, 4);
			site->imm = value;
		}
		site->length = length + 1 + (site->wide ? 8 : 4);
	} else if (decode_modrm(c, length, rex, site)) {
		/* an ALU form, movimm, load or movsxd: decode_modrm filled site in */
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

/* the value of the site's r/m operand, 8 or (wide false) 4 bytes, zero-extended: 0, or -1
 * when its memory cannot be read */
static int read_rm(pid_t pid, const struct site *site, const struct user_regs_struct *regs,
		   bool wide, unsigned long long *value)
{
	if (site->operand == REGISTER) {
		*value = *reg_field((struct user_regs_struct *)regs, site->rm);
	} else {
		uint64_t base = site->operand == RIP_RELATIVE ?
					site->addr + site->length :
					*reg_field((struct user_regs_struct *)regs, site->rm);
		uint64_t address = base + site->displacement;
		errno = 0;
		long word = ptrace(PTRACE_PEEKDATA, pid, (void *)address, NULL);
		if (errno)
			return -1;
		/* as when stepped: the site's own byte is the original then, other sites' int3s
		 * stay (code reading itself, rare) */
		if (site->addr >= address && site->addr < address + 8) {
			unsigned shift = 8 * (unsigned)(site->addr - address);
			word = (long)(((uint64_t)word & ~(0xffULL << shift)) |
				      (uint64_t)site->byte << shift);
		}
		*value = (unsigned long long)word;
	}
	if (!wide)
		*value = (uint32_t)*value;
	return 0;
}

/* a OP b at 64 or 32 bits: the result (zero-extended), the arithmetic flags set in *flags
 * as the CPU sets them (the logical operations clear CF, OF and the undefined AF) */
static unsigned long long alu(unsigned op, unsigned long long a, unsigned long long b, bool wide,
			      unsigned long long *flags)
{
	unsigned long long mask = wide ? ~0ULL : 0xffffffffULL;
	unsigned long long sign = wide ? 1ULL << 63 : 1ULL << 31;
	unsigned long long r, f = *flags & ~0x8d5ULL; /* CF PF AF ZF SF OF */
	a &= mask, b &= mask;
	switch (op) {
	case ADD:
		r = (a + b) & mask;
		f |= (r < a) | ((a ^ r) & (b ^ r) & sign ? 0x800 : 0) | ((a ^ b ^ r) & 0x10);
		break;
	case SUB:
	case CMP:
		r = (a - b) & mask;
		f |= (a < b) | ((a ^ b) & (a ^ r) & sign ? 0x800 : 0) | ((a ^ b ^ r) & 0x10);
		break;
	case OR:
		r = a | b;
		break;
	case AND:
	case TEST:
		r = a & b;
		break;
	default: /* XOR */
		r = a ^ b;
		break;
	}
	f |= (r == 0 ? 0x40 : 0) | (r & sign ? 0x80 : 0);
	f |= __builtin_parity(r & 0xff) ? 0 : 0x4;
	*flags = f;
	return r;
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
	case ALU: {
		unsigned long long rm, other = site->immediate ? (unsigned long long)site->imm :
								 *reg_field(regs, site->reg);
		if (read_rm(pid, site, regs, site->wide, &rm))
			return -1;
		unsigned long long result = site->to_reg ?
						    alu(site->op, other, rm, site->wide, &regs->eflags) :
						    alu(site->op, rm, other, site->wide, &regs->eflags);
		if (site->op != CMP && site->op != TEST)
			*reg_field(regs, site->to_reg ? site->reg : site->rm) = result;
		break;
	}
	case MOVIMM:
		*reg_field(regs, site->reg) =
			site->wide ? (unsigned long long)site->imm : (uint32_t)site->imm;
		break;
	case LOAD:
		if (read_rm(pid, site, regs, site->wide, &value))
			return -1;
		*reg_field(regs, site->reg) = value;
		break;
	case MOVSXD:
		if (read_rm(pid, site, regs, false, &value))
			return -1;
		*reg_field(regs, site->reg) = (unsigned long long)(int64_t)(int32_t)value;
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
