/* Calls forms() and alu_forms() (bpcount_forms.S) with operand pairs that set every flag
 * combination cmp gives, three times each, and prints what they computed. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

uint64_t forms(uint64_t a, uint64_t b, uint64_t out[4]);
uint64_t alu_forms(uint64_t a, uint64_t b);

int main(void)
{
	static const uint64_t pairs[][2] = {
		{1, 1}, {1, 2}, {2, 1}, {0x8000000000000000ull, 1}, {1, 0x8000000000000000ull},
		{0, 0x7fffffffffffffffull}, {3, 0}, {0xff, 0xfe}, {5, UINT64_MAX},
		{0x123456789abcdef0ull, 0xfedcba9876543210ull},
	};
	for (int round = 0; round < 3; round++)
		for (unsigned i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
			uint64_t out[4];
			uint64_t back = forms(pairs[i][0], pairs[i][1], out);
			uint64_t alu = alu_forms(pairs[i][0], pairs[i][1]);
			printf("%" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 " %" PRIx64 "\n",
			       out[0], out[1], out[2], out[3], back, alu);
		}
	return 0;
}
