/* Probe sites for the multithreaded-hits family. Each site is a tiny function whose first
 * instruction is the one probed; the instruction kinds cover the kernel's three paths:
 * emulated in the kernel (push), executed out of line (mov), out of line after RIP-relative
 * rewriting (rip-relative load), plus a function probed on return (uretprobe). */
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

	.globl site_ret
	.type site_ret, @function
site_ret:                       /* probed with a uretprobe */
	lea 1(%rdi), %rax
	ret
	.size site_ret, .-site_ret

	.data
	.align 8
	.globl site_data
site_data:
	.quad 0x1122334455667788

	.section .note.GNU-stack,"",@progbits
