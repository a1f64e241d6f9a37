/* A uprobe consumer through BPF: a minimal BPF program, written as raw instructions (no
 * libbpf, no clang), adds 1 to an array map's only element each time it runs, while CMD runs.
 *
 * usage: bpf_uprobe [-m perf|multi|session] [-p] [-r] PATH OFFSET -- CMD [ARG...]
 *   -m perf     (default) a perf event of the "uprobe" PMU, system-wide (pid -1, CPU 0, as
 *               libbpf attaches it), the program attached with PERF_EVENT_IOC_SET_BPF: the
 *               program runs in the perf handler, on every CPU
 *   -m multi    a BPF_TRACE_UPROBE_MULTI link (since 6.6): uprobe_multi's own consumer
 *   -m session  a BPF_TRACE_UPROBE_SESSION link (since 6.13): the program runs at entry and,
 *               because it returns 0, again at return: two runs per call
 *   -p          multi/session only: the link is filtered to CMD's pid (the link's filter must
 *               keep the breakpoint out of every other process)
 *   -r          a return probe (perf: the retprobe bit; multi: BPF_F_UPROBE_MULTI_RETURN)
 * prints (after CMD's own output): bpf_count=<program runs> status=<CMD's wait status>
 * exit: 0; 2 on a usage error or a failure; 3 when the kernel does not know the attach mode
 * (EINVAL from BPF_PROG_LOAD or BPF_LINK_CREATE; errno printed)
 *
 * The uapi values past 6.1's headers (Debian 12's linux-libc-dev) are spelled out here.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "held_child.h"
#include "uprobe_pmu.h"

#define ATTACH_UPROBE_MULTI 48   /* BPF_TRACE_UPROBE_MULTI */
#define ATTACH_UPROBE_SESSION 57 /* BPF_TRACE_UPROBE_SESSION */
#define UPROBE_MULTI_RETURN 1u   /* BPF_F_UPROBE_MULTI_RETURN */

enum mode { MODE_PERF, MODE_MULTI, MODE_SESSION };

/* BPF_LINK_CREATE's attribute for uprobe_multi links (include/uapi/linux/bpf.h since 6.6) */
struct link_create_uprobe_multi {
	uint32_t prog_fd;
	uint32_t target_fd;
	uint32_t attach_type;
	uint32_t flags;
	uint64_t path;
	uint64_t offsets;
	uint64_t ref_ctr_offsets;
	uint64_t cookies;
	uint32_t cnt;
	uint32_t multi_flags;
	uint32_t pid;
	uint32_t pad;
	uint8_t rest[64]; /* the union is larger; unused bytes must be zero */
};

static long sys_bpf(int cmd, void *attr, unsigned int size)
{
	return syscall(SYS_bpf, cmd, attr, size);
}

static int map_create(void)
{
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.map_type = BPF_MAP_TYPE_ARRAY;
	attr.key_size = 4;
	attr.value_size = 8;
	attr.max_entries = 1;
	return (int)sys_bpf(BPF_MAP_CREATE, &attr, sizeof(attr));
}

static uint64_t map_read(int map)
{
	union bpf_attr attr;
	uint32_t key = 0;
	uint64_t value = 0;
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = (uint32_t)map;
	attr.key = (uint64_t)(uintptr_t)&key;
	attr.value = (uint64_t)(uintptr_t)&value;
	if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &attr, sizeof(attr)))
		return UINT64_MAX;
	return value;
}

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
	struct bpf_insn i;
	memset(&i, 0, sizeof(i));
	i.code = code;
	i.dst_reg = dst;
	i.src_reg = src;
	i.off = off;
	i.imm = imm;
	return i;
}

/* key = 0; value = map_lookup_elem(map, &key); if (value) atomic *value += 1; return 0 */
static int prog_load(int map, uint32_t expected_attach_type)
{
	struct bpf_insn prog[] = {
		insn(BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0),
		insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map),
		insn(0, 0, 0, 0, 0),
		insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0),
		insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4),
		insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
		insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 2, 0),
		insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1),
		insn(BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_0, BPF_REG_1, 0, BPF_ADD),
		insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),
		insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
	};
	static char log[4096];
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.prog_type = BPF_PROG_TYPE_KPROBE;
	attr.insn_cnt = sizeof(prog) / sizeof(prog[0]);
	attr.insns = (uint64_t)(uintptr_t)prog;
	attr.license = (uint64_t)(uintptr_t)"GPL";
	attr.log_level = 1;
	attr.log_size = sizeof(log);
	attr.log_buf = (uint64_t)(uintptr_t)log;
	attr.expected_attach_type = expected_attach_type;
	int fd = (int)sys_bpf(BPF_PROG_LOAD, &attr, sizeof(attr));
	if (fd < 0 && errno != EINVAL)
		fprintf(stderr, "bpf_uprobe: verifier log: %s\n", log);
	return fd;
}

