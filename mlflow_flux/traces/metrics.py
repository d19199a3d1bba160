"""Batched metrics: collected on the training thread, sent with ``log_batch`` from a background thread."""

from __future__ import annotations

import time
from typing import Mapping

from mlflow.entities import Metric

from .background import Worker

__all__ = ["MetricLogger", "MAX_METRICS_PER_BATCH"]

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit


class MetricLogger:
    """Collects metrics and sends them with ``log_batch`` from a background thread.

    Metrics are buffered and sent at most every ``interval`` seconds (or when 1000 are waiting), so a
    1000-epoch run costs a few dozen MLflow calls, not thousands. Constructing stores settings; ``start()`` opens
    the thread; ``close()`` sends what is left and waits.
    """

    def __init__(self, client, run_id: str, interval: float = 5.0) -> None:
        self.client = client
        self.run_id = run_id
        self.interval = interval
        self._pending: list[Metric] = []
        self._last_send = 0.0
        self._worker = Worker("mlflow-flux-metrics")

    def start(self) -> "MetricLogger":
        self._worker.start()
        self._last_send = time.monotonic()
        return self

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics for one step; never blocks on the tracking server."""
        timestamp = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), timestamp, step) for key, value in metrics.items())
        if len(self._pending) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._last_send >= self.interval:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        self._last_send = time.monotonic()
        for start in range(0, len(pending), MAX_METRICS_PER_BATCH):
            chunk = pending[start : start + MAX_METRICS_PER_BATCH]
            self._worker.submit(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))

    def close(self) -> None:
        """Send what is left and wait until it is sent."""
        self.flush()
        self._worker.close()
