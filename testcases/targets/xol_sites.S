/* Distinct probed instructions for xol_many.c: NSITES functions, each one instruction of
 * its own executed out of line when probed at the function's start. Four kinds in turn:
 *   k%4 == 0  lea C_k(%rdi),%rax                    (plain out-of-line copy, own displacement)
 *   k%4 == 1  mov c_k(%rip),%rax                    (rip-relative load: scratch-register rewrite)
 *   k%4 == 2  imul $3,c_k(%rip),%rax                (rip-relative with an immediate after it)
 *   k%4 == 3  lea c_k(%rip),%rax                    (rip-relative address)
 * then add %rdi (kinds 1-3) so the result depends on the caller's input too. C_k = c_k =
 * k*4096 + 17*(k+1), also computed by the C side. xol_exit_syscall: a probed `syscall` that
 * ends the calling thread (SYS_exit) while it runs out of line. */
	.text
	.macro XSITE k
	.globl xol_site_\k
	.type xol_site_\k, @function
	.p2align 4
xol_site_\k:
	.if (\k % 4) == 0
	lea (\k*4096+17*(\k+1))(%rdi), %rax
	.elseif (\k % 4) == 1
	mov xol_c_\k(%rip), %rax
	add %rdi, %rax
	.elseif (\k % 4) == 2
	imul $3, xol_c_\k(%rip), %rax
	add %rdi, %rax
	.else
	lea xol_c_\k(%rip), %rax
	mov (%rax), %rax
	add %rdi, %rax
	.endif
	ret
	.size xol_site_\k, .-xol_site_\k
	.pushsection .data
	.p2align 3
xol_c_\k:
	.quad \k*4096+17*(\k+1)
	.popsection
	.endm

	XSITE 0
	XSITE 1
	XSITE 2
	XSITE 3
	XSITE 4
	XSITE 5
	XSITE 6
	XSITE 7
	XSITE 8
	XSITE 9
	XSITE 10
	XSITE 11
	XSITE 12
	XSITE 13
	XSITE 14
	XSITE 15
	XSITE 16
	XSITE 17
	XSITE 18
	XSITE 19
	XSITE 20
	XSITE 21
	XSITE 22
	XSITE 23
	XSITE 24
	XSITE 25
	XSITE 26
	XSITE 27
	XSITE 28
	XSITE 29
	XSITE 30
	XSITE 31
	XSITE 32
	XSITE 33
	XSITE 34
	XSITE 35
	XSITE 36
	XSITE 37
	XSITE 38
	XSITE 39
	XSITE 40
	XSITE 41
	XSITE 42
	XSITE 43
	XSITE 44
	XSITE 45
	XSITE 46
	XSITE 47

/* long xol_nsites; long (*xol_sites[xol_nsites])(long) */
	.section .data.rel.ro, "aw"
	.p2align 3
	.globl xol_nsites
xol_nsites:
	.quad 48
	.globl xol_sites
xol_sites:
	.irp k, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47
	.quad xol_site_\k
	.endr

	.text
/* void xol_exit_thread(void): SYS_exit of the calling thread, by a probed syscall */
	.globl xol_exit_thread
	.type xol_exit_thread, @function
	.p2align 4
xol_exit_thread:
	mov $60, %eax
	xor %edi, %edi
	.globl xol_exit_syscall
xol_exit_syscall:
	syscall
	ud2
	.size xol_exit_thread, .-xol_exit_thread

	.section .note.GNU-stack,"",@progbits
