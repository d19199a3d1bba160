"""What twins cost: an epoch of the study's training with k twins (twins=k) against without, alternating, medians.

    python benchmarks/twins.py [--epochs 20] [--counts 1,3]

Each twin takes the model's steps on the same batches with its own optimizer; every ``twin_period`` epochs (the
study's default, 10) the twins are renormalised by QR, their optimizer states carried by the same map
(:class:`mlflow_flux.study.twins.Twins`). Target (issue 11): one twin costs <= 2.1x a variant's training time. One
process, one thread, denormals flushed, the paper-scale model.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mlflow_flux.study.config import TrainConfig
from mlflow_flux.study.model import Autoencoder
from mlflow_flux.study.shapes import ShapeSpec, make_shapes
from mlflow_flux.study.train import make_optimizer, train_one_epoch
from mlflow_flux.study.twins import Twins

CONFIG = TrainConfig(lr=1e-3)  # the study's optimizer (fused Adam), as a variant and its twins train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs of each kind")
    parser.add_argument("--counts", default="1,3", help="twin counts to time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    images = torch.from_numpy(make_shapes(ShapeSpec())[0])
    for count in (int(c) for c in args.counts.split(",")):
        torch.manual_seed(0)
        model = Autoencoder(32 * 32)
        optimizer = make_optimizer(CONFIG, model)
        twins = Twins(model, optimizer, lambda twin: make_optimizer(CONFIG, twin), count, 1e-6, 10, 0)
        order = torch.Generator().manual_seed(0)
        plain, paired = [], []
        for epoch in range(args.epochs + 2):  # the first of each kind warms up
            start = time.perf_counter()
            train_one_epoch(model, optimizer, images, 64, order)
            middle = time.perf_counter()
            train_one_epoch(model, optimizer, images, 64, order, twins.twins)
            twins.end_epoch()
            end = time.perf_counter()
            if epoch >= 2:
                plain.append(middle - start)
                paired.append(end - middle)
        ratio = statistics.median(paired) / statistics.median(plain)
        print(f"{count} twin{'s' if count > 1 else ''}: epoch without {statistics.median(plain) * 1e3:.1f} ms, with "
              f"{statistics.median(paired) * 1e3:.1f} ms (medians of {args.epochs}, renormalised every 10): "
              f"{ratio:.3f}x (target for one twin <= 2.1x)")


if __name__ == "__main__":
    main()
