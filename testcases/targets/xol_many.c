/* Distinct probes executed out of line at the same time (XOL-slot management).
 *
 *   xol_many distinct THREADS ITERS   each thread calls the NSITES sites of xol_sites.S in a
 *                                     rotation of its own, so threads run different probed
 *                                     instructions out of line at once
 *   xol_many churn WAVES THREADS      WAVES waves of THREADS short-lived threads, each calls
 *                                     two sites once and exits: slots taken and given back by
 *                                     thousands of threads
 *   xol_many exit THREADS             THREADS threads end themselves with a probed `syscall`
 *                                     (SYS_exit) that runs out of line, then every site is
 *                                     called once more: a slot an exiting thread kept is lost,
 *                                     and once all are lost the next out-of-line step waits
 *                                     forever (uninterruptibly)
 *
 * Every call goes through call_checked (hits_sites.S): the result must be the site's own
 * value and every other register must survive. prints: calls=<n> bad=<n> site<k>=<calls> ...
 * (exit: exited=<n> after=ok|hung; the work runs in a child, so a hung child cannot hold
 * the caller's output open). Hung: a thread of the child in uninterruptible sleep (D) in
 * every look for 3 s, or 20 s without progress whatever the threads do.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern const long xol_nsites;
extern long (*const xol_sites[])(long);
extern void xol_exit_thread(void);
extern long call_checked(long (*site)(long), long in, long *regs_ok);

#define MAX_SITES 64
static uint64_t site_calls[MAX_SITES];
static uint64_t calls, bad;
static long iterations;
static pthread_barrier_t start_line;

static long site_value(long k)
{
	long c = k * 4096 + 17 * (k + 1);
	return k % 4 == 2 ? 3 * c : c;
}

static void call_site(long k, long in)
{
	long regs_ok = 0;
	long out = call_checked(xol_sites[k], in, &regs_ok);
	__atomic_fetch_add(&site_calls[k], 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&calls, 1, __ATOMIC_RELAXED);
	/* kind 3 loads through the address it computed: the same value as kind 1 */
	if (out != in + site_value(k) || !regs_ok)
		__atomic_fetch_add(&bad, 1, __ATOMIC_RELAXED);
}

static void *distinct_worker(void *arg)
{
	long id = (long)arg;
	static const long strides[] = {1, 5, 7, 11, 13};   /* prime to 48: every site */
	long stride = strides[id % 5];
	pthread_barrier_wait(&start_line);
	for (long i = 0; i < iterations; i++)
		call_site((id * 7 + i * stride) % xol_nsites, (id << 32) + i);
	return NULL;
}

static void *churn_worker(void *arg)
{
	long id = (long)arg;
	call_site(id % xol_nsites, id);
	call_site((id * 5 + 1) % xol_nsites, ~id);
	return NULL;
}

static void *exit_worker(void *arg)
{
	(void)arg;
	xol_exit_thread();
	return NULL;
}

static void *every_site(void *arg)
{
	(void)arg;
	for (long k = 0; k < xol_nsites; k++)
		call_site(k, 1000 + k);
	return NULL;
}

static int start(pthread_t *tid, void *(*fn)(void *), long arg)
{
	if (pthread_create(tid, NULL, fn, (void *)arg)) {
		perror("pthread_create");
		return -1;
	}
	return 0;
}

static void print_counts(FILE *out)
{
	fprintf(out, "calls=%llu bad=%llu", (unsigned long long)calls, (unsigned long long)bad);
	for (long k = 0; k < xol_nsites; k++)
		fprintf(out, " site%ld=%llu", k, (unsigned long long)site_calls[k]);
	fprintf(out, "\n");
}

/* Whether one thread of process pid is in uninterruptible sleep: /proc/pid/task/tid/stat's
 * state field (the first after the parenthesised name, which may itself hold spaces). */
