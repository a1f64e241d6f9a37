/* Probe site and state harness for the optimized-uprobes family.
 *
 * site_opt is a function whose entry is the 10-byte nop `66 2e 0f 1f 84 00 00 00 00 00`:
 * since 7.x, x86-64 rewrites a probed nop10 into `lea -0x80(%rsp),%rsp; call <trampoline>`
 * after its first hit (the trampoline saves rcx/r11/rax, makes syscall 336, restores them
 * and returns with `ret $0x80`). It changes nothing itself, so every register, the flags,
 * the vector registers and the stack below the stack pointer must come back unchanged.
 *
 * void run_site(struct opt_ctx *ctx)   (layout: opt.c, OFF_* below)
 * fills the 160 bytes below the site's stack pointer with ctx->fill, loads every general-
 * purpose register, the flags and xmm0-15 from ctx, calls ctx->site, and stores what came
 * back (registers, flags, xmm0-15, the 160 bytes) into ctx. %r15 holds ctx throughout. */

#define OFF_GPR_IN    0x000   /* rax rbx rcx rdx rsi rdi rbp r8-r14: 15 x 8 */
#define OFF_FLAGS_IN  0x080
#define OFF_SITE      0x088
#define OFF_XMM_IN    0x090   /* 16 x 16 */
#define OFF_GPR_OUT   0x190   /* rax ... r14, then r15 at 0x78 */
#define OFF_FLAGS_OUT 0x210
#define OFF_FILL      0x218
#define OFF_XMM_OUT   0x220
#define OFF_STACK_OUT 0x320   /* 160 bytes: [site sp - 160, site sp) */
#define WINDOW        160

/* the SysV callee-saved registers, around code that loads every register */
	.macro save_callee_saved
	push %rbx
	push %rbp
	push %r12
	push %r13
	push %r14
	push %r15
	.endm
	.macro restore_callee_saved
	pop %r15
	pop %r14
	pop %r13
	pop %r12
	pop %rbp
	pop %rbx
	.endm

	.text
	.globl site_opt
	.type site_opt, @function
	.p2align 4
site_opt:
	.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00
	ret
	.size site_opt, .-site_opt

/* the same nop10 straddling a page boundary: the kernel cannot rewrite it atomically, so it
   stays an int3 probe (the cost of the int3 path on a nop10, for bench_probe_cost.py) */
	.p2align 12
	.skip 4096 - 5
	.globl site_opt_split
	.type site_opt_split, @function
site_opt_split:
	.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00
	ret
	.size site_opt_split, .-site_opt_split

/* the nop10 at each of the last ten bytes of a page: site_tail0 starts at page offset
   0xff6 (the last one that fits), site_tailK at 0xff6 + K straddles the page by K bytes.
   site_tail0 is also the only offset from which a rewritten call can reach exactly +2 GiB
   (opt reach maps its page pair at chosen addresses) */
	.irp k, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
	.p2align 12
	.skip 4096 - 10 + \k
	.globl site_tail\k
	.type site_tail\k, @function
site_tail\k:
	.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00
	lea 1(%rdi), %rax
	ret
	.size site_tail\k, .-site_tail\k
	.endr

	.globl run_site
	.type run_site, @function
