/* Optimized uprobes in unusual surroundings: the probed program checks itself.
 *
 * Every mode calls a probed nop10 function and prints key=value words; the harness compares
 * the number of calls with the trace buffer. The modes (argv[1] of opt):
 *
 *   reach CASE        maps the page pair holding site_tail0 (a nop10 at page offset
 *                     0xff6) at 0x600000000000, calls it until it is optimized, reads its
 *                     trampoline T, then maps the same pages at A so that T lies at a chosen
 *                     distance from the end of A's rewritten call, and calls A's copy:
 *                       plus_edge   T = call end + 2^31          (out of rel32 reach by one)
 *                       plus_in     T = call end + 2^31 - 4096   (reachable)
 *                       minus_edge  T = call end - 2^31          (reachable, the last one)
 *                       minus_out   T = call end - 2^31 - 4096   (out of reach)
 *                       noroom      no T: A sits in the middle of a 6 GiB PROT_NONE
 *                                   reservation, no page within reach is free
 *                     prints a_site (bytes), a_call_target (in: on the first byte of a
 *                     [uprobes-trampoline] mapping; mid: elsewhere in one; out; none),
 *                     a_reused (the call goes to T), fault (the address a call jumped
 *                     to, relative to T, if it crashed)
 *   sud N             syscall user dispatch on, only the program's own text allowed, the
 *                     selector set to BLOCK around N calls of site_nop10 and site_ret;
 *                     counts SIGSYS; then a syscall 336 from a page outside the allowed
 *                     range, which must still raise SIGSYS (foreign_sigsys=1)
 *   seccomp filter|strict N
 *                     N calls of site_nop10 under a seccomp filter that kills the process on
 *                     any syscall but write/exit/exit_group/rt_sigreturn, or in strict mode
 *   fork N            N calls, then a fork()ed child, a vfork-style clone(CLONE_VM|
 *                     CLONE_VFORK) child and an exec()ed image each make N calls and report
 *                     their site bytes and whether the call still lands in a trampoline
 *   tail N            N calls of each of site_tail0..9, the nop10 at page offsets
 *                     0xff6..0xfff (the last ten bytes of a page), and their bytes
 *   seg32 N           N calls of site_opt32, a nop10 in 32-bit code, through a far call into
 *                     the 32-bit user code segment (0x23)
 *   serve             reads commands from stdin (call N, show, lowsp, quit) and answers
 *                     each with one line: calls of site_tail0, its bytes, and one call
 *                     on a stack whose low 16 bits are 0x40 (see serve())
 *   stepped ENABLE off|offon
 *                     a traced child makes 3 calls, then is single-stepped to the instruction
 *                     between the lea and the call of the optimized site; the parent writes 0
 *                     (then 1) to the probe's tracefs enable file, reads the child's site
 *                     bytes through /proc/PID/mem and lets it go on: the call must still land
 *                     in the trampoline and the child's state must come back intact
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/ucontext.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "opt.h"

#ifndef PR_SET_SYSCALL_USER_DISPATCH
#define PR_SET_SYSCALL_USER_DISPATCH 59
#define PR_SYS_DISPATCH_OFF 0
#define PR_SYS_DISPATCH_ON 1
#define SYSCALL_DISPATCH_FILTER_ALLOW 0
#define SYSCALL_DISPATCH_FILTER_BLOCK 1
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

extern long site_nop10(long), site_ret(long);
extern void site_opt(void);
extern long site_tail0(long);
extern char run_site_call[];

typedef long (*site_fn)(long);

/* ---- the address space, read from /proc/self/maps ---------------------------------------- */

struct mapping { uint64_t lo, hi, pgoff; char name[96]; };

static int find_mapping(uint64_t addr, struct mapping *out)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	int found = 0;
	while (maps && !found && fgets(line, sizeof(line), maps)) {
		unsigned long lo, hi, pgoff;
		char perms[8], dev[16], name[96] = "";
		unsigned long inode;
		if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %95s", &lo, &hi, perms, &pgoff, dev,
			   &inode, name) < 6)
			continue;
		if (addr >= lo && addr < hi) {
			out->lo = lo; out->hi = hi; out->pgoff = pgoff;
			snprintf(out->name, sizeof(out->name), "%s", name);
			found = 1;
		}
	}
	if (maps)
		fclose(maps);
	return found;
}

