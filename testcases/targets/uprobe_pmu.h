/* The perf type number of the kernel's "uprobe" PMU, shared by the consumer tools. */
#ifndef UPROBE_PMU_H
#define UPROBE_PMU_H

#include <stdio.h>

/* The uprobe PMU's type from sysfs; -1 where the kernel has none. */
static int uprobe_pmu_type(void)
{
	FILE *f = fopen("/sys/bus/event_source/devices/uprobe/type", "r");
	int type = -1;
	if (!f || fscanf(f, "%d", &type) != 1)
		type = -1;
	if (f)
		fclose(f);
	return type;
}

#endif
