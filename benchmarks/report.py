"""Report build time against a local `mlflow server`: 30 runs x 1000 epochs x ~500 neurons.

    .venv/bin/python benchmarks/report.py                 # about 3 minutes, most of it setting up the runs
    .venv/bin/python benchmarks/report.py --runs 12 --epochs 500

Starts a real server on 127.0.0.1 (sqlite backend, artifacts served by the server), logs synthetic variant
runs whose traces are written exactly as the recorder writes them, then times mlflow_flux.compare for the first
10, 20, ... runs and prints how the time splits between query, download, read, compute and render.
Target (issue 4): <= 10 s for 30 runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LAYERS = {"encoder.fc1": 256, "encoder.fc2": 128, "encoder.fc3": 64, "decoder.fc1": 52}  # 500 neurons


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                return process, uri
        except OSError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit("mlflow server did not start")


def synthetic_trace(epochs: int, rng: np.random.Generator) -> pa.Table:
    from mlflow_flux.traces import schema
    from mlflow_flux.traces.schema import STAT_COLUMNS, Snapshot

    names = list(LAYERS)
    sizes = list(LAYERS.values())
    layer_index = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    neuron = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])
    n = len(neuron)
    # Random walks: spreads and biases drift the way training moves them; a quarter of the neurons never fire.
    w_std = 0.05 + np.cumsum(rng.normal(0, 1e-4, (epochs, n)), axis=0).astype(np.float32)
    bias = np.cumsum(rng.normal(0, 1e-3, (epochs, n)), axis=0).astype(np.float32)
    firing = (rng.random(n) > 0.25).astype(np.float32)
    batches = []
    for e in range(epochs):
        stats = rng.random((len(STAT_COLUMNS), n), dtype=np.float32)
        stats[STAT_COLUMNS.index("w_std")] = w_std[e]
        stats[STAT_COLUMNS.index("bias")] = bias[e]
        stats[STAT_COLUMNS.index("act_rate")] *= firing
        batches.append(schema.snapshot_to_batch(Snapshot(e, names, layer_index, neuron, stats, 0)))
    return pa.Table.from_batches(batches)


def populate(uri: str, runs: int, epochs: int, workdir: Path) -> str:
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from mlflow_flux.traces.schema import write_trace_table

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    experiment = client.create_experiment("report-bench")
    sweep = client.create_run(experiment, tags={"mlflow_flux.role": "sweep"}).info.run_id
    client.set_tag(sweep, "mlflow_flux.sweep_id", sweep)
    rng = np.random.default_rng(0)
    lrs = [0.01, 0.001, 0.0001]
    for i in range(runs):
        tags = {"mlflow_flux.role": "variant", "mlflow_flux.sweep_id": sweep, "mlflow.parentRunId": sweep}
        run_id = client.create_run(experiment, tags=tags, run_name=f"run {i}").info.run_id
        lr = lrs[i % 3]
        losses = np.exp(-np.arange(epochs) * lr * 5) * 0.1 + 0.01
        metrics = [Metric("loss/train", float(v), 0, e) for e, v in enumerate(losses)]
        metrics += [Metric("loss/final", float(losses[-1]), 0, 0), Metric("bench_index", i, 0, 0)]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
        client.log_batch(run_id, params=[Param("lr", str(lr)), Param("seed", str(i // 3)),
                                         Param("epochs", str(epochs)), Param("flux.window", "10"),
                                         Param("flux.tau", "0.01")])
        path = workdir / "traces.parquet"
        write_trace_table(synthetic_trace(epochs, rng), path)
        client.log_artifact(run_id, str(path), "traces")
        client.set_terminated(run_id, "FINISHED")
    print(f"{runs} runs of {epochs} epochs x {sum(LAYERS.values())} neurons: "
          f"{path.stat().st_size / 1e6:.1f} MB of trace each")
    return sweep


def main() -> None:
    parser = argparse.ArgumentParser(description="Report build time against a local mlflow server.")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1000)
    args = parser.parse_args()
    from mlflow_flux.report.loading import load_comparison
    from mlflow_flux.report.pipeline import build
    from mlflow_flux.report.publish import explorer_page as _explorer_page

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        process, uri = start_server(root)
        try:
            populate(uri, args.runs, args.epochs, root)
            steps = sorted({min(args.runs, k) for k in range(10, args.runs + 10, 10)})
            for count in steps:
                started = time.perf_counter()
                comparison = load_comparison(filter_string=f"metrics.bench_index < {count}", experiment="report-bench")
                build(comparison, output=root / f"report-{count}", log_run=False, explorer=False)
                total = time.perf_counter() - started
                per = {k: sum(r.seconds[k] for r in comparison.runs) for k in ("fetch", "read", "compute")}
                t = comparison.timings
                print(f"{count:3d} runs: {total:5.2f} s total = query {t['query']:.2f} + load {t['load']:.2f} "
                      f"(threads; summed per run: fetch {per['fetch']:.2f}, read {per['read']:.2f}, "
                      f"compute {per['compute']:.2f}) + render {t['render']:.2f}")
            # The explorer page over the last count's runs, timed on its own after every count (the figures above
            # are the report's alone, comparable with the rounds before the explorer; a page built between two
            # counts would leave its heap and the server's caches to the next one).
            started = time.perf_counter()
            page = _explorer_page(comparison)
            print(f"explorer page over {count} runs: {time.perf_counter() - started:.2f} s, "
                  f"{len(page.encode()) / 1e6:.1f} MB")
            print(f"summary: {args.runs} runs in {total:.2f} s (target <= 10 s)")
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
