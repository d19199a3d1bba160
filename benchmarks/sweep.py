"""The sweep against its floor: the wall time of `mlflow-flux sweep` (report included) against the plain training
it must do.

    .venv/bin/python benchmarks/sweep.py --epochs 20                 # short trial: wall - floor vs start-up, ~2 min
    .venv/bin/python benchmarks/sweep.py --epochs 100 --seeds 0,1    # 6 variants, ~5 min
    .venv/bin/python benchmarks/sweep.py                             # the default sweep, 3 x 1000 epochs, ~15 min

Measured in one run: the floor is the plain, unwatched training time of each variant (same data, model, optimizer,
batches) in this process on one thread with denormals flushed, summed and divided by the cores; start-up is one
`python -c "import torch, mlflow"`. Then the sweep runs as a user runs it, into a temporary sqlite store, report
included. Targets on 2 cores: default sweep <= 1.25 x floor; 20 epochs: wall - floor <= 8 x start-up; 6 variants
<= 1.25 x floor.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlflow_flux.study.config import TrainConfig  # noqa: E402
from mlflow_flux.study.model import Autoencoder  # noqa: E402
from mlflow_flux.study.shapes import ShapeSpec, make_shapes  # noqa: E402
from mlflow_flux.study.train import make_optimizer, train_one_epoch  # noqa: E402


def plain_training(lr: float, seed: int, epochs: int) -> float:
    """Seconds of the study's training loop for one variant, unwatched, one thread, denormals flushed."""
    config = TrainConfig(lr=lr)
    images = torch.from_numpy(make_shapes(ShapeSpec(n_samples=config.n_samples, image_size=config.image_size))[0])
    torch.manual_seed(seed)
    model = Autoencoder(config.image_size**2, config.hidden)
    optimizer = make_optimizer(config, model)  # the variants' own (fused Adam)
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        train_one_epoch(model, optimizer, images, config.batch_size, order)
    return time.perf_counter() - start


def start_up() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, mlflow"], check=True)
    return time.perf_counter() - start


def sweep_wall(lrs: str, seeds: str, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/mlflow.db", MLFLOW_EXPERIMENT_NAME="bench")
        env.pop("MLFLOW_EXPERIMENT_ID", None)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as `make` does
        command = [sys.executable, "-m", "mlflow_flux.cli", "sweep", "--lrs", lrs, "--seeds", seeds,
                   "--epochs", str(epochs)]
        start = time.perf_counter()
        subprocess.run(command, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description="The sweep's wall time against its floor.")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--lrs", default="0.01,0.001,0.0001")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cores = os.cpu_count() or 1
    lrs = [float(v) for v in args.lrs.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    imports = min(start_up() for _ in range(3))
    print(f"start-up (python -c 'import torch, mlflow', best of 3): {imports:.2f} s", flush=True)
    wall = sweep_wall(args.lrs, args.seeds, args.epochs)
    print(f"sweep wall (report included): {wall:.1f} s", flush=True)
    plain = [plain_training(lr, seed, args.epochs) for seed in seeds for lr in lrs]
    floor = sum(plain) / cores
    print(f"floor: {len(plain)} variants x {args.epochs} epochs, plain {sum(plain):.1f} s on one thread / {cores} "
          f"cores = {floor:.1f} s", flush=True)
    print(f"wall / floor = {wall / floor:.3f} (target <= 1.25); wall - floor = {wall - floor:.1f} s = "
          f"{(wall - floor) / imports:.1f} x start-up (target <= 8 for a short trial)", flush=True)


if __name__ == "__main__":
    main()