int trampoline_mapping(uint64_t *lo, uint64_t *hi)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	int found = 0;
	while (maps && fgets(line, sizeof(line), maps))
		if (strstr(line, "[uprobes-trampoline]"))
			found |= sscanf(line, "%lx-%lx", lo, hi) == 2;
	if (maps)
		fclose(maps);
	return found;
}

int in_trampoline(uint64_t addr)
{
	struct mapping m;
	return find_mapping(addr, &m) && !strcmp(m.name, "[uprobes-trampoline]");
}

/* the trampoline's code starts its mapping: a call must land exactly there */
static int at_trampoline(uint64_t addr)
{
	struct mapping m;
	return find_mapping(addr, &m) && !strcmp(m.name, "[uprobes-trampoline]") &&
	       addr == m.lo;
}

static int is_optimized(const uint8_t *p)
{
	static const uint8_t opt[] = {0x48, 0x8d, 0x64, 0x24, 0x80, 0xe8};
	return !memcmp(p, opt, sizeof(opt));
}

uint64_t call_target(const uint8_t *p)
{
	int32_t rel;
	if (p[5] != 0xe8)
		return 0;
	memcpy(&rel, p + 6, 4);
	return (uint64_t)p + 10 + (int64_t)rel;
}

static void print_bytes(const char *label, const uint8_t *p)
{
	printf("%s=", label);
	for (int i = 0; i < 10; i++)
		printf("%02x", p[i]);
	printf(" ");
}

/* none: no call in the site; in: the call lands on a trampoline's first byte; mid: inside a
   trampoline mapping but not at its start; out: anywhere else */
static const char *target_class(const uint8_t *p)
{
	uint64_t t = call_target(p);
	return !t ? "none" : at_trampoline(t) ? "in" : in_trampoline(t) ? "mid" : "out";
}

/* ---- reach: trampoline placement at and around the rel32 boundary ------------------------ */

#define EDGE_PAIR 0x2000
#define HOME 0x600000000000ull
#define TWO_GIB 0x80000000ull

static uint64_t edge_file_offset(void)
{
	struct mapping m;
	uint64_t page = (uint64_t)site_tail0 & ~0xfffull;
	if (!find_mapping(page, &m))
		return (uint64_t)-1;
	return page - m.lo + m.pgoff;
}

static site_fn map_edge_at(uint64_t at, int extra_flags)
{
	int fd = open("/proc/self/exe", O_RDONLY);
	if (fd < 0)
		return NULL;
	void *p = mmap((void *)at, EDGE_PAIR, PROT_READ | PROT_EXEC,
		       MAP_PRIVATE | extra_flags, fd, (off_t)edge_file_offset());
	close(fd);
	if (p != (void *)at)
		return NULL;
	return (site_fn)(at + ((uint64_t)site_tail0 & 0xfff));
}

static uint64_t tramp_base;
static long reach_calls;

static void on_crash(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char text[160];
	int n = snprintf(text, sizeof(text), "calls=%ld crashed=%d fault=%+lld\n", reach_calls,
			 sig, (long long)((uint64_t)si->si_addr - tramp_base));
	write(1, text, n);
	_exit(3);
}

static int call_n(site_fn fn, int n)
{
	for (int i = 0; i < n; i++) {
		reach_calls++;
		if (fn(i) != i + 1)
			return -1;
	}
	return 0;
}

/* map the page pair at `at` and call its nop10 three times: the site, or NULL after printing
   why (setup=map_failed, or wrong_result with the calls made so far) */
static site_fn map_and_call(uint64_t at, int flags)
{
	site_fn fn = map_edge_at(at, flags);
	if (!fn) {
		printf("setup=map_failed errno=%d\n", errno);
		return NULL;
	}
	if (call_n(fn, 3)) {
		printf("calls=%ld wrong_result=1\n", reach_calls);
		return NULL;
	}
	return fn;
}

