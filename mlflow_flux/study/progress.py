"""Epoch progress: one redrawn line on a terminal, else a plain line every ~10% of the epochs (and at least every
``interval`` seconds), each with the loss and the time left.

A sweep's variants share their parent's terminal: they print plain lines (``MLFLOW_FLUX_PROGRESS=lines``), each
labelled ``variant k/n ...`` (``MLFLOW_FLUX_PROGRESS_LABEL``), so that three bars never overwrite each other.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

__all__ = ["Progress", "PROGRESS_LABEL_ENV", "PROGRESS_MODE_ENV", "format_duration"]

PROGRESS_LABEL_ENV = "MLFLOW_FLUX_PROGRESS_LABEL"
PROGRESS_MODE_ENV = "MLFLOW_FLUX_PROGRESS"  # "lines": never redraw, even on a terminal


def format_duration(seconds: float) -> str:
    """A short human duration.

    >>> format_duration(4.2), format_duration(75), format_duration(3725)
    ('4s', '1m15s', '1h02m')
    """
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Report ``update(epoch, loss)`` calls for ``total`` epochs."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, interval: float = 30.0) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.interactive = (hasattr(self.stream, "isatty") and self.stream.isatty()
                            and os.environ.get(PROGRESS_MODE_ENV) != "lines")
        self._start = time.monotonic()
        self._next_report = 0
        self._last_line = self._start

    def _eta(self, done: int, elapsed: float) -> str:
        if done >= self.total:
            return f"done in {format_duration(elapsed)}"
        return f"{format_duration(elapsed / done * (self.total - done))} left"

    def update(self, epoch: int, loss: float) -> None:
        done = epoch + 1
        now = time.monotonic()
        elapsed = now - self._start
        if self.interactive:
            width = 24
            filled = int(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] epoch {done}/{self.total} loss {loss:.5f} "
                              f"{self._eta(done, elapsed)}\033[K")
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif (done * 10 >= self._next_report * self.total or done == self.total
              or now - self._last_line >= self.interval):
            self.stream.write(f"{self.label}: epoch {done}/{self.total} loss {loss:.5f} ({self._eta(done, elapsed)})\n")
            self.stream.flush()
            self._next_report = done * 10 // self.total + 1
            self._last_line = now
