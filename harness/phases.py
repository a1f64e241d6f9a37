"""Wall time per named phase: where a long test or a sweep spends its time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseTimer:
    """`with phases("register"): ...` sums the wall time of each named phase (also from
    several threads: a sweep's guests work in parallel, so its phases add up to more than
    its wall time); `add()` counts time measured elsewhere (e.g. in the guest). `summary()`
    reads e.g. "prepare=1.2 register=30.4 probed=8.1" (seconds, in the order the phases
    first ran)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)

    def summary(self) -> str:
        return summary(self.seconds)


def summary(seconds: dict[str, float]) -> str:
    """{phase: seconds} as "prepare=1.2 register=30.4" (the `phases` property's format)."""
    return " ".join(f"{name}={value:.1f}" for name, value in seconds.items())