static int reach(const char *which)
{
	struct sigaction sa = {.sa_sigaction = on_crash, .sa_flags = SA_SIGINFO};
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	setvbuf(stdout, NULL, _IONBF, 0);

	if (!strcmp(which, "noroom")) {
		uint64_t size = 6 * (1ull << 30), start = HOME - 3 * (1ull << 30);
		void *r = mmap((void *)start, size, PROT_NONE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
			       -1, 0);
		if (r != (void *)start) {
			printf("setup=reservation_failed errno=%d\n", errno);
			return 2;
		}
		site_fn a = map_and_call(HOME, MAP_FIXED);
		if (!a)
			return 2;
		printf("calls=%ld ", reach_calls);
		print_bytes("a_site", (const uint8_t *)a);
		printf("a_call_target=%s\n", target_class((const uint8_t *)a));
		return 0;
	}

	site_fn home = map_and_call(HOME, MAP_FIXED_NOREPLACE);
	if (!home)
		return 2;
	const uint8_t *h = (const uint8_t *)home;
	printf("calls_home=3 ");
	print_bytes("home_site", h);
	printf("home_call_target=%s ", target_class(h));
	if (!is_optimized(h)) {
		printf("optimized=no calls=%ld\n", reach_calls);
		return 0;
	}
	printf("optimized=yes ");
	if (!at_trampoline(call_target(h))) {
		printf("calls=%ld\n", reach_calls);
		return 1;
	}
	tramp_base = call_target(h);

	int64_t distance;                  /* T - (A's call end), A's call end = A + 0x1000 */
	if (!strcmp(which, "plus_edge"))
		distance = (int64_t)TWO_GIB;
	else if (!strcmp(which, "plus_in"))
		distance = (int64_t)TWO_GIB - 4096;
	else if (!strcmp(which, "minus_edge"))
		distance = -(int64_t)TWO_GIB;
	else if (!strcmp(which, "minus_out"))
		distance = -(int64_t)TWO_GIB - 4096;
	else {
		fprintf(stderr, "opt reach: unknown case %s\n", which);
		return 2;
	}
	uint64_t a_at = tramp_base - distance - 0x1000;
	printf("distance=%lld ", (long long)distance);
	site_fn a = map_and_call(a_at, MAP_FIXED_NOREPLACE);
	if (!a)
		return 2;
	const uint8_t *ab = (const uint8_t *)a;
	printf("calls=%ld ", reach_calls);
	print_bytes("a_site", ab);
	printf("a_call_target=%s a_reused=%s\n", target_class(ab),
	       call_target(ab) == tramp_base ? "yes" : "no");
	return 0;
}

/* ---- syscall user dispatch ------------------------------------------------------------ */

static volatile char selector = SYSCALL_DISPATCH_FILTER_ALLOW;
static volatile long sigsys_count, sigsys_nr = -1;
static volatile uint64_t sigsys_addr;

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
	(void)sig; (void)uc;
	sigsys_count++;
	sigsys_nr = si->si_syscall;
	sigsys_addr = (uint64_t)si->si_call_addr;
}

static int sud(long n)
{
	struct mapping text;
	if (!find_mapping((uint64_t)sud, &text)) {
		printf("setup=no_text_mapping\n");
		return 2;
	}
	struct sigaction sa = {.sa_sigaction = on_sigsys, .sa_flags = SA_SIGINFO};
	sigaction(SIGSYS, &sa, NULL);
	if (prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_ON, text.lo, text.hi - text.lo,
		  &selector)) {
		printf("sud=unsupported errno=%d\n", errno);
		return 0;
	}
	/* a syscall 336 of the program's own, from outside the allowed range: it must still
	   be dispatched (the exemption is for the trampolines, not for the number) */
	static const uint8_t stub[] = {0xb8, 0x50, 0x01, 0x00, 0x00,   /* mov $336, %eax */
				       0x0f, 0x05, 0xc3};              /* syscall; ret */
	uint8_t *foreign = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (foreign == MAP_FAILED) {
		printf("setup=no_stub_page errno=%d\n", errno);
		return 2;
	}
	memcpy(foreign, stub, sizeof(stub));
	mprotect(foreign, 4096, PROT_READ | PROT_EXEC);

	long bad = 0, done = 0;
	site_fn volatile entry = site_nop10, ret = site_ret;
	for (long i = 0; i < n; i++) {
		selector = SYSCALL_DISPATCH_FILTER_BLOCK;
		long r1 = entry(i), r2 = ret(i);
		selector = SYSCALL_DISPATCH_FILTER_ALLOW;
		bad += (r1 != i + 1) + (r2 != i + 1);
		done++;
	}
	long probe_sigsys = sigsys_count, probe_nr = sigsys_nr;
	uint64_t probe_addr = sigsys_addr;
	selector = SYSCALL_DISPATCH_FILTER_BLOCK;
	((void (*)(void))foreign)();
	selector = SYSCALL_DISPATCH_FILTER_ALLOW;
	long foreign_sigsys = sigsys_count - probe_sigsys;
	prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0);
	const uint8_t *p = (const uint8_t *)site_nop10;
	struct mapping where = {0};
	int found = probe_sigsys && find_mapping(probe_addr, &where);
	printf("sud=on calls=%ld bad=%ld sigsys=%ld sigsys_nr=%ld sigsys_in=%s "
	       "foreign_sigsys=%ld foreign_nr=%ld ", done, bad, probe_sigsys, probe_nr,
	       !probe_sigsys ? "none" : !found ? "unmapped" : where.name[0] ? where.name : "anon",
	       foreign_sigsys, sigsys_nr);
	print_bytes("site", p);
	printf("\n");
	return 0;
}

