"""uprobe-harness: build, boot and probe Linux kernels under QEMU."""

__version__ = "0.1.0"
