"""Is the tracking server there? One request, no retries, a few seconds at most.

MLflow's client retries a dead address for minutes per call (and ~17 minutes when connections hang), so every
command asks once before it starts, and the background uploads ask before each job.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import FluxError
from . import mlflow_adapter

__all__ = ["is_remote", "check_reachable", "health_probe"]


def is_remote(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds, naming the URI, when an HTTP tracking server does not answer.

    Raises:
        FluxError: no answer, or an answer other than 200 to ``/health``.
    """
    if not is_remote(tracking_uri):
        return
    try:
        response = mlflow_adapter.http_get(tracking_uri, "/health", timeout=timeout, max_retries=0)
    except Exception as exc:  # noqa: BLE001 -- any failure to connect means the same thing to the user
        raise FluxError(f"cannot reach the tracking server at {tracking_uri} ({_why(exc, timeout)})") from None
    if response.status_code != 200:
        raise FluxError(f"the tracking server at {tracking_uri} answered /health with HTTP {response.status_code}")


def _why(exc: Exception, timeout: float) -> str:
    """What went wrong, in words: MLflow wraps every connection error in one exception type."""
    text = str(exc)
    for marker, reason in (("Connection refused", "connection refused"), ("timed out", f"no answer in {timeout:g} s"),
                           ("Name or service not known", "unknown host"), ("nodename nor servname", "unknown host"),
                           ("No route to host", "no route to host"), ("SSLError", "TLS error")):
        if marker in text:
            return reason
    return type(exc).__name__


def health_probe(tracking_uri: str, timeout: float = 5.0) -> Callable[[], bool] | None:
    """A function that says whether the server answers now, for background uploads; None for local stores."""
    if not is_remote(tracking_uri):
        return None

    def answers() -> bool:
        try:
            check_reachable(tracking_uri, timeout)
            return True
        except FluxError:
            return False

    return answers
