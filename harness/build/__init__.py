"""Kernel builds: Debian or git sources, patch series, config fragments, the sandboxed make,
the cache."""
