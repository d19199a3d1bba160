"""Epoch progress on a terminal (one redrawn line), or a plain line every ~10% when output is a file or pipe."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Report ``update(epoch, loss)`` calls for ``total`` epochs."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._start = time.monotonic()
        self._next_report = 0

    def update(self, epoch: int, loss: float) -> None:
        done = epoch + 1
        elapsed = time.monotonic() - self._start
        if self.interactive:
            width = 24
            filled = int(width * done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] epoch {done}/{self.total} loss {loss:.5f} {elapsed:.0f}s")
            if done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif done * 10 >= self._next_report * self.total or done == self.total:
            self.stream.write(f"{self.label} epoch {done}/{self.total} loss {loss:.5f} ({elapsed:.0f}s)\n")
            self.stream.flush()
            self._next_report = done * 10 // self.total + 1
