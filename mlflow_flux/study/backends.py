"""Where a sweep's variants run: local processes (the default), or Ray tasks on a local instance or a cluster.

Both start the same command, ``python -m mlflow_flux.cli train ...``, with the same environment (the variant's run id,
experiment id and tracking URI): a variant needs nothing but the tracking server to log, so a Ray worker on another
machine logs exactly as a local process does. Both report the command's exit code, and both stop a variant the same
way: SIGTERM, which the variant answers by saving its trace and ending its run KILLED, then SIGKILL after a grace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FluxError
from ..interrupts import PARENT_PID_ENV

__all__ = ["BACKENDS", "LocalBackend", "RayBackend", "make_backend"]

BACKENDS = ("local", "ray")


class LocalBackend:
    """Each variant is a child process of the sweep."""

    name = "local"

    def start(self, command: Sequence[str], env: Mapping[str, str], cpus: int) -> subprocess.Popen:
        return subprocess.Popen(list(command), env={**env, PARENT_PID_ENV: str(os.getpid())})

    def poll(self, handle: subprocess.Popen) -> int | None:
        return handle.poll()

    def stop(self, handles: Sequence[subprocess.Popen], grace: float) -> dict[Any, int]:
        for process in handles:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes = {}
        for process in handles:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            codes[process] = process.returncode
        return codes

    def close(self) -> None:
        pass


PYTHON = "{python}"  # in a Ray task's command: the worker's own interpreter


def run_variant(command: Sequence[str], env: Mapping[str, str], grace: float) -> int:
    """What a Ray task runs: the variant's command as a child of the worker, in a session of its own (a terminal's
    Ctrl-C reaches the sweep, which cancels the task). Cancelling the task (a ``KeyboardInterrupt`` in the worker)
    stops the child as the local backend would, SIGTERM then SIGKILL after ``grace``, and further interrupts are
    ignored meanwhile, so the child can save its trace."""
    command = [sys.executable if part == PYTHON else part for part in command]
    process = subprocess.Popen(command, env={**os.environ, **env, PARENT_PID_ENV: str(os.getpid())},
                               start_new_session=True)
    deadline = None
    while True:
        try:
            # Short waits, never one blocking waitpid: Ray delivers a cancel as an exception between bytecodes,
            # which a wait inside C would hold back until the variant ended by itself.
            remaining = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
            return process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                process.kill()
                return process.wait()
        except KeyboardInterrupt:
            if deadline is None:
                process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + grace


class RayBackend:
    """Each variant is a Ray task (``num_cpus`` = its torch threads) running the variant's command.

    Connects to ``RAY_ADDRESS`` when it is set (a cluster, or ``ray start --head`` here), else starts a local
    instance with this machine's cores, shut down when the sweep ends.
    """

    name = "ray"

    def __init__(self, grace: float) -> None:
        try:
            import ray
        except ImportError:
            raise FluxError("backend=ray needs Ray: pip install 'mlflow-flux[ray]'") from None
        self.ray = ray
        self.grace = grace
        address = os.environ.get("RAY_ADDRESS") or None
        self._started = not ray.is_initialized()
        if self._started:
            options = {} if address else {"num_cpus": os.cpu_count() or 1}
            if not address:
                # Ray kills a worker's child processes when the worker exits; a variant stopping must be left to
                # finish saving its trace (it exits by itself, or on its parent-death signal).
                os.environ.setdefault("RAY_kill_child_processes_on_worker_exit", "0")
            # ray.init replaces the driver's SIGTERM handler with a bare sys.exit: `mlflow run` answers Ctrl-C with a
            # SIGTERM right after the SIGINT, which then cut the sweep's cleanup short (its run ended FAILED). Ours
            # (a second signal is only noted while the variants save their traces) is put back.
            handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=True, **options)
            finally:
                for signum, handler in handlers.items():
                    if handler is not None and threading.current_thread() is threading.main_thread():
                        signal.signal(signum, handler)
        self._task = ray.remote(run_variant)
        self._codes: dict[Any, int] = {}

    def start(self, command: Sequence[str], env: Mapping[str, str], cpus: int):
        # The worker's own interpreter runs the command: on a cluster, the one of the worker's environment.
        command = [PYTHON if part == sys.executable else part for part in command]
        # Only what the variant needs crosses to the worker, which keeps its own PATH and HOME: MLflow's settings
        # and the artifact stores' credentials (and, for an instance we started here, our PYTHONPATH).
        prefixes = ("MLFLOW_", "AWS_", "AZURE_", "GOOGLE_", *(("PYTHONPATH",) if self._started else ()))
        wanted = {k: v for k, v in env.items() if k.startswith(prefixes)}
        return self._task.options(num_cpus=cpus, max_retries=0).remote(command, wanted, self.grace)

    def poll(self, handle) -> int | None:
        if handle in self._codes:
            return self._codes[handle]
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            code = int(self.ray.get(handle))
        except Exception:  # noqa: BLE001 -- the task itself failed (a worker died): an exit without a word
            code = 1
        self._codes[handle] = code
        return code

    def stop(self, handles: Sequence[Any], grace: float) -> dict[Any, int]:
        running = [h for h in handles if self.poll(h) is None]
        for handle in running:
            self.ray.cancel(handle)  # a KeyboardInterrupt in the task: it SIGTERMs its variant and waits
        deadline = time.monotonic() + grace + 5
        while running and time.monotonic() < deadline:
            running = [h for h in running if self._cancelled_code(h) is None]
            time.sleep(0.2)
        for handle in running:
            self.ray.cancel(handle, force=True)
            self._codes[handle] = -signal.SIGKILL
        return {h: self._codes.get(h, -signal.SIGTERM) for h in handles}

    def _cancelled_code(self, handle) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            self._codes[handle] = int(self.ray.get(handle))
        except Exception:  # noqa: BLE001 -- a cancelled task raises TaskCancelledError when fetched
            self._codes[handle] = -signal.SIGTERM
        return self._codes[handle]

    def close(self) -> None:
        if self._started:
            self.ray.shutdown()


def make_backend(name: str, grace: float):
    if name == "ray":
        return RayBackend(grace)
    return LocalBackend()
