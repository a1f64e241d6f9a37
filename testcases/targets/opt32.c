/* A 32-bit (compat) task with the same nop10 as opt: built -m32 -ffreestanding -nostdlib
 * (no 32-bit libc needed), syscalls through int $0x80.
 *
 * usage: opt32 N    calls site32 (nop10; lea 1(%eax),%eax; ret) N times and prints
 *                   calls=N bad=<wrong results> site=<its 10 bytes afterwards>
 * A compat task cannot use the 64-bit trampoline: the probe must stay an int3 probe (bytes
 * cc 2e 0f 1f 84 ...) and count every call.
 */

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	mov %esp, %eax\n"
	"	and $-16, %esp\n"
	"	sub $12, %esp\n"
	"	push %eax\n"
	"	call start_c\n"
	"	hlt\n"
	"\n"
	"	.p2align 4\n"
	"	.globl site32\n"
	"	.type site32, @function\n"
	"site32:\n"
	"	.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00\n"
	"	lea 1(%eax), %eax\n"
	"	ret\n"
	"	.size site32, .-site32\n");

extern char site32[];

static long sys3(long nr, long a, long b, long c)
{
	long r;
	__asm__ volatile("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
	return r;
}

static int put(char *out, const char *text)
{
	int n = 0;
	while (text[n]) {
		out[n] = text[n];
		n++;
	}
	return n;
}

static int put_number(char *out, unsigned long value)
{
	char digits[16];
	int n = 0, len = 0;
	do {
		digits[n++] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	while (n)
		out[len++] = digits[--n];
	return len;
}

__attribute__((used)) void start_c(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	unsigned long n = 0, bad = 0;
	if (argc == 2)
		for (const char *p = argv[1]; *p >= '0' && *p <= '9'; p++)
			n = n * 10 + (unsigned long)(*p - '0');
	for (unsigned long i = 0; i < n; i++) {
		unsigned long v = i;
		__asm__ volatile("call site32" : "+a"(v) : : "ecx", "edx", "memory", "cc");
		bad += v != i + 1;
	}
	char text[128];
	int len = put(text, "calls=");
	len += put_number(text + len, n);
	len += put(text + len, " bad=");
	len += put_number(text + len, bad);
	len += put(text + len, " site=");
	for (int i = 0; i < 10; i++) {
		unsigned char byte = (unsigned char)site32[i];
		text[len++] = "0123456789abcdef"[byte >> 4];
		text[len++] = "0123456789abcdef"[byte & 15];
	}
	text[len++] = '\n';
	sys3(4, 1, (long)text, len);          /* write */
	sys3(1, 0, 0, 0);                     /* exit */
}
