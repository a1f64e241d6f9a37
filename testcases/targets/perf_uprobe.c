/* A uprobe consumer through perf_event_open and the "uprobe" PMU (what `perf record -e
 * uprobe:...` and BPF's perf-based attach use), counting hits of PATH+OFFSET while it runs
 * CMD.
 *
 * usage: perf_uprobe [-p | -P PID] [-r] [-t] PATH OFFSET -- CMD [ARG...]
 *   -p  bound to CMD's process (and its threads: inherit), enabled at its exec: the
 *       breakpoint is installed when CMD maps PATH (the mmap path of the uprobe filter)
 *   -P PID  bound to the running process PID (inherit) for as long as CMD runs (e.g.
 *       `sleep 1`): the breakpoint is installed into the processes mapping PATH that the
 *       filter accepts (the registration path of the uprobe filter); the count is PID's
 *   (default) system-wide: one event per online CPU, every process counted
 *   -r  a return probe
 *   -t  toggled: instead of one event for the whole run, open and close a system-wide
 *       event again and again while CMD runs (a consumer added and removed under load);
 *       the count is then meaningless and not printed
 * prints (after CMD's own output): perf_count=<n> toggles=<n> status=<CMD's wait status>
 * exit: 0, or 2 when the event cannot be opened (errno printed)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "held_child.h"
#include "uprobe_pmu.h"

#define MAX_CPUS 256

static int open_event(int type, const char *path, uint64_t offset, int ret, pid_t pid, int cpu,
		      int on_exec)
{
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = type;
	attr.config = ret ? 1 : 0; /* format/retprobe: config:0 */
	attr.config1 = (uint64_t)(uintptr_t)path; /* uprobe_path */
	attr.config2 = offset;                   /* probe_offset */
	attr.disabled = on_exec;
	attr.enable_on_exec = on_exec;
	attr.inherit = pid > 0;
	return (int)syscall(SYS_perf_event_open, &attr, pid, cpu, -1, 0);
}

static uint64_t read_count(int fd)
{
	uint64_t value = 0;
	if (read(fd, &value, sizeof(value)) != sizeof(value))
		return 0;
	return value;
}

int main(int argc, char **argv)
{
	int filtered = 0, ret = 0, toggled = 0, opt;
	pid_t attach = 0;
	while ((opt = getopt(argc, argv, "+pP:rt")) != -1) {
		if (opt == 'p')
			filtered = 1;
		else if (opt == 'P')
			attach = (pid_t)atoi(optarg);
		else if (opt == 'r')
			ret = 1;
		else if (opt == 't')
			toggled = 1;
		else
			return 2;
	}
	if (argc - optind < 4 || strcmp(argv[optind + 2], "--")) {
		fprintf(stderr, "usage: perf_uprobe [-p | -P PID] [-r] [-t] PATH OFFSET -- CMD "
			"[ARG...]\n");
		return 2;
	}
	const char *path = argv[optind];
	uint64_t offset = strtoull(argv[optind + 1], NULL, 0);
	char **cmd = &argv[optind + 3];
	int type = uprobe_pmu_type();
	if (type < 0) {
		fprintf(stderr, "perf_uprobe: no uprobe PMU in /sys/bus/event_source/devices\n");
		return 2;
	}
	int ncpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
	if (ncpus > MAX_CPUS)
		ncpus = MAX_CPUS;
	struct held_child child;
	if (held_child_start(&child, cmd, "perf_uprobe"))
		return 2;
	int fds[MAX_CPUS], nfds = 0;
	if (attach) {
		fds[nfds] = open_event(type, path, offset, ret, attach, -1, 0);
		if (fds[nfds++] < 0) {
			fprintf(stderr, "perf_uprobe: perf_event_open(pid %d): %s\n", attach,
				strerror(errno));
			held_child_stop(&child);
			return 2;
		}
	} else if (filtered) {
		fds[nfds] = open_event(type, path, offset, ret, child.pid, -1, 1);
		if (fds[nfds++] < 0) {
			fprintf(stderr, "perf_uprobe: perf_event_open(pid %d): %s\n", child.pid,
				strerror(errno));
			held_child_stop(&child);
			return 2;
		}
	} else if (!toggled) {
		for (int cpu = 0; cpu < ncpus; cpu++) {
			fds[nfds] = open_event(type, path, offset, ret, -1, cpu, 0);
			if (fds[nfds++] < 0) {
				fprintf(stderr, "perf_uprobe: perf_event_open(cpu %d): %s\n", cpu,
					strerror(errno));
				held_child_stop(&child);
				return 2;
			}
		}
	}
	if (held_child_release(&child)) {
		held_child_stop(&child);
		return 2;
	}
	int status = 0;
	long toggles = 0;
	if (toggled) {
		struct timespec pause = {0, 2 * 1000 * 1000};
		while (waitpid(child.pid, &status, WNOHANG) == 0) {
			int fd = open_event(type, path, offset, ret, -1, toggles % ncpus, 0);
			if (fd < 0) {
				fprintf(stderr, "perf_uprobe: toggled open: %s\n", strerror(errno));
				held_child_stop(&child);
				return 2;
			}
			nanosleep(&pause, NULL);
			close(fd);
			toggles++;
		}
	} else {
		waitpid(child.pid, &status, 0);
	}
	uint64_t total = 0;
	for (int i = 0; i < nfds; i++) {
		total += read_count(fds[i]);
		close(fds[i]);
	}
	fflush(stdout);
	if (toggled)
		printf("toggles=%ld status=%d\n", toggles, status);
	else
		printf("perf_count=%llu toggles=0 status=%d\n", (unsigned long long)total, status);
	return 0;
}
