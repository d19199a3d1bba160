"""Sweep wall time: variants in parallel (the default) against the same variants one after another.

    .venv/bin/python benchmarks/sweep.py                                   # 3 lrs x 2 seeds x 50 epochs, ~4 min
    .venv/bin/python benchmarks/sweep.py --epochs 100 --seeds 0            # the default sweep's 3 variants

Both runs go through `mlflow-flux sweep` into a temporary sqlite store, so process start-up, MLflow calls,
trace upload and figures are all counted. Sequential is `--max-parallel 1`: one child at a time with every core's
threads. Target (issue 2): parallel / sequential <= 0.65 on 2 cores. The default load is 6 variants: with 3 on
2 cores, two run and then one runs alone, so no scheduler gets below 2/3 of the sequential time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_sweep(store: Path, max_parallel: str, args: argparse.Namespace) -> float:
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{store}/mlflow.db",
               MLFLOW_EXPERIMENT_NAME=f"bench-{max_parallel}")
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as `make` does
    command = [sys.executable, "-m", "mlflow_flux.cli", "sweep", "--lrs", args.lrs, "--seeds", args.seeds,
               "--epochs", str(args.epochs), "--max-parallel", max_parallel, "--report", "false"]
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="Sweep wall time: parallel against one variant after another.")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--lrs", default="0.01,0.001,0.0001")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    variants = len(args.lrs.split(",")) * len(args.seeds.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        sequential = timed_sweep(store, "1", args)
        parallel = timed_sweep(store, "auto", args)
    print(f"{variants} variants x {args.epochs} epochs on {os.cpu_count()} cores: "
          f"one after another {sequential:.1f} s, parallel {parallel:.1f} s")
    print(f"summary: parallel / sequential = {parallel / sequential:.3f} (target <= 0.65)")


if __name__ == "__main__":
    main()
