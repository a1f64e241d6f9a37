"""The SSH output drain: a guest that never stops writing cannot defeat the command's
deadline, and what is kept of its output is bounded."""

import socket
import threading
import time

import pytest

from harness.machine import ssh


class EndlessChannel:
    """A channel whose command keeps writing and never exits."""

    def __init__(self, exits_after: int | None = None):
        self.status_event = threading.Event()
        self.reads = 0
        self.exits_after = exits_after

    def recv_ready(self):
        return self.exits_after is None or self.reads < self.exits_after

    def recv(self, size):
        self.reads += 1
        return b"x" * size

    def recv_stderr_ready(self):
        return False

    def exit_status_ready(self):
        return self.exits_after is not None and self.reads >= self.exits_after


def test_the_deadline_holds_while_the_guest_keeps_writing():
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        ssh._drain(EndlessChannel(), time.monotonic() + 0.5, limit=1 << 20)
    assert time.monotonic() - started < 2.0


def test_output_beyond_the_limit_is_dropped_and_counted():
    out, err = ssh._drain(EndlessChannel(exits_after=40), time.monotonic() + 30, limit=100_000)
    assert out.startswith(b"x" * 100_000) and err == b""
    dropped = 40 * 65536 - 100_000
    assert out[100_000:] == f"\n[uprobe-harness: {dropped} more bytes dropped]\n".encode()
