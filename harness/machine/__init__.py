"""Guest machines: the initramfs image, QEMU, its serial console, SSH into the guest."""
