/* The host's TSC frequency in kHz, measured against CLOCK_MONOTONIC_RAW over 200 ms.
 * Under TCG a guest's TSC counts the host's TSC, so this is the guest's TSC frequency too:
 * the harness passes it as tsc_early_khz= to machines with no HPET or ACPI PM timer to
 * calibrate the TSC against (microvm), where the PIT calibration fails under load. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <x86intrin.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC_RAW, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void)
{
	double start = now();
	uint64_t t0 = __rdtsc();
	while (now() - start < 0.2)
		;
	uint64_t t1 = __rdtsc();
	double elapsed = now() - start;
	printf("%llu\n", (unsigned long long)((t1 - t0) / elapsed / 1000.0));
	return 0;
}
