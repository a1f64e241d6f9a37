"""Progress for long steps (a live bar on a terminal, one line per phase in CI/logs), and
the harness's logging: every module logs to `logging.getLogger(__name__)` (under "harness");
`configure_logging()` (the front doors call it) prints those records on stderr, through
rich's handler on a terminal so they appear above a live bar."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("harness")


def interactive() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI")


def configure_logging(level: int = logging.INFO) -> None:
    """Where the harness's log records go when it runs as a program (not under pytest,
    whose own capture collects them). Idempotent."""
    if any(isinstance(h, _OurHandler) for h in log.handlers):
        return
    handler: logging.Handler
    if interactive():
        handler = _rich_handler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _StderrHandler()
        handler.setFormatter(_PlainFormatter())
    log.addHandler(handler)
    log.setLevel(level)


class _OurHandler:
    """Marks the handler configure_logging() added."""


def _rich_handler() -> logging.Handler:
    from rich.logging import RichHandler

    class _Rich(_OurHandler, RichHandler):
        pass

    return _Rich(show_time=False, show_path=False, markup=False)


class _StderrHandler(_OurHandler, logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (pytest swaps it per test)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno <= logging.INFO else f"{record.levelname.lower()}: "
        return f"uprobe-harness: {level}{record.getMessage()}"


class Progress:
    def __init__(self, live: bool):
        self.live = live
        self.count = 0
        self._expected: int | None = None
        self._started = 0.0
        self._label = ""
        self._rich: Any = None  # a rich.progress.Progress while one is shown
        self._task: Any = None

    @classmethod
    def auto(cls) -> Progress:
        return cls(live=interactive())

    @classmethod
    def quiet(cls) -> Progress:
        return _Quiet(live=False)

    def note(self, message: str) -> None:
        log.info(message)

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

            columns = [
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            ]
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
