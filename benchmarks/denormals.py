"""Does flushing denormals change the study's results? The same training with and without, loss and epoch time.

    .venv/bin/python benchmarks/denormals.py --epochs 300      # ~5 min on one core

The paper-scale autoencoder at lr 1e-4 (where gradients and updates fall into the subnormal range as it converges),
one thread, the same seed and batch order both ways. Prints the final loss over the whole dataset and the median
epoch time of the last 20 epochs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow_flux.study.model import Autoencoder
from mlflow_flux.study.shapes import ShapeSpec, make_shapes


def train(flush: bool, epochs: int, lr: float) -> tuple[float, float]:
    torch.set_flush_denormal(flush)
    images = torch.from_numpy(make_shapes(ShapeSpec())[0])
    torch.manual_seed(0)
    model = Autoencoder(32 * 32, (256, 64, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in torch.randperm(len(images), generator=order).split(64):
            x = images[batch]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(model(x), x).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(model(images), images))
    return final, statistics.median(times[-20:])


def main() -> None:
    parser = argparse.ArgumentParser(description="The study's training with and without flushed denormals.")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for flush in (False, True):
        final, epoch = train(flush, args.epochs, args.lr)
        print(f"flush_denormal={flush}: loss/final {final:.6f}, median epoch of the last 20 {epoch * 1000:.0f} ms",
              flush=True)


if __name__ == "__main__":
    main()
