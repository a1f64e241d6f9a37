/* Stack-VMA scenarios: a probed push/call whose store lands below the lowest page of the
 * stack VMA (the kernel must grow the stack while handling the probe), at the stack rlimit,
 * and in a thread stack's guard page. Prints key=value lines that must be identical with
 * and without a probe; a fatal signal is caught on an alternate stack and printed with its
 * si_code, si_addr and the instruction pointer.
 *
 * usage: stack SCENARIO SITE
 *   SCENARIO: grow | rlimit | guard | uffd   SITE: push | push_r12 | push_rexw | pushw | call
 *   (built with -m32, a compat task: SITE is push | push_ebx | pushw | call)
 *
 * uffd: the stack pointer is put at the top of a missing page of a userfaultfd region
 * registered with UFFD_USER_MODE_ONLY. A store from the kernel (an emulated push/call)
 * fails there; the same store from user mode faults, the handler thread supplies a zero
 * page, and the store succeeds. Exit status 3: userfaultfd is not available.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

long push_at(void *sp, long value);
long pushw_at(void *sp, long value);
long call_at(void *sp);
extern char call_return_label[];
#ifdef __i386__                  /* a 32-bit (compat) task: stack_sites.S has its own sites */
long push_ebx_at(void *sp, long value);
#define REG_IP REG_EIP
static const long pattern = 0x5ca1ab1eL;
#else
long push_r12_at(void *sp, long value);
long push_rexw_at(void *sp, long value);
#define REG_IP REG_RIP
static const long pattern = 0x5ca1ab1e0ddba11L;
#endif

static const char *site;
static __thread uintptr_t fault_reference;   /* the sp handed to the site */

static void stack_vma(uintptr_t *start, uintptr_t *end)
{
	FILE *maps = fopen("/proc/self/maps", "r");
	char line[512];
	*start = *end = 0;
	while (maps && fgets(line, sizeof(line), maps)) {
		unsigned long low, high;
		if (strstr(line, "[stack]") && sscanf(line, "%lx-%lx", &low, &high) == 2) {
			*start = low;
			*end = high;
		}
	}
	if (maps)
		fclose(maps);
}

static void on_fatal(int sig, siginfo_t *info, void *context)
{
	ucontext_t *uc = context;
	char text[200];
	/* addresses relative to the sp given to the site, so runs compare despite ASLR */
	int n = snprintf(text, sizeof(text), "signal=%d code=%d addr=sp%+ld ip=%#llx\n", sig,
			 info->si_code, (long)((uintptr_t)info->si_addr - fault_reference),
			 (unsigned long long)(unsigned long)uc->uc_mcontext.gregs[REG_IP]);
	write(1, text, n);
	_exit(0);
}

static void catch_fatal_signals(void)
{
	static __thread char *alt;
	stack_t ss = {.ss_size = 65536};
	if (!alt)
		alt = malloc(ss.ss_size);
	ss.ss_sp = alt;
	sigaltstack(&ss, NULL);
	struct sigaction sa = {.sa_sigaction = on_fatal, .sa_flags = SA_SIGINFO | SA_ONSTACK};
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGTRAP, &sa, NULL);
}

/* Run the site with the stack pointer at sp; print what the store left on the stack. */
static void run_site(uintptr_t sp)
{
	long got;
	fault_reference = sp;
	if (!strcmp(site, "push"))
		got = push_at((void *)sp, pattern);
#ifdef __i386__
	else if (!strcmp(site, "push_ebx"))
		got = push_ebx_at((void *)sp, pattern);
#else
	else if (!strcmp(site, "push_r12"))
		got = push_r12_at((void *)sp, pattern);
	else if (!strcmp(site, "push_rexw"))
		got = push_rexw_at((void *)sp, pattern);
#endif
	else if (!strcmp(site, "pushw"))
		got = pushw_at((void *)sp, pattern) & 0xffff;
	else if (!strcmp(site, "call"))
		got = call_at((void *)sp) == (long)call_return_label ? pattern : -1;
	else {
		printf("unknown site %s\n", site);
		exit(2);
	}
	long want = !strcmp(site, "pushw") ? (pattern & 0xffff) : pattern;
	printf("stored=%s\n", got == want ? "ok" : "WRONG");
}

static void *guard_thread(void *arg)
{
	(void)arg;
	catch_fatal_signals();
	pthread_attr_t attr;
	void *base;
	size_t size;
	pthread_getattr_np(pthread_self(), &attr);
	pthread_attr_getstack(&attr, &base, &size);
	/* sp at the lowest usable address: the store lands in the guard page below it */
	run_site((uintptr_t)base);
	printf("no fault in the guard page\n");
	exit(0);
}

static int uffd;

static void *uffd_handler(void *arg)
{
	(void)arg;
	for (;;) {
		struct pollfd pfd = {.fd = uffd, .events = POLLIN};
		if (poll(&pfd, 1, -1) < 0)
			return NULL;
		struct uffd_msg msg;
		if (read(uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_zeropage zero = {
			.range = {.start = msg.arg.pagefault.address & ~4095UL, .len = 4096}};
		ioctl(uffd, UFFDIO_ZEROPAGE, &zero);
	}
}

/* A region whose pages only user-mode faults can populate; returns its base or NULL. */
static char *user_mode_only_region(size_t pages)
{
	uffd = syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	if (uffd < 0)
		return NULL;
	struct uffdio_api api = {.api = UFFD_API};
	if (ioctl(uffd, UFFDIO_API, &api))
		return NULL;
	char *region = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return NULL;
	struct uffdio_register reg = {
		.range = {.start = (unsigned long)region, .len = pages * 4096},
		.mode = UFFDIO_REGISTER_MODE_MISSING};
	if (ioctl(uffd, UFFDIO_REGISTER, &reg))
		return NULL;
	pthread_t tid;
	pthread_create(&tid, NULL, uffd_handler, NULL);
	return region;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s grow|rlimit|guard SITE\n", argv[0]);
		return 2;
	}
	site = argv[2];
	setvbuf(stdout, NULL, _IONBF, 0);
	catch_fatal_signals();
	uintptr_t start, end, start_after, end_after;
	stack_vma(&start, &end);
	if (!start) {
		printf("no [stack] mapping\n");
		return 2;
	}
	if (!strcmp(argv[1], "grow")) {
		run_site(start);
		stack_vma(&start_after, &end_after);
		printf("grew_pages=%lu\n", (unsigned long)((start - start_after) / 4096));
	} else if (!strcmp(argv[1], "rlimit")) {
		struct rlimit limit = {.rlim_cur = end - start, .rlim_max = RLIM_INFINITY};
		if (setrlimit(RLIMIT_STACK, &limit)) {
			perror("setrlimit");
			return 2;
		}
		run_site(start);
		printf("no fault at the stack limit\n");
	} else if (!strcmp(argv[1], "uffd")) {
		char *region = user_mode_only_region(2);
		if (!region) {
			printf("userfaultfd unavailable: %s\n", strerror(errno));
			return 3;
		}
		/* the page below sp is missing; the store must be served by the handler */
		run_site((uintptr_t)(region + 4096));
		printf("after=ok\n");
	} else if (!strcmp(argv[1], "guard")) {
		/* the thread ends the process (on the fault, or after the site); no join: a
		 * 32-bit glibc waits with the time32 futex call, which a kernel without
		 * CONFIG_COMPAT_32BIT_TIME (the base config) refuses */
		pthread_t tid;
		pthread_create(&tid, NULL, guard_thread, NULL);
		for (;;)
			pause();
	} else {
		printf("unknown scenario %s\n", argv[1]);
		return 2;
	}
	return 0;
}
