/* Counts how often each of a list of code addresses is executed by one process, without
 * uprobes: the way a debugger does it, with ptrace. Each address gets an int3 in the traced
 * child; on the trap the original byte is put back, the child single-steps over the
 * instruction, and the int3 goes back in. Only the site's own byte is ever written (read,
 * change one byte, write back), so sites may be adjacent instructions. An oracle for uprobes
 * hit counts that shares none of their code (only the int3).
 *
 * usage: bpcount ADDRFILE -- CMD [ARG...]
 *   ADDRFILE: one hexadecimal virtual address per line (a non-PIE static CMD)
 * prints on stderr, after CMD ran (its stdout/stderr pass through):
 *   bpcount status=<wait status> traps=<total> then one line per address: <addr> <count>
 * exit: 0, or 2 on a setup error; CMD must not fork (its children are not traced)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

struct site {
	uint64_t addr;
	uint8_t byte; /* the original byte at addr */
	uint64_t count;
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
	uint64_t traps = 0;
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
	fprintf(stderr, "bpcount status=%d traps=%llu\n", status, (unsigned long long)traps);
	for (size_t i = 0; i < nsites; i++)
		if (sites[i].count)
			fprintf(stderr, "%llx %llu\n", (unsigned long long)sites[i].addr,
				(unsigned long long)sites[i].count);
	return 0;
}
