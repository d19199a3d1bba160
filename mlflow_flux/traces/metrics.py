"""Batched metrics: collected on the training thread, sent with ``log_batch`` from a background thread.

No valid metric is lost because of another one: keys are made valid before they are queued (:mod:`.names`), and
a batch the store still rejects is split in halves until the metrics it accepts have landed; only the ones it
rejects alone are lost, and counted. A run that lost metrics says so in the tag :data:`LOST_METRICS_TAG`.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Callable, Mapping

from mlflow.entities import Metric

from ..errors import FluxError
from .background import Worker
from .names import MetricNames

__all__ = ["MetricLogger", "MAX_METRICS_PER_BATCH", "LOST_METRICS_TAG"]

_log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
LOST_METRICS_TAG = "mlflow_flux.lost_metrics"
# MLflow's error codes for a request it will never accept: retrying cannot help, splitting can.
_REJECTED = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"}


def _rejected(exc: Exception) -> bool:
    return getattr(exc, "error_code", None) in _REJECTED


class MetricLogger:
    """Collects metrics and sends them with ``log_batch`` from a background thread.

    Metrics are buffered and sent at most every ``interval`` seconds (or when 1000 are waiting), so a
    1000-epoch run costs a few dozen MLflow calls, not thousands. Constructing stores settings; ``start()`` opens
    the thread; ``close(timeout)`` sends what is left, waiting at most ``timeout`` seconds.

    Args:
        client: an ``MlflowClient``.
        run_id: the run the metrics go to.
        interval: seconds between two sends.
        reachable: see :class:`~mlflow_flux.traces.background.Worker`.
        names: how names become MLflow keys (default: a fresh :class:`~mlflow_flux.traces.names.MetricNames`).
    """

    def __init__(self, client, run_id: str, interval: float = 5.0,
                 reachable: Callable[[], bool] | None = None, names: MetricNames | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.interval = interval
        self.names = names if names is not None else MetricNames()
        self.refused = 0  # metrics the store rejected on their own (written by the worker thread only)
        self._queued = 0  # metrics handed to the worker (training thread only)
        self._handled = 0  # of those, logged or refused (worker thread only)
        self._announced: set[str] = set()
        self._pending: list[Metric] = []
        self._last_send = 0.0
        self._worker = Worker("mlflow-flux-metrics", reachable=reachable)

    @property
    def offline(self) -> bool:
        return self._worker.offline

    def start(self) -> MetricLogger:
        self._worker.start()
        self._last_send = time.monotonic()
        return self

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics for one step; never blocks on the tracking server.

        Raises:
            FluxError: a value is not a real number, or two names would share one MLflow key.
        """
        timestamp = int(time.time() * 1000)
        batch = []
        for name, value in metrics.items():
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                try:
                    value = float(value)  # numpy and torch scalars
                except (TypeError, ValueError):
                    raise FluxError(f"metric {name!r} must be a number, got {value!r}") from None
            key = self.names.key(name)
            if key != name and name not in self._announced:
                self._announced.add(name)
                _log.warning("metric %r is logged as %r: MLflow allows letters, digits, _ - . / : and space", name, key)
            batch.append(Metric(key, float(value), timestamp, int(step)))
        self._pending.extend(batch)
        if len(self._pending) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._last_send >= self.interval:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._last_send = time.monotonic()
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            self._queued += len(chunk)
            self._worker.submit(lambda chunk=chunk: self._send(chunk))

    def _send(self, chunk: list[Metric]) -> None:
        """Log a batch; if the store rejects it, queue its halves, so that one bad metric costs only itself.

        The halves are jobs of their own: a transient failure of one is retried alone, and never re-sends a half
        that already landed.
        """
        try:
            self.client.log_batch(self.run_id, metrics=chunk)
            self._handled += len(chunk)
        except Exception as exc:  # sorted below: rejected, or retried by the worker
            if not _rejected(exc):
                raise
            if len(chunk) == 1:
                self.refused += 1
                self._handled += 1
                _log.warning("metric %r at step %d was refused by the tracking store: %s", chunk[0].key,
                             chunk[0].step, getattr(exc, "message", exc))
                return
            half = len(chunk) // 2
            for part in (chunk[:half], chunk[half:]):
                self._worker.submit(lambda part=part: self._send(part))

    @property
    def lost(self) -> int:
        """Metrics that did not reach the run: refused by the store, dropped after retries, or never sent."""
        return self._queued - self._handled + self.refused

    def close(self, timeout: float | None = None) -> bool:
        """Send what is left, waiting at most ``timeout`` seconds; True when every metric was handled."""
        self.flush()
        return self._worker.close(timeout)

    def tag_losses(self) -> None:
        """Mark the run with the number of metrics it lost, if any (call only while the server answers)."""
        if self.lost:
            self.client.set_tag(self.run_id, LOST_METRICS_TAG, str(self.lost))
