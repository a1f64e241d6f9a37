"""Progress for long steps: a live line on a terminal, one line per phase in CI/logs."""

from __future__ import annotations

import os
import sys
import time


class Progress:
    def __init__(self, live: bool):
        self.live = live
        self.count = 0
        self._expected: int | None = None
        self._started = 0.0
        self._label = ""
        self._rich = None
        self._task = None

    @classmethod
    def auto(cls) -> Progress:
        return cls(live=sys.stderr.isatty() and not os.environ.get("CI"))

    @classmethod
    def quiet(cls) -> Progress:
        return _Quiet(live=False)

    def note(self, message: str) -> None:
        print(f"uprobe-harness: {message}", file=sys.stderr, flush=True)

    def start(self, label: str, expected: int | None) -> None:
        self.count, self._expected, self._label = 0, expected, label
        self._started = time.monotonic()
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TimeRemainingColumn()]
            self._rich = RichProgress(*columns, transient=True)
            self._rich.start()
            self._task = self._rich.add_task(label, total=expected)
        else:
            hint = f" (~{expected} objects last time)" if expected else ""
            self.note(f"{label}{hint}")

    def advance(self, what: str) -> None:
        self.count += 1
        if self._rich is not None:
            self._rich.update(self._task, advance=1, description=f"{self._label}: {what[:40]}")

    def stop(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elapsed = time.monotonic() - self._started
        self.note(f"{self._label}: {self.count} objects in {elapsed:.1f}s")


class _Quiet(Progress):
    def note(self, message: str) -> None:
        pass