/* ---- seccomp ---------------------------------------------------------------------------- */

static int seccomp_mode(const char *mode, long n)
{
	char text[200];
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_write, 4, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit, 3, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_exit_group, 2, 0),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_rt_sigreturn, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
	int strict = !strcmp(mode, "strict");
	if (!strict && strcmp(mode, "filter")) {
		fprintf(stderr, "opt seccomp: filter or strict\n");
		return 2;
	}
	fflush(stdout);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    (strict ? prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0)
		    : syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog))) {
		printf("seccomp=unsupported errno=%d\n", errno);
		return 0;
	}
	/* from here on: write and exit only (no stdio flushing, no exit_group in strict mode) */
	long bad = 0, done = 0;
	site_fn volatile fn = site_nop10;
	for (long i = 0; i < n; i++) {
		bad += fn(i) != i + 1;
		done++;
	}
	const uint8_t *p = (const uint8_t *)site_nop10;
	int len = snprintf(text, sizeof(text), "seccomp=%s calls=%ld bad=%ld site=", mode, done,
			   bad);
	for (int i = 0; i < 10; i++)
		len += snprintf(text + len, sizeof(text) - len, "%02x", p[i]);
	text[len++] = '\n';
	syscall(SYS_write, 1, text, len);
	syscall(SYS_exit, 0);
	return 0;
}

/* ---- fork, vfork, exec ------------------------------------------------------------------ */

static long clone_calls_bad = -1;

static int clone_child(void *arg)
{
	long n = (long)arg, bad = 0;
	site_fn volatile fn = site_nop10;
	for (long i = 0; i < n; i++)
		bad += fn(i) != i + 1;
	clone_calls_bad = bad;         /* CLONE_VM: the parent sees it after the vfork wait */
	return 0;
}

static int fork_mode(long n, const char *self)
{
	site_fn volatile fn = site_nop10;
	long bad = 0;
	for (long i = 0; i < n; i++)
		bad += fn(i) != i + 1;
	const uint8_t *p = (const uint8_t *)site_nop10;
	printf("parent_bad=%ld ", bad);
	print_bytes("parent_site", p);
	printf("parent_call_target=%s ", target_class(p));
	fflush(stdout);

	pid_t child = fork();
	if (child < 0) {
		printf("setup=fork_failed errno=%d\n", errno);
		return 2;
	}
	if (child == 0) {
		long cbad = 0;
		for (long i = 0; i < n; i++)
			cbad += fn(i) != i + 1;
		printf("fork_bad=%ld ", cbad);
		print_bytes("fork_site", p);
		printf("fork_call_target=%s ", target_class(p));
		fflush(stdout);
		_exit(0);
	}
	int status;
	waitpid(child, &status, 0);
	printf("fork_status=%d ", status);

	static char stack[1 << 16] __attribute__((aligned(16)));
	pid_t vchild = clone(clone_child, stack + sizeof(stack), CLONE_VM | CLONE_VFORK | SIGCHLD,
			     (void *)n);
	if (vchild < 0) {
		printf("setup=clone_failed errno=%d\n", errno);
		return 2;
	}
	waitpid(vchild, &status, 0);
	printf("vfork_bad=%ld vfork_status=%d\n", clone_calls_bad, status);
	fflush(stdout);

	char count[32];
	snprintf(count, sizeof(count), "%ld", n);
	execl(self, "opt", "calls", count, "exec", (char *)NULL);
	printf("exec_failed errno=%d\n", errno);
	return 1;
}

