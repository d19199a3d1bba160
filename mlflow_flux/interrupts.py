"""SIGTERM handled like Ctrl-C: the first signal raises ``KeyboardInterrupt`` in the main thread, so ``finally``
blocks and context managers save what training produced; a second signal while that happens is only noted.

A cluster scheduler (SLURM, Kubernetes, ``docker stop``, ``timeout``) asks a job to stop with SIGTERM, and Python's
default is to die on the spot: the run stays RUNNING and the trace's last segments are lost. ``mlflow run`` also
answers Ctrl-C by sending SIGTERM to its child right after the SIGINT both received, so the second signal must not
cut short what the first one started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

__all__ = ["interrupted", "exit_code", "stop_on_signals", "PARENT_PID_ENV", "stop_with_parent"]

PARENT_PID_ENV = "MLFLOW_FLUX_SWEEP_PID"  # set by the sweep for each variant process it starts

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A SIGTERM this soon after a SIGINT is `mlflow run` passing on the same Ctrl-C (its runner terminates the entry
# point when the terminal's SIGINT reaches it too); how soon depends only on the runner's reaction, well under this.
SAME_STOP_SECONDS = 2.0


def interrupted(signum: int) -> KeyboardInterrupt:
    """The exception a signal raises: a plain ``KeyboardInterrupt`` (so code that handles Ctrl-C handles SIGTERM the
    same way, and an uncaught one ends the process as Ctrl-C does), carrying the signal's number in ``signum``.

    >>> interrupted(15).args, interrupted(15).signum
    (('SIGTERM',), 15)
    """
    exc = KeyboardInterrupt(signal.Signals(signum).name)
    exc.signum = signum
    return exc


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for death by the signal behind ``exc``: 130 for Ctrl-C, 143 for SIGTERM.

    >>> exit_code(interrupted(15)), exit_code(KeyboardInterrupt())
    (143, 130)
    """
    return 128 + getattr(exc, "signum", signal.SIGINT)


def _ours(signum: int, handler) -> bool:
    """Whether the installed handler is one we may replace: the default, or Python's own Ctrl-C handler."""
    if signum == signal.SIGINT:
        return handler is signal.default_int_handler
    return handler in (signal.SIG_DFL, None)


def _in_finalizer(frame) -> bool:
    """Whether the interrupted code is a finalizer (a ``__del__``, a weakref callback): an exception raised there
    is printed as "Exception ignored" and lost, so the interrupt would be too. The innermost frames only: a
    finalizer runs between any two bytecodes of the code below it."""
    for _ in range(8):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "__del__" or code.co_filename.endswith(("weakref.py", "_weakrefset.py")):
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def stop_on_signals(stream=None) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :func:`interrupted` once; later ones print a line and are ignored
    while the cleanup runs. A third signal gives up on the cleanup (``KeyboardInterrupt``). A SIGTERM within
    :data:`SAME_STOP_SECONDS` of the first SIGINT is the same stop (``mlflow run`` passing on a Ctrl-C) and is not
    counted.

    Only handlers we own are replaced (the defaults): a handler the user or a framework installed is left alone.
    Outside the main thread this does nothing (Python delivers signals to the main thread only).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stream = stream if stream is not None else sys.stderr
    received: list[int] = []
    first_at = 0.0

    def handle(signum, frame):
        nonlocal first_at
        if _in_finalizer(frame):  # raised there, Python would print it and go on: deliver it again just after
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        if received == [signal.SIGINT] and signum == signal.SIGTERM and \
                time.monotonic() - first_at < SAME_STOP_SECONDS:
            return  # `mlflow run` cancelling the Ctrl-C it received too: the same request, neither counted nor said
        received.append(signum)
        if len(received) == 1:
            first_at = time.monotonic()
            raise interrupted(signum)
        if len(received) == 2:
            print(f"mlflow-flux: {signal.Signals(signum).name} received while stopping: saving what was trained "
                  "(a third signal abandons it)", file=stream, flush=True)
            return
        raise KeyboardInterrupt

    previous = {}
    for signum in _SIGNALS:
        handler = signal.getsignal(signum)
        if _ours(signum, handler):
            previous[signum] = handler
            signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_with_parent() -> None:
    """In a process a sweep started (``PARENT_PID_ENV`` is set): receive SIGTERM when the sweep dies, however it
    dies (SIGKILL included), so no variant trains on as an orphan. Linux only; elsewhere the sweep's own signal
    handling stops its children."""
    expected = os.environ.pop(PARENT_PID_ENV, None)
    if expected is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(expected):  # the sweep died before the line above took effect
        os.kill(os.getpid(), signal.SIGTERM)
