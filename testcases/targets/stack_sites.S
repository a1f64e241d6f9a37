/* Stack-VMA probe sites. Each helper moves the stack pointer to a chosen address, runs one
 * stack-writing instruction (the probed one, at a global label), reads back what it wrote,
 * and restores the real stack. Not reentrant: one caller at a time.
 * Built for x86-64 and, with -m32, for a 32-bit (compat) task, whose pushes and calls the
 * kernel emulates with 4-byte stores. */
	.text
#ifdef __i386__
	.macro STACK_SITE name, size, insn_bytes:vararg
	.globl \name\()_at
	.type \name\()_at, @function
\name\()_at:                    /* long name_at(void *sp, long value), cdecl */
	push %ebp
	push %ebx
	mov 12(%esp), %ecx
	mov 16(%esp), %eax
	mov %esp, saved_sp
	mov %eax, %ebp
	mov %eax, %ebx
	mov %ecx, %esp
	.globl probe_\name
probe_\name:
	.byte \insn_bytes
	mov (%esp), %eax
	lea \size(%esp), %edx          /* the push moved sp by its size, no more, no less */
	cmp %edx, %ecx
	je 1f
	mov $-1, %eax
1:	mov saved_sp, %esp
	pop %ebx
	pop %ebp
	ret
	.size \name\()_at, .-\name\()_at
	.endm

	STACK_SITE push, 4, 0x55             /* push %ebp: emulated (4 bytes) */
	STACK_SITE push_ebx, 4, 0x53         /* push %ebx: emulated (4 bytes) */
	STACK_SITE pushw, 2, 0x66, 0x55      /* pushw %bp: not emulated, out of line */

	.globl call_at
	.type call_at, @function
call_at:                        /* long call_at(void *sp): returns the pushed return address */
	push %ebp
	mov 8(%esp), %ecx
	mov %esp, saved_sp
	mov %ecx, %esp
	.globl probe_call
probe_call:
	call 1f                         /* e8 rel32: emulated, pushes a 4-byte return address */
1:	pop %eax
	cmp %esp, %ecx                  /* back where it started: the call pushed 4 bytes */
	je 2f
	mov $-1, %eax
2:	mov saved_sp, %esp
	pop %ebp
	ret
	.size call_at, .-call_at
#else

	.macro STACK_SITE name, size, insn_bytes:vararg
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
	lea \size(%rsp), %rdx          /* the push moved sp by its size, no more, no less */
	cmp %rdx, %rdi
	je 1f
	mov $-1, %rax
1:	mov saved_sp(%rip), %rsp
	pop %r12
	pop %rbp
	ret
	.size \name\()_at, .-\name\()_at
	.endm

	STACK_SITE push, 8, 0x55             /* push %rbp: emulated */
	STACK_SITE push_r12, 8, 0x41, 0x54   /* push %r12 (REX 41): emulated */
	STACK_SITE push_rexw, 8, 0x48, 0x55  /* rex.W push %rbp: not emulated, out of line */
	STACK_SITE pushw, 2, 0x66, 0x55      /* pushw %bp: not emulated, out of line */

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
	cmp %rsp, %rdi                  /* back where it started: the call pushed 8 bytes */
	je 2f
	mov $-1, %rax
2:	mov saved_sp(%rip), %rsp
	pop %rbp
	ret
	.size call_at, .-call_at

#endif

	.globl call_return_label
call_return_label = 1b

	.data
	.align 8
saved_sp:
	.quad 0

	.section .note.GNU-stack,"",@progbits
