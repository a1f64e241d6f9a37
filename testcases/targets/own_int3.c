/* A program with a breakpoint of its own: own_int3 is an int3 it executes on purpose (as
 * debug-break macros do) and whose SIGTRAP it catches. Prints traps=N; exit 0 when each of
 * the N breakpoints trapped once.
 *
 *   own_int3 [N]    (default 3)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t traps;

static void on_trap(int sig)
{
	(void)sig;
	traps++;
}

__attribute__((noinline, noclone)) static void breakpoint(void)
{
	__asm__ volatile(".globl own_int3\nown_int3:\n\tint3\n" ::: "memory");
}

int main(int argc, char **argv)
{
	int times = argc > 1 ? atoi(argv[1]) : 3;
	struct sigaction action;

	memset(&action, 0, sizeof(action));
	action.sa_handler = on_trap;
	sigaction(SIGTRAP, &action, NULL);
	for (int i = 0; i < times; i++)
		breakpoint();
	printf("traps=%d\n", (int)traps);
	return traps == times ? 0 : 1;
}