static int has_thread_in_d(pid_t pid)
{
	char dir[64];
	snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
	DIR *tasks = opendir(dir);
	if (!tasks)
		return 0;
	int found = 0;
	struct dirent *entry;
	while (!found && (entry = readdir(tasks))) {
		if (entry->d_name[0] == '.')
			continue;
		char path[128], stat[512];
		snprintf(path, sizeof(path), "%s/%s/stat", dir, entry->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		size_t n = fread(stat, 1, sizeof(stat) - 1, f);
		fclose(f);
		stat[n] = 0;
		char *close_paren = strrchr(stat, ')');
		found = close_paren && close_paren[1] == ' ' && close_paren[2] == 'D';
	}
	closedir(tasks);
	return found;
}

static int run_exit(long nthreads)
{
	int fds[2];
	if (pipe(fds))
		return 2;
	pid_t child = fork();
	if (child == 0) {
		close(fds[0]);
		FILE *out = fdopen(fds[1], "w");
		freopen("/dev/null", "w", stdout);
		for (long t = 0; t < nthreads; t++) {   /* one at a time: each exits in the slot */
			pthread_t tid;
			if (start(&tid, exit_worker, t) || pthread_join(tid, NULL))
				_exit(2);
		}
		fprintf(out, "exited=%ld ", nthreads);
		fflush(out);
		pthread_t tid;
		if (start(&tid, every_site, 0) || pthread_join(tid, NULL))
			_exit(2);
		fprintf(out, "after=ok ");
		print_counts(out);
		fclose(out);
		_exit(bad ? 1 : 0);
	}
	close(fds[1]);
	char text[4096] = "";
	size_t used = 0;
	struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
	int quiet_looks = 0, d_looks = 0;                /* 250 ms each */
	for (;;) {
		int ready = poll(&pfd, 1, 250);
		if (ready == 0) {
			quiet_looks++;
			d_looks = has_thread_in_d(child) ? d_looks + 1 : 0;
		}
		if (ready < 0 || d_looks >= 12 || quiet_looks >= 80) {
			printf("%s after=hung\n", text);    /* D for 3 s, or 20 s of silence */
			return 3;                            /* the child stays behind, unkillable */
		}
		if (ready == 0)
			continue;
		quiet_looks = 0;
		ssize_t n = read(fds[0], text + used, sizeof(text) - 1 - used);
		if (n <= 0)
			break;
		used += n;
		text[used] = 0;
	}
	int status = 0;
	waitpid(child, &status, 0);
	printf("%s", text);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv)
{
	if (xol_nsites > MAX_SITES)
		return 2;
	if (argc == 4 && !strcmp(argv[1], "distinct")) {
		long nthreads = atol(argv[2]);
		iterations = atol(argv[3]);
		if (nthreads < 1 || nthreads > 1024 || iterations < 0)
			return 2;
		pthread_t *tids = calloc(nthreads, sizeof(*tids));
		pthread_barrier_init(&start_line, NULL, nthreads);
		for (long t = 0; t < nthreads; t++)
			if (start(&tids[t], distinct_worker, t))
				return 2;
		for (long t = 0; t < nthreads; t++)
			pthread_join(tids[t], NULL);
	} else if (argc == 4 && !strcmp(argv[1], "churn")) {
		long waves = atol(argv[2]), nthreads = atol(argv[3]);
		if (waves < 1 || nthreads < 1 || nthreads > 1024)
			return 2;
		pthread_t *tids = calloc(nthreads, sizeof(*tids));
		for (long w = 0; w < waves; w++) {
			for (long t = 0; t < nthreads; t++)
				if (start(&tids[t], churn_worker, w * nthreads + t))
					return 2;
			for (long t = 0; t < nthreads; t++)
				pthread_join(tids[t], NULL);
		}
	} else if (argc == 3 && !strcmp(argv[1], "exit")) {
		long nthreads = atol(argv[2]);
		if (nthreads < 1)
			return 2;
		return run_exit(nthreads);
	} else {
		fprintf(stderr, "usage: %s distinct THREADS ITERS | churn WAVES THREADS | exit THREADS\n",
			argv[0]);
		return 2;
	}
	print_counts(stdout);
	return bad ? 1 : 0;
}