/* ---- a thread stopped between the lea and the call ------------------------------------- */

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	int ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok ? 0 : -1;
}

static int read_child(pid_t child, uint64_t addr, uint8_t *out)
{
	char mem[64];
	snprintf(mem, sizeof(mem), "/proc/%d/mem", child);
	int fd = open(mem, O_RDONLY);
	int ok = fd >= 0 && pread(fd, out, 10, (off_t)addr) == 10;
	if (fd >= 0)
		close(fd);
	return ok ? 0 : -1;
}

static volatile long traps;

static void on_trap(int sig)
{
	(void)sig;
	traps++;
}

static int stepped(const char *enable, const char *action)
{
	int offon = !strcmp(action, "offon");
	if (!offon && strcmp(action, "off")) {
		fprintf(stderr, "opt stepped: off or offon\n");
		return 2;
	}
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {
		/* counts SIGTRAPs after the detach (there must be none: a trap left by the
		   tracer would be a harness fault, not the kernel's uprobes) */
		signal(SIGTRAP, on_trap);
		void (*volatile fn)(void) = site_opt;
		for (long i = 0; i < 3; i++)
			fn();
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL))
			_exit(2);
		raise(SIGSTOP);
		int bad = opt_check_site_once((uint64_t)site_opt);
		printf("child_traps=%ld ", traps);
		fflush(stdout);
		_exit(bad);
	}
	int status = 0;
	if (child < 0 || waitpid(child, &status, 0) != child || !WIFSTOPPED(status)) {
		printf("setup=child_did_not_stop status=%d\n", status);
		return 2;
	}
	uint64_t between = (uint64_t)site_opt + 5;
	uint8_t stopped_site[10] = {0}, paused_site[10] = {0};
	int unread = read_child(child, (uint64_t)site_opt, stopped_site);
	print_bytes("stopped_site", stopped_site);
	/* an int3 on run_site's `call *site`, then two single steps: the call and the lea.
	   Single-stepping there from raise() would cross run_site's popf, and x86 ptrace
	   loses track of its own TF after stepping a popf that clears it: enable_single_step()
	   sets TF again for the next step but takes it for the user's, so PTRACE_DETACH
	   leaves it set and the child traps on every later insn (7.3, and a 6.18 host
	   without any probe: push $0x202; popf; nop, stepped, then detached) */
	struct user_regs_struct regs;
	long steps = 0;
	uint64_t at = (uint64_t)run_site_call;
	errno = 0;
	long word = ptrace(PTRACE_PEEKTEXT, child, (void *)at, NULL);
	if (errno || ptrace(PTRACE_POKETEXT, child, (void *)at, (void *)((word & ~0xffL) | 0xcc)) ||
	    ptrace(PTRACE_CONT, child, NULL, NULL)) {
		printf("setup=breakpoint_failed errno=%d\n", errno);
		kill(child, SIGKILL);
		return 2;
	}
	waitpid(child, &status, 0);
	memset(&regs, 0, sizeof(regs));
	if (WIFSTOPPED(status))
		ptrace(PTRACE_GETREGS, child, NULL, &regs);
	if (!WIFSTOPPED(status) || regs.rip != at + 1) {
		printf("setup=breakpoint_missed status=%d rip=%#llx\n", status,
		       (unsigned long long)regs.rip);
		kill(child, SIGKILL);
		return 2;
	}
	ptrace(PTRACE_POKETEXT, child, (void *)at, (void *)word);
	regs.rip = at;
	ptrace(PTRACE_SETREGS, child, NULL, &regs);
	while (regs.rip != between && steps < 2) {
		if (ptrace(PTRACE_SINGLESTEP, child, NULL, NULL))
			break;
		waitpid(child, &status, 0);
		if (!WIFSTOPPED(status))
			break;
		steps++;
		ptrace(PTRACE_GETREGS, child, NULL, &regs);
	}
	int reached = regs.rip == between, failed = 0;
	if (reached) {
		failed = write_file(enable, "0\n");
		if (offon && !failed)
			failed = write_file(enable, "1\n");
		unread |= read_child(child, (uint64_t)site_opt, paused_site);
	}
	ptrace(PTRACE_DETACH, child, NULL, NULL);
	waitpid(child, &status, 0);
	printf("reached_between=%s steps=%ld toggle_failed=%d mem_unread=%d ",
	       reached ? "yes" : "no", steps, failed, unread ? 1 : 0);
	print_bytes("paused_site", paused_site);
	printf("child_exited=%d child_status=%d\n", WIFEXITED(status),
	       WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	return 0;
}