static int attach_perf(int prog, const char *path, uint64_t offset, int ret)
{
	int type = uprobe_pmu_type();
	if (type < 0) {
		fprintf(stderr, "bpf_uprobe: no uprobe PMU in /sys/bus/event_source/devices\n");
		errno = ENOENT;
		return -1;
	}
	struct perf_event_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.size = sizeof(attr);
	attr.type = (uint32_t)type;
	attr.config = ret ? 1 : 0;
	attr.config1 = (uint64_t)(uintptr_t)path;
	attr.config2 = offset;
	int fd = (int)syscall(SYS_perf_event_open, &attr, -1, 0, -1, 0);
	if (fd < 0)
		return -1;
	if (ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog) || ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static int attach_link(int prog, uint32_t attach_type, const char *path, uint64_t offset,
		       int ret, pid_t pid)
{
	struct link_create_uprobe_multi attr;
	uint64_t offsets[1] = {offset};
	memset(&attr, 0, sizeof(attr));
	attr.prog_fd = (uint32_t)prog;
	attr.attach_type = attach_type;
	attr.path = (uint64_t)(uintptr_t)path;
	attr.offsets = (uint64_t)(uintptr_t)offsets;
	attr.cnt = 1;
	attr.multi_flags = ret ? UPROBE_MULTI_RETURN : 0;
	attr.pid = (uint32_t)pid;
	return (int)sys_bpf(BPF_LINK_CREATE, &attr, sizeof(attr));
}

int main(int argc, char **argv)
{
	enum mode mode = MODE_PERF;
	int filtered = 0, ret = 0, opt;
	while ((opt = getopt(argc, argv, "+m:pr")) != -1) {
		if (opt == 'm' && !strcmp(optarg, "perf"))
			mode = MODE_PERF;
		else if (opt == 'm' && !strcmp(optarg, "multi"))
			mode = MODE_MULTI;
		else if (opt == 'm' && !strcmp(optarg, "session"))
			mode = MODE_SESSION;
		else if (opt == 'p')
			filtered = 1;
		else if (opt == 'r')
			ret = 1;
		else
			goto usage;
	}
	if (argc - optind < 4 || strcmp(argv[optind + 2], "--") || (filtered && mode == MODE_PERF)
	    || (ret && mode == MODE_SESSION))
		goto usage;
	const char *path = argv[optind];
	uint64_t offset = strtoull(argv[optind + 1], NULL, 0);
	char **cmd = &argv[optind + 3];

	int map = map_create();
	if (map < 0) {
		fprintf(stderr, "bpf_uprobe: BPF_MAP_CREATE: %s\n", strerror(errno));
		return 2;
	}
	uint32_t attach_type = mode == MODE_MULTI ? ATTACH_UPROBE_MULTI
			     : mode == MODE_SESSION ? ATTACH_UPROBE_SESSION : 0;
	int prog = prog_load(map, attach_type);
	if (prog < 0) {
		int unknown = errno == EINVAL;
		fprintf(stderr, "bpf_uprobe: BPF_PROG_LOAD: %s\n", strerror(errno));
		return unknown ? 3 : 2;
	}
	struct held_child child;
	if (held_child_start(&child, cmd, "bpf_uprobe"))
		return 2;
	int fd = mode == MODE_PERF ? attach_perf(prog, path, offset, ret)
		 : attach_link(prog, attach_type, path, offset, ret, filtered ? child.pid : 0);
	if (fd < 0) {
		int unknown = errno == EINVAL;
		fprintf(stderr, "bpf_uprobe: attach (%s): %s\n",
			mode == MODE_PERF ? "perf event" : "BPF_LINK_CREATE", strerror(errno));
		held_child_stop(&child);
		return unknown && mode != MODE_PERF ? 3 : 2;
	}
	if (held_child_release(&child)) {
		held_child_stop(&child);
		return 2;
	}
	int status = 0;
	waitpid(child.pid, &status, 0);
	close(fd);
	uint64_t count = map_read(map);
	fflush(stdout);
	printf("bpf_count=%llu status=%d\n", (unsigned long long)count, status);
	return count == UINT64_MAX ? 2 : 0;

usage:
	fprintf(stderr, "usage: bpf_uprobe [-m perf|multi|session] [-p] [-r] PATH OFFSET -- CMD "
		"[ARG...]\n  (-p: multi and session only; -r: not with session)\n");
	return 2;
}