run_site:
	save_callee_saved
	mov %rdi, %r15
	/* the call below pushes the return address at -8(%rsp): the site's stack pointer is
	   %rsp - 8 and the window is [%rsp - 8 - WINDOW, %rsp - 8) */
	cld
	lea -(8 + WINDOW)(%rsp), %rdi
	mov $WINDOW, %ecx
	movzbl OFF_FILL(%r15), %eax
	rep stosb
	movdqu OFF_XMM_IN + 0x00(%r15), %xmm0
	movdqu OFF_XMM_IN + 0x10(%r15), %xmm1
	movdqu OFF_XMM_IN + 0x20(%r15), %xmm2
	movdqu OFF_XMM_IN + 0x30(%r15), %xmm3
	movdqu OFF_XMM_IN + 0x40(%r15), %xmm4
	movdqu OFF_XMM_IN + 0x50(%r15), %xmm5
	movdqu OFF_XMM_IN + 0x60(%r15), %xmm6
	movdqu OFF_XMM_IN + 0x70(%r15), %xmm7
	movdqu OFF_XMM_IN + 0x80(%r15), %xmm8
	movdqu OFF_XMM_IN + 0x90(%r15), %xmm9
	movdqu OFF_XMM_IN + 0xa0(%r15), %xmm10
	movdqu OFF_XMM_IN + 0xb0(%r15), %xmm11
	movdqu OFF_XMM_IN + 0xc0(%r15), %xmm12
	movdqu OFF_XMM_IN + 0xd0(%r15), %xmm13
	movdqu OFF_XMM_IN + 0xe0(%r15), %xmm14
	movdqu OFF_XMM_IN + 0xf0(%r15), %xmm15
	push OFF_FLAGS_IN(%r15)         /* writes -8(%rsp) only: outside the window */
	popf
	mov OFF_GPR_IN + 0x00(%r15), %rax
	mov OFF_GPR_IN + 0x08(%r15), %rbx
	mov OFF_GPR_IN + 0x10(%r15), %rcx
	mov OFF_GPR_IN + 0x18(%r15), %rdx
	mov OFF_GPR_IN + 0x20(%r15), %rsi
	mov OFF_GPR_IN + 0x28(%r15), %rdi
	mov OFF_GPR_IN + 0x30(%r15), %rbp
	mov OFF_GPR_IN + 0x38(%r15), %r8
	mov OFF_GPR_IN + 0x40(%r15), %r9
	mov OFF_GPR_IN + 0x48(%r15), %r10
	mov OFF_GPR_IN + 0x50(%r15), %r11
	mov OFF_GPR_IN + 0x58(%r15), %r12
	mov OFF_GPR_IN + 0x60(%r15), %r13
	mov OFF_GPR_IN + 0x68(%r15), %r14
	.globl run_site_call
run_site_call:                  /* opt stepped plants its breakpoint here */
	call *OFF_SITE(%r15)
	pushf
	pop OFF_FLAGS_OUT(%r15)
	mov %rax, OFF_GPR_OUT + 0x00(%r15)
	mov %rbx, OFF_GPR_OUT + 0x08(%r15)
	mov %rcx, OFF_GPR_OUT + 0x10(%r15)
	mov %rdx, OFF_GPR_OUT + 0x18(%r15)
	mov %rsi, OFF_GPR_OUT + 0x20(%r15)
	mov %rdi, OFF_GPR_OUT + 0x28(%r15)
	mov %rbp, OFF_GPR_OUT + 0x30(%r15)
	mov %r8,  OFF_GPR_OUT + 0x38(%r15)
	mov %r9,  OFF_GPR_OUT + 0x40(%r15)
	mov %r10, OFF_GPR_OUT + 0x48(%r15)
	mov %r11, OFF_GPR_OUT + 0x50(%r15)
	mov %r12, OFF_GPR_OUT + 0x58(%r15)
	mov %r13, OFF_GPR_OUT + 0x60(%r15)
	mov %r14, OFF_GPR_OUT + 0x68(%r15)
	mov %r15, OFF_GPR_OUT + 0x78(%r15)
	movdqu %xmm0,  OFF_XMM_OUT + 0x00(%r15)
	movdqu %xmm1,  OFF_XMM_OUT + 0x10(%r15)
	movdqu %xmm2,  OFF_XMM_OUT + 0x20(%r15)
	movdqu %xmm3,  OFF_XMM_OUT + 0x30(%r15)
	movdqu %xmm4,  OFF_XMM_OUT + 0x40(%r15)
	movdqu %xmm5,  OFF_XMM_OUT + 0x50(%r15)
	movdqu %xmm6,  OFF_XMM_OUT + 0x60(%r15)
	movdqu %xmm7,  OFF_XMM_OUT + 0x70(%r15)
	movdqu %xmm8,  OFF_XMM_OUT + 0x80(%r15)
	movdqu %xmm9,  OFF_XMM_OUT + 0x90(%r15)
	movdqu %xmm10, OFF_XMM_OUT + 0xa0(%r15)
	movdqu %xmm11, OFF_XMM_OUT + 0xb0(%r15)
	movdqu %xmm12, OFF_XMM_OUT + 0xc0(%r15)
	movdqu %xmm13, OFF_XMM_OUT + 0xd0(%r15)
	movdqu %xmm14, OFF_XMM_OUT + 0xe0(%r15)
	movdqu %xmm15, OFF_XMM_OUT + 0xf0(%r15)
	cld
	lea -(8 + WINDOW)(%rsp), %rsi
	lea OFF_STACK_OUT(%r15), %rdi
	mov $WINDOW, %ecx
	rep movsb
	restore_callee_saved
	ret
	.size run_site, .-run_site

