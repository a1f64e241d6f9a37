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

/* uint64_t alu_forms(uint64_t a, uint64_t b): every ALU, immediate-move, load and movsxd
 * form bpcount emulates, at sites site_alu_*, site_load_*, site_movsxd_* and site_movimm_*,
 * and four it must step (site_step_*), each folded with the arithmetic flags it leaves
 * (AF masked off after the logical forms, where it is undefined) into the value returned.
 * The memory forms read a and b from alu_data (rip-relative and based, disp 0/8/32). */
	.macro	fold reg, mask
	pushfq
	pop	%r11
	and	$\mask, %r11
	rol	$7, %rax
	xor	\reg, %rax
	rol	$11, %rax
	xor	%r11, %rax
	.endm
	.equ	LOGICAL, 0x8c5		/* CF PF ZF SF OF */
	.equ	ARITH, 0x8d5		/* and AF */
	.globl	alu_forms
	.type	alu_forms, @function
alu_forms:
	push	%r12
	xor	%eax, %eax
	mov	%rdi, alu_data(%rip)
	mov	%rsi, alu_data + 8(%rip)
	lea	alu_data(%rip), %r8
	mov	%rdi, %rcx
site_alu_test64:	test	%rsi, %rcx		/* 48 85 f1 */
	fold	%rcx, LOGICAL
site_alu_test32:	test	%esi, %ecx		/* 85 f1 */
	fold	%rcx, LOGICAL
	mov	%rdi, %rcx
site_alu_xor32_31:	.byte	0x31, 0xf1		/* xor ecx, esi */
	fold	%rcx, LOGICAL
	mov	%rdi, %r9
site_alu_xor32_self:	xor	%r9d, %r9d		/* 45 31 c9 */
	fold	%r9, LOGICAL
	mov	%rdi, %rcx
site_alu_xor64_33:	.byte	0x48, 0x33, 0xce	/* xor rcx, rsi */
	fold	%rcx, LOGICAL
	mov	%rdi, %rcx
site_alu_add64_01:	add	%rsi, %rcx		/* 48 01 f1 */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_add32_03:	.byte	0x03, 0xce		/* add ecx, esi */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_sub64_29:	sub	%rsi, %rcx		/* 48 29 f1 */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_sub32_2b:	.byte	0x2b, 0xce		/* sub ecx, esi */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_and64_21:	and	%rsi, %rcx		/* 48 21 f1 */
	fold	%rcx, LOGICAL
	mov	%rdi, %rcx
site_alu_or32_0b:	.byte	0x0b, 0xce		/* or ecx, esi */
	fold	%rcx, LOGICAL
site_alu_cmp64_39:	cmp	%rsi, %rdi		/* 48 39 f7 */
	fold	%rdi, ARITH
site_alu_cmp32_3b:	.byte	0x3b, 0xfe		/* cmp edi, esi */
	fold	%rdi, ARITH
	mov	%rdi, %r10
	mov	%rsi, %r12
site_alu_cmp64_rex_rb:	cmp	%r12, %r10		/* 4d 39 e2 */
	fold	%r10, ARITH
	mov	%rdi, %rcx
site_alu_add_imm8:	add	$-3, %rcx		/* 48 83 c1 fd */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_sub_imm32:	sub	$0x12345678, %ecx	/* 81 e9 imm32 */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_and_imm8:	and	$0x5a, %rcx		/* 48 83 e1 5a */
	fold	%rcx, LOGICAL
	mov	%rdi, %rcx
site_alu_or_imm32:	or	$0x40000001, %ecx	/* 81 c9 imm32 */
	fold	%rcx, LOGICAL
	mov	%rdi, %rcx
site_alu_xor_imm8:	xor	$-1, %rcx		/* 48 83 f1 ff */
	fold	%rcx, LOGICAL
site_alu_cmp_imm8:	cmp	$1, %rdi		/* 48 83 ff 01 */
	fold	%rdi, ARITH
site_alu_cmp_imm32:	cmp	$0x7fffffff, %edi	/* 81 ff imm32 */
	fold	%rdi, ARITH
	mov	%rsp, %r9
site_alu_sub_rsp:	sub	$8, %rsp		/* 48 83 ec 08 */
	mov	%rsp, %r10
site_alu_add_rsp:	add	$8, %rsp		/* 48 83 c4 08 */
	sub	%r10, %r9
	fold	%r9, ARITH
site_alu_cmp_mem_imm8:	cmpq	$0, alu_data(%rip)	/* 48 83 3d disp32 00 */
	fold	%rdi, ARITH
site_alu_cmp_reg_mem:	cmp	alu_data + 8(%rip), %rdi	/* 48 3b 3d disp32 */
	fold	%rdi, ARITH
site_alu_test_mem:	test	%rsi, alu_data(%rip)	/* 48 85 35 disp32 */
	fold	%rsi, LOGICAL
	mov	%rdi, %rcx
site_alu_add_mem_src:	add	8(%r8), %rcx		/* 49 03 48 08 */
	fold	%rcx, ARITH
	mov	%rdi, %rcx
site_alu_sub32_mem_src:	.byte	0x41, 0x2b, 0x88	/* sub ecx, [r8 + disp32] */
	.long	8
	fold	%rcx, ARITH
site_load_rip64:	mov	alu_data(%rip), %rcx	/* 48 8b 0d disp32 */
	fold	%rcx, ARITH
site_load_rip32:	mov	alu_data + 8(%rip), %ecx	/* 8b 0d disp32 */
	fold	%rcx, ARITH
site_load_base:		mov	(%r8), %rdx		/* 49 8b 10 */
	fold	%rdx, ARITH
site_load_base_disp8:	mov	8(%r8), %edx		/* 41 8b 50 08 */
	fold	%rdx, ARITH
site_load_self:	mov	site_load_self(%rip), %rcx	/* reads its own bytes: 48 8b 0d ... */
	fold	%rcx, ARITH
site_movsxd_reg:	movslq	%esi, %rcx		/* 48 63 ce */
	fold	%rcx, ARITH
site_movsxd_mem:	movslq	alu_data(%rip), %rcx	/* 48 63 0d disp32 */
	fold	%rcx, ARITH
site_movimm_c7:		mov	$-5, %rcx		/* 48 c7 c1 imm32 */
	fold	%rcx, ARITH
site_movimm_b8:		mov	$0x89abcdef, %ecx	/* b9 imm32 */
	fold	%rcx, ARITH
	mov	%rdi, %r9
site_movimm_b8_64:	movabs	$0x123456789abcdef0, %r9	/* 49 b9 imm64 */
	fold	%r9, ARITH
	/* forms bpcount must single-step, not emulate: site_step_* (a store, a SIB operand,
	 * adc, an 8-bit test) */
site_step_or_store:	orl	$0x240c, alu_data(%rip)	/* 81 0d disp32 imm32 */
	mov	alu_data(%rip), %rcx
	fold	%rcx, LOGICAL
	xor	%edx, %edx
site_step_sib:	mov	8(%r8,%rdx,1), %rcx	/* 49 8b 4c 10 08 */
	fold	%rcx, ARITH
site_step_adc:	adc	$1, %rcx		/* 48 83 d1 01 */
	fold	%rcx, ARITH
site_step_test8:	test	%sil, %cl		/* 40 84 f1 */
	fold	%rcx, LOGICAL
	pop	%r12
	ret
	.size	alu_forms, . - alu_forms

	.data
	.balign	8
alu_data:	.quad	0, 0
	.section	.note.GNU-stack, "", @progbits