/* ---- 32-bit code in this 64-bit process ------------------------------------------------ */

extern long call_in_32bit_mode(long value, void *low_stack_top);
extern char site_opt32[];

static int seg32(long n)
{
	char *stack = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
	if (stack == MAP_FAILED) {
		printf("setup=no_low_stack errno=%d\n", errno);
		return 2;
	}
	long bad = 0;
	for (long i = 0; i < n; i++)
		bad += (uint32_t)call_in_32bit_mode(i, stack + (1 << 16)) != (uint32_t)(i + 1);
	const uint8_t *p = (const uint8_t *)site_opt32;
	printf("calls=%ld bad=%ld ", n, bad);
	print_bytes("site", p);
	printf("site_call_target=%s\n", target_class(p));
	return 0;
}

/* ---- the nop10 at each of the last ten bytes of a page ---------------------------------- */

extern long site_tail0(long), site_tail1(long), site_tail2(long), site_tail3(long),
	site_tail4(long), site_tail5(long), site_tail6(long), site_tail7(long),
	site_tail8(long), site_tail9(long);

static int tail(long n)
{
	static site_fn const sites[10] = {site_tail0, site_tail1, site_tail2, site_tail3,
		site_tail4, site_tail5, site_tail6, site_tail7, site_tail8, site_tail9};
	for (int k = 0; k < 10; k++) {
		site_fn volatile fn = sites[k];
		long bad = 0;
		for (long i = 0; i < n; i++)
			bad += fn(i) != i + 1;
		char key[32];
		snprintf(key, sizeof(key), "tail%d_site", k);
		printf("tail%d_offset=%#lx tail%d_bad=%ld ", k, (uint64_t)fn & 0xfff, k, bad);
		print_bytes(key, (const uint8_t *)fn);
	}
	printf("\n");
	return 0;
}

/* opt calls N LABEL: N calls of site_nop10, then the site's bytes (the exec'd image of fork) */
static int calls_mode(long n, const char *label)
{
	site_fn volatile fn = site_nop10;
	long bad = 0;
	for (long i = 0; i < n; i++)
		bad += fn(i) != i + 1;
	const uint8_t *p = (const uint8_t *)site_nop10;
	char key[64];
	printf("%s_bad=%ld ", label, bad);
	snprintf(key, sizeof(key), "%s_site", label);
	print_bytes(key, p);
	printf("%s_call_target=%s\n", label, target_class(p));
	return 0;
}

/* ---- swap: the probed mapping replaced between the first hit and the rewrite ----------- */

static atomic_int swap_entering, swap_stop;
static atomic_long swap_calls, swap_traps;
static site_fn volatile swap_fn;

/* a call that ran into the other mapping's int3: finish site_tail0's job (rax = rdi + 1)
   and return to its caller. At byte 5 the optimized site's lea had run: undo it first */
static void swap_on_trap(int sig, siginfo_t *si, void *ucv)
{
	(void)sig; (void)si;
	ucontext_t *uc = ucv;
	greg_t *r = uc->uc_mcontext.gregs;
	if ((uint64_t)r[REG_RIP] - 1 == (uint64_t)swap_fn + 5)
		r[REG_RSP] += 0x80;
	r[REG_RAX] = r[REG_RDI] + 1;
	r[REG_RIP] = *(greg_t *)r[REG_RSP];
	r[REG_RSP] += 8;
	atomic_fetch_add(&swap_traps, 1);
}

static void *swap_caller(void *arg)
{
	(void)arg;
	for (long i = 0; !atomic_load(&swap_stop); i++) {
		atomic_store(&swap_entering, 1);
		long got = swap_fn(i);
		atomic_store(&swap_entering, 0);
		if (got != i + 1) {
			printf("swap_wrong_result=%ld/%ld\n", got, i);
			atomic_store(&swap_stop, 1);
		}
		atomic_fetch_add(&swap_calls, 1);
	}
	return NULL;
}

