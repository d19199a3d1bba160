"""What a twin costs: an epoch of the study's training with and without its twin (twins=true), alternating, medians.

    python benchmarks/twins.py [--epochs 20]

Target (issue 11): the twin costs <= 2.1x a variant's training time. One process, one thread, denormals flushed, the
paper-scale model, the twin's distance and Lyapunov metrics included (as train() computes them each epoch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mlflow_flux.study.model import Autoencoder
from mlflow_flux.study.shapes import ShapeSpec, make_shapes
from mlflow_flux.study.train import train_one_epoch
from mlflow_flux.study.twins import TwinDistance, make_twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs of each kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    images = torch.from_numpy(make_shapes(ShapeSpec())[0])
    torch.manual_seed(0)
    model = Autoencoder(32 * 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    twin_model = make_twin(model, 1e-6, 0)
    twin = (twin_model, torch.optim.Adam(twin_model.parameters(), lr=1e-3))
    distance = TwinDistance(model, twin_model)
    order = torch.Generator().manual_seed(0)
    plain, paired = [], []
    for epoch in range(args.epochs + 2):  # the first of each kind warms up
        start = time.perf_counter()
        train_one_epoch(model, optimizer, images, 64, order)
        middle = time.perf_counter()
        train_one_epoch(model, optimizer, images, 64, order, twin)
        distance.metrics(epoch + 1)
        end = time.perf_counter()
        if epoch >= 2:
            plain.append(middle - start)
            paired.append(end - middle)
    ratio = statistics.median(paired) / statistics.median(plain)
    print(f"epoch without twin {statistics.median(plain) * 1e3:.1f} ms, with twin {statistics.median(paired) * 1e3:.1f}"
          f" ms (medians of {args.epochs}): twin cost {ratio:.3f}x (target <= 2.1x)")


if __name__ == "__main__":
    main()
