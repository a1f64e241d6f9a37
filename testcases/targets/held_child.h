/* The probed command of a consumer tool (perf_uprobe, bpf_uprobe): forked at once, so its
 * pid is known for a pid-bound consumer, but held on a pipe until the consumer exists, then
 * it execs CMD. Header-only: each tool is one static program. */
#ifndef HELD_CHILD_H
#define HELD_CHILD_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

struct held_child {
	pid_t pid;
	int go; /* write end of the pipe the child waits on */
};

/* Fork CMD held; 0, or -1 with the reason printed under TOOL's name. */
static int held_child_start(struct held_child *child, char **cmd, const char *tool)
{
	int go[2];
	if (pipe(go)) {
		fprintf(stderr, "%s: pipe: %s\n", tool, strerror(errno));
		return -1;
	}
	child->pid = fork();
	if (child->pid < 0) {
		fprintf(stderr, "%s: fork: %s\n", tool, strerror(errno));
		return -1;
	}
	if (child->pid == 0) {
		char byte;
		close(go[1]);
		if (read(go[0], &byte, 1) != 1)
			_exit(127);
		close(go[0]);
		execvp(cmd[0], cmd);
		_exit(127);
	}
	close(go[0]);
	child->go = go[1];
	return 0;
}

/* Let the held child exec CMD; 0 or -1. */
static int held_child_release(struct held_child *child)
{
	int ok = write(child->go, "x", 1) == 1;
	close(child->go);
	return ok ? 0 : -1;
}

/* Kill the child (held or running) and reap it; its wait status. */
static int held_child_stop(struct held_child *child)
{
	int status = 0;
	kill(child->pid, SIGKILL);
	waitpid(child->pid, &status, 0);
	return status;
}

#endif