/* N times: map the probed page pair of site_tail0 at HOME, wait until a thread is calling
   its nop10 (the first hit of this fresh mapping goes through int3, then the kernel rewrites
   it), and map over it, at once, a file of int3 bytes (as lld pads code). The kernel must
   never write into that file's pages: swap_foreign_written counts the times its bytes at the
   site were not int3 any more */
static int swap_mode(long n)
{
	struct sigaction sa = {.sa_sigaction = swap_on_trap, .sa_flags = SA_SIGINFO};
	sigaction(SIGTRAP, &sa, NULL);
	int foreign = memfd_create("int3-padding", 0);
	uint8_t pad[EDGE_PAIR];
	memset(pad, 0xcc, sizeof(pad));
	if (foreign < 0 || write(foreign, pad, sizeof(pad)) != (ssize_t)sizeof(pad)) {
		printf("setup=memfd_failed\n");
		return 2;
	}
	int self = open("/proc/self/exe", O_RDONLY);
	off_t off = (off_t)edge_file_offset();
	uint64_t site_off = (uint64_t)site_tail0 & 0xfff;
	void *home = mmap((void *)HOME, EDGE_PAIR, PROT_READ | PROT_EXEC,
			  MAP_PRIVATE | MAP_FIXED_NOREPLACE, self, off);
	if (home != (void *)HOME) {
		printf("setup=map_failed\n");
		return 2;
	}
	swap_fn = (site_fn)(HOME + site_off);
	pthread_t caller;
	pthread_create(&caller, NULL, swap_caller, NULL);
	long written = 0, raced = 0;
	for (long k = 0; k < n && !atomic_load(&swap_stop); k++) {
		mmap((void *)HOME, EDGE_PAIR, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED,
		     self, off);
		for (long spin = 0; spin < 1000000 && !atomic_load(&swap_entering); spin++)
			;
		long before = atomic_load(&swap_calls);
		mmap((void *)HOME, EDGE_PAIR, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_FIXED,
		     foreign, 0);
		raced += atomic_load(&swap_calls) == before;
		for (long spin = 0; spin < 100000 && atomic_load(&swap_entering); spin++)
			;
		const uint8_t *p = (const uint8_t *)(HOME + site_off);
		int clean = 1;
		for (int i = 0; i < 10; i++)
			clean &= p[i] == 0xcc;
		if (!clean) {
			if (!written)
				print_bytes("swap_foreign_bytes", p);
			written++;
		}
	}
	atomic_store(&swap_stop, 1);
	pthread_join(caller, NULL);
	printf("swaps=%ld swap_calls=%ld swap_traps=%ld swap_raced=%ld swap_foreign_written=%ld\n",
	       n, atomic_load(&swap_calls), atomic_load(&swap_traps), raced, written);
	return 0;
}

/* ---- serve: one process whose optimized site outlives other processes' events --------- */

extern long call_on_stack(site_fn fn, long value, void *stack_top, uint64_t *rsp_after);

/* body() in a forked child (the caller survives its crash): the child's exit status, or
   128 + the signal that killed it (also in *signal_out) */
static int in_child(int (*body)(void), int *signal_out)
{
	*signal_out = 0;
	pid_t child = fork();
	if (child < 0)
		return -1;
	if (child == 0)
		_exit(body());
	int status;
	if (waitpid(child, &status, 0) != child)
		return -1;
	if (WIFSIGNALED(status)) {
		*signal_out = WTERMSIG(status);
		return 128 + WTERMSIG(status);
	}
	return WEXITSTATUS(status);
}

/* site_tail0(41) with %rsp = top: 0 when it returned 42 on a balanced stack */
static int call_site_on(uint8_t *top)
{
	uint64_t after = 0;
	long got = call_on_stack(site_tail0, 41, top, &after);
	return got == 42 && after == (uint64_t)top ? 0 : 1;
}

/* on a stack whose low 16 bits are 0x40 where the site starts (a 16-bit
   `lea -0x80(%rsp),%sp` would move %rsp by 64 KiB there) */
