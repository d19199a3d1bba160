"""One background thread per sink that runs queued jobs in order, so the training thread never waits on MLflow.

Against a tracking server, a job only starts after a quick health check (one request, no retries, a few seconds at
most): MLflow's own client retries a dead address for minutes per call, so a server that died mid-run would
otherwise hold every queued upload for that long. While the server is unreachable, jobs wait in the queue and the
check repeats; ``close(timeout)`` gives up after the time it is given and says how many jobs were left.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

__all__ = ["Worker", "wait_while"]

_log = logging.getLogger(__name__)
_STOP = object()


def wait_while(condition: threading.Condition, busy: Callable[[], bool], deadline: float | None,
               poll: float | None = None) -> bool:
    """Wait on ``condition`` while ``busy()``, until ``deadline`` (``time.monotonic()``; None: no limit). True when it
    stopped being busy, False when the deadline came first. ``poll``: wake at least this often before a deadline
    (for a predicate that may change without a notification)."""
    with condition:
        while busy():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            condition.wait(left if poll is None or left is None else min(left, poll))
    return True


class Worker:
    """Runs queued jobs in order on one daemon thread.

    A job that raises is retried with exponential backoff (the store may be briefly locked by a sibling run); a job
    that keeps failing is dropped with a logged warning and counted in ``dropped``, and training goes on.

    Args:
        name: the thread's name, also used in log lines.
        retries: further tries of a failing job.
        backoff: seconds before the first retry; each retry waits twice as long.
        reachable: asked before each job; ``False`` keeps the job queued until it answers ``True`` (None: always).
        probe_interval: seconds between two checks while unreachable.
    """

    def __init__(self, name: str, retries: int = 3, backoff: float = 0.2,
                 reachable: Callable[[], bool] | None = None, probe_interval: float = 5.0) -> None:
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.reachable = reachable
        self.probe_interval = probe_interval
        self.dropped = 0
        self.offline = False
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._give_up = threading.Event()
        self._idle = threading.Condition()
        self._in_flight = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        with self._idle:
            self._in_flight += 1
        self._queue.put(job)

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet done (queued or running)."""
        with self._idle:
            return self._in_flight

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            try:
                if not self._give_up.is_set():
                    self._run(job)
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

    def _wait_until_reachable(self) -> bool:
        """True once the server answers; False when close() gave up meanwhile."""
        while not self._give_up.is_set():
            if self.reachable is None or self.reachable():
                if self.offline:
                    _log.warning("%s: the tracking server answers again; sending what waited", self.name)
                self.offline = False
                return True
            if not self.offline:
                _log.warning("%s: the tracking server does not answer; uploads wait and are retried every %.0f s",
                             self.name, self.probe_interval)
            self.offline = True
            self._give_up.wait(self.probe_interval)
        return False

    def _run(self, job: Callable[[], None]) -> None:
        for attempt in range(self.retries + 1):
            if not self._wait_until_reachable():
                return
            try:
                job()
                return
            except Exception as exc:  # noqa: BLE001 -- a tracking hiccup must not kill training
                if attempt == self.retries:
                    self.dropped += 1
                    _log.warning("%s: giving up after %d tries: %s", self.name, attempt + 1, exc)
                else:
                    self._give_up.wait(self.backoff * 2**attempt)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted job is done, or ``timeout`` seconds; True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return wait_while(self._idle, lambda: self._in_flight, deadline)

    def stop(self) -> None:
        """Let the thread end once what is queued now has run (returns at once; :meth:`wait` and :meth:`close` still
        wait for it)."""
        if self._thread is not None:
            self._queue.put(_STOP)

    def close(self, timeout: float | None = None) -> bool:
        """Run what is queued, for at most ``timeout`` seconds; then stop. True when every job ran.

        After a timeout the thread drops what is left (a call already inside MLflow finishes on its own, as a
        daemon thread, or with the process).
        """
        if self._thread is None:
            return self.pending == 0
        done = self.wait(timeout)
        if not done:
            self._give_up.set()
        self._queue.put(_STOP)
        if done:
            self._thread.join()
        self._thread = None
        return done
