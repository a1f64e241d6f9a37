/* Every instruction form testcases/targets/bpcount.c emulates, each at a label site_*
 * (tests/test_bpcount.py puts a breakpoint on every one): all sixteen conditions of jcc
 * rel8 and rel32, jmp rel8/rel32, push/pop of rbx, r12, r15 and rsp (pop rsp too), mov
 * between registers in both directions with 64- and 32-bit operands (the 32-bit ones
 * clearing the upper half), call rel32, ret and endbr64. Every site runs once per call.
 *
 * uint64_t forms(uint64_t a, uint64_t b, uint64_t out[4])
 * flags from cmp a, b; out[0] / out[1]: one bit per condition that does NOT hold (rel8 /
 * rel32 forms), out[2] the moved registers mixed, out[3] what the stack forms computed
 * (0 when rsp came back right); returns out[3] + 9 when the jumps skipped what they skip.
 */
	.text
	.globl	forms
	.type	forms, @function
forms:
site_endbr:	endbr64
site_push_rbx:	push	%rbx
site_push_r12:	push	%r12
site_push_r15:	push	%r15
	xor	%eax, %eax
	xor	%ecx, %ecx
	cmp	%rsi, %rdi
	.irp	cc, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
site_j8_\cc:	.byte	0x70 + \cc, 1f - . - 1
	lea	(1 << \cc)(%rax), %rax
1:
site_j32_\cc:	.byte	0x0f, 0x80 + \cc
	.long	1f - . - 4
	lea	(1 << \cc)(%rcx), %rcx
1:
	.endr
	mov	%rax, 0(%rdx)
	mov	%rcx, 8(%rdx)

	mov	$-1, %r10
	mov	$-1, %r11
	mov	$-1, %rbx
	mov	$-1, %rcx
site_mov64_89:	mov	%rdi, %r8		/* 49 89 f8 */
site_mov64_8b:	.byte	0x4c, 0x8b, 0xce	/* mov r9, rsi */
site_mov32_89_rex:	mov	%edi, %r10d		/* 41 89 fa */
site_mov32_8b_rex:	.byte	0x44, 0x8b, 0xde	/* mov r11d, esi */
site_mov32_89:	mov	%edi, %ebx		/* 89 fb */
site_mov32_8b:	.byte	0x8b, 0xce		/* mov ecx, esi */
	mov	%r8, %rax
	rol	$7, %r9
	xor	%r9, %rax
	rol	$13, %r10
	xor	%r10, %rax
	rol	$19, %r11
	xor	%r11, %rax
	rol	$29, %rbx
	xor	%rbx, %rax
	rol	$37, %rcx
	xor	%rcx, %rax
	mov	%rax, 16(%rdx)

	mov	%rsp, %r12
site_push_rsp:	push	%rsp			/* pushes the value before the push */
site_pop_rax:	pop	%rax
	sub	%r12, %rax
	mov	%rax, %r15
	push	%r12
site_pop_rsp:	pop	%rsp			/* rsp is the value read */
	mov	%rsp, %rax
	sub	%r12, %rax
	or	%rax, %r15
site_jmp8:	.byte	0xeb, 1f - . - 1
	lea	1(%r15), %r15
1:
site_jmp32:	.byte	0xe9
	.long	1f - . - 4
	lea	2(%r15), %r15
1:
site_call:	.byte	0xe8
	.long	2f - . - 4
	jmp	3f
2:	lea	9(%r15), %r15
site_ret_inner:	ret
3:	mov	%r15, 24(%rdx)
	mov	%r15, %rax
site_pop_r15:	pop	%r15
site_pop_r12:	pop	%r12
site_pop_rbx:	pop	%rbx
site_ret:	ret
	.size	forms, . - forms
	.section	.note.GNU-stack, "", @progbits
