/* Stack-VMA probe sites. Each helper moves the stack pointer to a chosen address, runs one
 * stack-writing instruction (the probed one, at a global label), reads back what it wrote,
 * and restores the real stack. Not reentrant: one caller at a time. */
	.text

	.macro STACK_SITE name, insn_bytes:vararg
	.globl \name\()_at
	.type \name\()_at, @function
\name\()_at:                    /* long name_at(void *sp, long value) */
	push %rbp
	push %r12
	mov %rsp, saved_sp(%rip)
	mov %rsi, %rbp
	mov %rsi, %r12
	mov %rdi, %rsp
	.globl probe_\name
probe_\name:
	.byte \insn_bytes
	mov (%rsp), %rax
	mov saved_sp(%rip), %rsp
	pop %r12
	pop %rbp
	ret
	.size \name\()_at, .-\name\()_at
	.endm

	STACK_SITE push, 0x55                /* push %rbp: emulated */
	STACK_SITE push_r12, 0x41, 0x54      /* push %r12 (REX 41): emulated */
	STACK_SITE push_rexw, 0x48, 0x55     /* rex.W push %rbp: not emulated, out of line */
	STACK_SITE pushw, 0x66, 0x55         /* pushw %bp: not emulated, out of line */

	.globl call_at
	.type call_at, @function
call_at:                        /* long call_at(void *sp): returns the pushed return address */
	push %rbp
	mov %rsp, saved_sp(%rip)
	mov %rdi, %rsp
	.globl probe_call
probe_call:
	call 1f                         /* e8 rel32: emulated */
1:	pop %rax
	mov saved_sp(%rip), %rsp
	pop %rbp
	ret
	.size call_at, .-call_at

	.globl call_return_label
call_return_label = 1b

	.data
	.align 8
saved_sp:
	.quad 0

	.section .note.GNU-stack,"",@progbits
