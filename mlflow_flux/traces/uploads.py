"""A run's artifact uploads: one background thread that sends files in order (waiting while the tracking server does
not answer), and the account of every file the run should hold: which arrived, which did not.

The trace's segments, the compacted trace, figures and explorer pages of one watched run share it, so one deadline
bounds them all and one list says what the run lacks (:attr:`missing`). A file produced later (the compacted trace,
written on the trace's writer thread) is announced with :meth:`expect`: closing waits for it to be sent, or given up,
within its deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from .background import Worker, wait_while

__all__ = ["Uploads"]


class Uploads:
    """The uploads of one run.

    Args:
        client: an ``MlflowClient``.
        run_id: the run the files go to.
        reachable: asked before each upload (see :class:`~.background.Worker`); None: always.
    """

    def __init__(self, client, run_id: str, reachable: Callable[[], bool] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self._worker = Worker("mlflow-flux-upload", reachable=reachable)
        self._files: dict[str, bool] = {}  # artifact path -> arrived in the run (its latest version)
        self._versions: dict[str, int] = {}  # artifact path -> versions queued
        self._expected: set[str] = set()  # announced, not yet sent or given up
        self._lock = threading.Condition()

    @property
    def offline(self) -> bool:
        """The tracking server stopped answering."""
        return self._worker.offline

    def start(self) -> Uploads:
        self._worker.start()
        return self

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the upload thread, in order with the files (retried, and waiting for the server)."""
        self._worker.submit(job)

    def upload(self, path: Path, artifact_dir: str | None, confirm: Callable[[], bool] | None = None) -> str:
        """Queue a local file for the run's artifacts (``artifact_dir`` None: the run's root); :attr:`missing` names
        it until it arrives. ``confirm``, when given, is asked after the upload whether the run really holds it.

        Returns:
            The file's artifact path.
        """
        key = f"{artifact_dir}/{path.name}" if artifact_dir else path.name
        with self._lock:
            self._files[key] = False  # a new version of a file already sent (a live page) is missing until it arrives
            version = self._versions[key] = self._versions.get(key, 0) + 1
            self._expected.discard(key)
            self._lock.notify_all()

        def send() -> None:
            self.client.log_artifact(self.run_id, str(path), artifact_dir)
            if (confirm is None or confirm()) and self._versions[key] == version:
                self._files[key] = True

        self._worker.submit(send)
        return key

    def expect(self, key: str) -> None:
        """A file that will be queued later (its producer calls :meth:`upload`, or :meth:`give_up`): it counts as
        missing until it arrives, and :meth:`close` waits for it to be queued."""
        with self._lock:
            self._files.setdefault(key, False)
            self._expected.add(key)

    def give_up(self, key: str) -> None:
        """An expected file that will not be queued (it could not be written): it stays missing."""
        with self._lock:
            self._expected.discard(key)
            self._lock.notify_all()

    def arrived(self, key: str) -> bool:
        return self._files.get(key, False)

    @property
    def missing(self) -> tuple[str, ...]:
        """Every file the run should hold and does not (yet)."""
        return tuple(key for key, arrived in list(self._files.items()) if not arrived)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is sent (at most ``timeout`` seconds); True when nothing is left."""
        return self._worker.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the files expected so far are queued and everything queued is sent (at most ``timeout``
        seconds); the uploads stay open. True when nothing is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not wait_while(self._lock, lambda: self._expected, deadline, poll=0.5):
            return False
        return self._worker.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = None) -> bool:
        """:meth:`wait`, then stop the thread (what is left after the timeout is dropped). True when every file
        queued or expected was sent."""
        deadline = None if timeout is None else time.monotonic() + timeout
        queued = self.wait(timeout)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self._worker.close(left) and queued
