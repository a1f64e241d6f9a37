"""The nightly job: the kernel matrix, cell runs, the report and the KCIDB export."""
