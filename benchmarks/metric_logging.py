"""Which metric logger costs the training loop less: ours (buffered, one log_batch every few seconds from one
background thread) or MLflow's asynchronous logging (log_batch(..., synchronous=False) per end_epoch).

    .venv/bin/python benchmarks/metric_logging.py                 # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/metric_logging.py --paper-rounds 0   # the work figures only, ~1 minute

1. Work: 1000 epochs of 46 metrics (the paper's model with summaries every epoch: the heaviest load watch() puts
   on a logger) into a temporary sqlite store, with no training around it. Printed: time of log() on the
   training thread per epoch, CPU time of the whole process until close() returns, and how many points had
   landed by then. These barely move between runs.
2. The paper-scale autoencoder watched against a plain twin, step by step (benchmarks/recorder.py's method),
   rounds alternating ours / MLflow's: the median per-epoch watched/plain ratio and the ratio of total times.
   Here the difference between the loggers is smaller than the round-to-round noise on 2 shared cores.
The package keeps the cheaper one (docs/decisions.md has the figures); MLflow's lives only here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import recorder  # noqa: E402  (benchmarks/recorder.py: the paper-scale model and the alternating loop)

import mlflow_flux.watcher  # noqa: E402
from mlflow_flux.traces.metrics import MetricLogger  # noqa: E402


class MlflowAsyncLogger:
    """The same interface as MetricLogger, on MLflow's asynchronous logging."""

    def __init__(self, client, run_id: str, interval: float = 5.0) -> None:
        self.client, self.run_id, self._last = client, run_id, None

    def start(self) -> MlflowAsyncLogger:
        return self

    def log(self, metrics, step: int) -> None:
        timestamp = int(mlflow.utils.time.get_current_time_millis())
        batch = [Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self._last = self.client.log_batch(self.run_id, metrics=batch, synchronous=False)

    def close(self) -> None:
        if self._last is not None:
            self._last.wait()


def work(logger_class, epochs: int = 1000, keys: int = 46) -> tuple[float, float, int]:
    """(microseconds of log() per epoch, process CPU seconds until close() returns, points landed by then)."""
    client = mlflow.MlflowClient()
    run_id = client.create_run(mlflow.get_experiment_by_name("bench").experiment_id).info.run_id
    logger = logger_class(client, run_id).start()
    metrics = {f"flux/layer{i // 6}/key{i}": 0.5 for i in range(keys)}
    foreground, cpu = 0.0, time.process_time()
    for epoch in range(epochs):
        start = time.perf_counter()
        logger.log(metrics, step=epoch)
        foreground += time.perf_counter() - start
        time.sleep(0.0005)  # the training thread would be busy here; let the background run
    logger.close()
    cpu = time.process_time() - cpu
    landed = len(client.get_metric_history(run_id, "flux/layer0/key0"))
    return foreground / epochs * 1e6, cpu, landed


def main() -> None:
    parser = argparse.ArgumentParser(description="Our metric logger against MLflow's asynchronous logging.")
    parser.add_argument("--work-rounds", type=int, default=3)
    parser.add_argument("--paper-rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=25)
    args = parser.parse_args()
    results = {"ours (MetricLogger)": [], "MLflow async (synchronous=False)": []}
    total_ratios = {label: [] for label in results}
    cpu = {label: [] for label in results}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        mlflow.set_experiment(experiment_id=mlflow.create_experiment("bench", artifact_location=f"{tmp}/art"))
        loggers = dict(zip(results, (MetricLogger, MlflowAsyncLogger)))
        work_figures = {label: [] for label in results}
        for _ in range(args.work_rounds):
            for label, logger in loggers.items():
                work_figures[label].append(work(logger))
                us, seconds, landed = work_figures[label][-1]
                print(f"{label:34s} 1000 epochs x 46 metrics: log() {us:6.1f} us per epoch, "
                      f"process CPU {seconds:5.2f} s, "
                      f"{landed}/1000 points landed at close()", flush=True)
        if args.work_rounds:
            print("summary (work, medians): " + ", ".join(
                f"{label} log() {statistics.median(f[0] for f in figures):.0f} us, "
                f"CPU {statistics.median(f[1] for f in figures):.2f} s" for label, figures in work_figures.items()))
        for _ in range(args.paper_rounds):
            for label, logger in zip(results, (MetricLogger, MlflowAsyncLogger)):
                mlflow_flux.watcher.MetricLogger = logger
                totals: dict = {}
                ratio = recorder.overhead(label, recorder.paper_scale, args.pairs, quiet=True, totals=totals,
                                          summary_every=1)
                results[label].append(ratio)
                total_ratios[label].append(totals["other"] / totals["plain"])
                cpu[label].append(totals["cpu"])
                print(f"{label:34s} watched/plain: median epoch {ratio:.3f}x, total {total_ratios[label][-1]:.3f}x; "
                      f"process CPU {totals['cpu']:.2f} s", flush=True)
    if not args.paper_rounds:
        return
    print("summary (paper-scale, medians over rounds): " + ", ".join(
        f"{label} epoch {statistics.median(results[label]):.3f}x total {statistics.median(total_ratios[label]):.3f}x "
        f"CPU {statistics.median(cpu[label]):.2f} s" for label in results))


if __name__ == "__main__":
    main()