/* a nop10 in 32-bit code of this 64-bit process (as WoW64-style emulators run it): reached
   with a far jump into the 32-bit user code segment 0x23 on a stack below 4 GiB, and a far
   jump back to 0x33 (far jumps, not lcall/lret: QEMU 7.2's TCG does the far call's pushes
   and the far return's pops as supervisor accesses, which SMAP faults). Its first hit is in
   32-bit mode, where the 64-bit trampoline cannot be used: it must stay an int3 probe.
   long call_in_32bit_mode(long value, void *low_stack_top): value + 1 */
	.code32
	.p2align 4
	.globl site_opt32
	.type site_opt32, @function
site_opt32:
	.byte 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00
	lea 1(%eax), %eax
	ret
	.size site_opt32, .-site_opt32
enter32:
	call site_opt32
	ljmp *back64_pointer
	.code64

	.globl call_in_32bit_mode
	.type call_in_32bit_mode, @function
call_in_32bit_mode:
	save_callee_saved
	mov %rsp, saved_rsp(%rip)
	mov %rsi, %rsp
	mov $0x2b, %ecx                 /* 32-bit code addresses data through DS: a null */
	mov %ecx, %ds                   /* selector there faults (real CPUs; TCG lets it be) */
	mov %ecx, %es
	mov %edi, %eax
	ljmp *enter32_pointer(%rip)
back64:
	mov saved_rsp(%rip), %rsp
	xor %ecx, %ecx
	mov %ecx, %ds
	mov %ecx, %es
	mov %eax, %eax
	restore_callee_saved
	ret
	.size call_in_32bit_mode, .-call_in_32bit_mode

/* long call_on_stack(long (*fn)(long), long value, void *stack_top, uint64_t *rsp_after):
   fn(value) called with %rsp = stack_top (so fn starts with stack_top - 8); stores the %rsp
   the call returned with in *rsp_after (stack_top when fn kept its stack balanced). The
   callers pick stack tops for their low bits, not for the ABI's 16-byte alignment: fn must
   be an assembly function that does not care (site_tail0) */
	.text
	.globl call_on_stack
	.type call_on_stack, @function
call_on_stack:
	push %rbp
	push %rbx
	mov %rsp, %rbp
	mov %rcx, %rbx
	mov %rdi, %rax
	mov %rsi, %rdi
	mov %rdx, %rsp
	call *%rax
	mov %rsp, (%rbx)
	mov %rbp, %rsp
	pop %rbx
	pop %rbp
	ret
	.size call_on_stack, .-call_on_stack

	.data
	.p2align 3
saved_rsp:
	.quad 0
enter32_pointer:
	.long enter32
	.word 0x23
back64_pointer:
	.long back64
	.word 0x33

	.section .note.GNU-stack,"",@progbits
