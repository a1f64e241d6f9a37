/* Probe sites for the multithreaded-hits family. Each site is a tiny function whose first
 * instruction is the one probed; the instruction kinds cover the kernel's three paths:
 * emulated in the kernel (push), executed out of line (mov), out of line after RIP-relative
 * rewriting (rip-relative load), plus a function probed on return (uretprobe), and the
 * 10-byte nop that kernels since 7.x rewrite into a call to a trampoline (optimized uprobe). */
	.text

	.globl site_push
	.type site_push, @function
site_push:                      /* push %rbp: emulated by the kernel */
	push %rbp
	pop %rbp
	ret
	.size site_push, .-site_push

	.globl site_mov
	.type site_mov, @function
site_mov:                       /* mov %rdi,%rax: single-stepped out of line */
	mov %rdi, %rax
	ret
	.size site_mov, .-site_mov

	.globl site_riprel
	.type site_riprel, @function
site_riprel:                    /* rip-relative load: rewritten to use a scratch register */
	mov site_data(%rip), %rax
	ret
	.size site_riprel, .-site_riprel

	.globl site_nop10
	.type site_nop10, @function
	.p2align 4
site_nop10:                     /* nopw %cs:0(%rax,%rax,1): the nop10 that 7.x x86-64 */
	.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00  /* optimizes */
	lea 1(%rdi), %rax       /* (lea -0x80(%rsp),%rsp; call to the uprobe trampoline) */
	ret
	.size site_nop10, .-site_nop10

	.globl site_ret
	.type site_ret, @function
site_ret:                       /* probed with a uretprobe */
	lea 1(%rdi), %rax
	ret
	.size site_ret, .-site_ret

/* long call_checked(long (*site)(long), long in, long *regs_ok)
 * Calls site(in) with every other general-purpose register loaded with a value derived from
 * `in` (so it differs between threads and calls) and sets *regs_ok to 1 if all of them,
 * including %rdi, are unchanged afterwards: a probe must not disturb a register the probed
 * code does not write (e.g. the scratch register of a rip-relative rewrite). */
	.globl call_checked
	.type call_checked, @function
call_checked:
	push %rbp
	push %rbx
	push %r12
	push %r13
	push %r14
	push %r15
	push %rdx                       /* 0x10(%rsp): regs_ok */
	push %rsi                       /* 0x08(%rsp): in */
	sub $8, %rsp                    /* 0x00(%rsp): result; %rsp is 16-byte aligned */
	mov %rdi, %rax
	mov %rsi, %rdi
	mov %rsi, %rbx;  xor $0x0101, %rbx
	mov %rsi, %rcx;  xor $0x0202, %rcx
	mov %rsi, %rdx;  xor $0x0303, %rdx
	mov %rsi, %rbp;  xor $0x0505, %rbp
	mov %rsi, %r8;   xor $0x0808, %r8
	mov %rsi, %r9;   xor $0x0909, %r9
	mov %rsi, %r10;  xor $0x0a0a, %r10
	mov %rsi, %r11;  xor $0x0b0b, %r11
	mov %rsi, %r12;  xor $0x0c0c, %r12
	mov %rsi, %r13;  xor $0x0d0d, %r13
	mov %rsi, %r14;  xor $0x0e0e, %r14
	mov %rsi, %r15;  xor $0x0f0f, %r15
	xor $0x0404, %rsi
	call *%rax
	mov %rax, (%rsp)
	xor %eax, %eax
	xor $0x0101, %rbx;  cmp 8(%rsp), %rbx;  jne 1f
	xor $0x0202, %rcx;  cmp 8(%rsp), %rcx;  jne 1f
	xor $0x0303, %rdx;  cmp 8(%rsp), %rdx;  jne 1f
	xor $0x0404, %rsi;  cmp 8(%rsp), %rsi;  jne 1f
	xor $0x0505, %rbp;  cmp 8(%rsp), %rbp;  jne 1f
	xor $0x0808, %r8;   cmp 8(%rsp), %r8;   jne 1f
	xor $0x0909, %r9;   cmp 8(%rsp), %r9;   jne 1f
	xor $0x0a0a, %r10;  cmp 8(%rsp), %r10;  jne 1f
	xor $0x0b0b, %r11;  cmp 8(%rsp), %r11;  jne 1f
	xor $0x0c0c, %r12;  cmp 8(%rsp), %r12;  jne 1f
	xor $0x0d0d, %r13;  cmp 8(%rsp), %r13;  jne 1f
	xor $0x0e0e, %r14;  cmp 8(%rsp), %r14;  jne 1f
	xor $0x0f0f, %r15;  cmp 8(%rsp), %r15;  jne 1f
	cmp 8(%rsp), %rdi;  jne 1f
	mov $1, %eax
1:	mov 0x10(%rsp), %rdx
	mov %rax, (%rdx)
	mov (%rsp), %rax
	add $0x18, %rsp
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbx
	pop %rbp
	ret
	.size call_checked, .-call_checked

	.data
	.align 8
	.globl site_data
site_data:
	.quad 0x1122334455667788

	.section .note.GNU-stack,"",@progbits