static int low_stack_body(void)
{
	uint8_t *area = mmap(NULL, 0x40000, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		return 2;
	uint64_t base = ((uint64_t)area + 0x1ffff) & ~0xffffull;   /* 64 KiB aligned */
	return call_site_on((uint8_t *)base + 0x48);     /* the call leaves base + 0x40 */
}

/* on a stack whose lowest mapped byte is 0x40 below %rsp at the site, with a PROT_NONE
   guard page under it, as a thread stack near its end (the unprobed function needs no
   stack below %rsp) */
static int guard_body(void)
{
	uint8_t *area = mmap(NULL, 0x3000, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED || mprotect(area, 0x1000, PROT_NONE))
		return 2;
	return call_site_on(area + 0x1000 + 0x48);       /* the call leaves page + 0x40 */
}

static int plain_body(void)
{
	return site_tail0(41) == 42 ? 0 : 1;
}

/* what the program does to the trampoline site_tail0 calls: munmap it, mprotect it
   PROT_NONE, or map anonymous memory over it with MAP_FIXED: 0 or errno */
static int change_trampoline(const char *how)
{
	uint64_t t = call_target((const uint8_t *)site_tail0);
	if (!t || !in_trampoline(t))
		return -1;
	t &= ~0xfffull;
	int ok;
	if (!strcmp(how, "munmap"))
		ok = munmap((void *)t, 4096) == 0;
	else if (!strcmp(how, "protnone"))
		ok = mprotect((void *)t, 4096, PROT_NONE) == 0;
	else
		ok = mmap((void *)t, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == (void *)t;
	return ok ? 0 : errno;
}

/* commands on stdin, one reply line each on stdout:
     call N   N calls of site_tail0 -> calls=N bad=K
     show     -> site=BYTES call_target=in|mid|out|none
     lowsp    -> lowsp_status=S lowsp_signal=G (low_stack_body, in a child)
     guard    -> guard_status=S guard_signal=G (guard_body, in a child)
     child    -> child_status=S child_signal=G (one plain call, in a child)
     tramp munmap|protnone|fixed -> tramp_HOW=0|errno|-1 (no trampoline) (change_trampoline)
     quit     */
static int serve(void)
{
	char line[128];
	setvbuf(stdout, NULL, _IOLBF, 0);
	const uint8_t *p = (const uint8_t *)site_tail0;
	printf("ready=1\n");
	while (fgets(line, sizeof(line), stdin)) {
		long n;
		if (sscanf(line, "call %ld", &n) == 1) {
			site_fn volatile fn = site_tail0;
			long bad = 0;
			for (long i = 0; i < n; i++)
				bad += fn(i) != i + 1;
			printf("calls=%ld bad=%ld\n", n, bad);
		} else if (!strncmp(line, "show", 4)) {
			print_bytes("site", p);
			printf("call_target=%s\n", target_class(p));
		} else if (!strncmp(line, "lowsp", 5)) {
			int sig, status = in_child(low_stack_body, &sig);
			printf("lowsp_status=%d lowsp_signal=%d\n", status, sig);
		} else if (!strncmp(line, "guard", 5)) {
			int sig, status = in_child(guard_body, &sig);
			printf("guard_status=%d guard_signal=%d\n", status, sig);
		} else if (!strncmp(line, "child", 5)) {
			int sig, status = in_child(plain_body, &sig);
			printf("child_status=%d child_signal=%d\n", status, sig);
		} else if (!strncmp(line, "tramp ", 6)) {
			char how[16] = "";
			sscanf(line + 6, "%15s", how);
			printf("tramp_%s=%d\n", how, change_trampoline(how));
		} else if (!strncmp(line, "quit", 4)) {
			return 0;
		} else {
			printf("error=unknown_command\n");
		}
	}
	return 0;
}

int opt_env_main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "serve"))
		return serve();
	if (argc == 3 && !strcmp(argv[1], "swap"))
		return swap_mode(atol(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "tail"))
		return tail(atol(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "seg32"))
		return seg32(atol(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "calls"))
		return calls_mode(atol(argv[2]), argv[3]);
	if (argc == 3 && !strcmp(argv[1], "reach"))
		return reach(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "sud"))
		return sud(atol(argv[2]));
	if (argc == 4 && !strcmp(argv[1], "seccomp"))
		return seccomp_mode(argv[2], atol(argv[3]));
	if (argc == 3 && !strcmp(argv[1], "fork"))
		return fork_mode(atol(argv[2]), "/proc/self/exe");
	if (argc == 4 && !strcmp(argv[1], "stepped"))
		return stepped(argv[2], argv[3]);
	return -1;
}
