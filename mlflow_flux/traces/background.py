"""One background thread per sink that runs queued jobs in order, so the training thread never waits on MLflow."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

__all__ = ["Worker"]

_log = logging.getLogger(__name__)


class Worker:
    """Runs queued jobs in order on one daemon thread; ``close()`` drains the queue first.

    A job that raises is retried (the tracking store may be briefly locked by a sibling run); a job that keeps
    failing is dropped with a logged warning, and training goes on.
    """

    def __init__(self, name: str, retries: int = 3, backoff: float = 0.2) -> None:
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self._queue: "queue.Queue[Callable[[], None] | None]" = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            for attempt in range(self.retries + 1):
                try:
                    job()
                    break
                except Exception as exc:  # noqa: BLE001 -- a tracking hiccup must not kill training
                    if attempt == self.retries:
                        _log.warning("%s: giving up after %d tries: %s", self.name, attempt + 1, exc)
                    else:
                        time.sleep(self.backoff * 2**attempt)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
