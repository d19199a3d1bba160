"""What recycling costs: a step that resets nothing, and a reset at GPT-2 small against one snapshot.

    .venv/bin/python benchmarks/recycling.py            # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/recycling.py --device cuda

1. Paper-scale autoencoder (1680 neurons, Adam): two watched copies trained in turn, step by step, one with
   ``recycle="redo"`` whose period never comes (no decision, no reset), one without recycling; the median over
   epochs of their epoch-time ratio (A/A: two copies without recycling, first). Target: within noise of 1.
2. GPT-2 small (transformers' GPT2LMHeadModel from GPT2Config(), 124M parameters, 49 watched layers, Adam): each
   block's ``mlp.c_fc`` given ``mlp.c_proj`` as its next layer (the layers ReDo resets). Two copies trained in
   turn; after each step ``end_epoch``: a snapshot alone (no recycling) against a snapshot with a ReDo decision that
   resets units (tau 0.1 and tau 1.0: few and about half of each c_fc's 3072 units), medians of ``--rounds``.
   Target: what a reset adds is at most one snapshot.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def paper_scale_steps(epochs: int) -> tuple[float, float]:
    """(A/A, recycle-without-reset / plain-watched): medians over epochs of the epoch-time ratio."""
    import mlflow

    import mlflow_flux
    from mlflow_flux.study.model import Autoencoder
    from mlflow_flux.study.shapes import ShapeSpec, make_shapes

    images = torch.from_numpy(make_shapes(ShapeSpec(n_samples=2048))[0])
    batches = images.split(64)

    def pair(options_b: dict) -> float:
        torch.manual_seed(0)
        a = Autoencoder(32 * 32, (256, 64, 16))
        b = copy.deepcopy(a)
        opt_a, opt_b = torch.optim.Adam(a.parameters(), 1e-3), torch.optim.Adam(b.parameters(), 1e-3)
        ratios = []
        with mlflow.start_run(), mlflow_flux.watch(a, optimizer=opt_a, log_figures=False, explorer=False) as fa, \
                mlflow.start_run(nested=True), mlflow_flux.watch(b, optimizer=opt_b, log_figures=False,
                                                                  explorer=False, **options_b) as fb:
            for epoch in range(epochs):
                times = []
                for model, optimizer in ((a, opt_a), (b, opt_b)):
                    started = time.perf_counter()
                    for x in batches:
                        optimizer.zero_grad()
                        torch.nn.functional.mse_loss(model(x), x).backward()
                        optimizer.step()
                    times.append(time.perf_counter() - started)
                fa.end_epoch(epoch)
                fb.end_epoch(epoch)
                if epoch:
                    ratios.append(times[1] / times[0])
        return statistics.median(ratios)

    return pair({}), pair({"recycle": "redo", "recycle_period": 10**6})


def gpt2_resets(rounds: int, device: str, tau: float) -> dict:
    import mlflow
    import transformers

    import mlflow_flux

    torch.manual_seed(0)
    plain = transformers.GPT2LMHeadModel(transformers.GPT2Config()).to(device)
    recycled = copy.deepcopy(plain)
    tokens = torch.randint(0, 50257, (1, 128), generator=torch.Generator().manual_seed(0)).to(device)
    next_layers = {f"transformer.h.{i}.mlp.c_fc": f"transformer.h.{i}.mlp.c_proj" for i in range(12)}
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-4) for m in (plain, recycled)]
    times: dict[str, list[float]] = {"snapshot": [], "with reset": []}
    units = []

    def step(model, optimizer):
        optimizer.zero_grad()
        model(input_ids=tokens, labels=tokens).loss.backward()
        optimizer.step()

    options = {"log_figures": False, "explorer": False, "summary_every": 10**6, "window": 2}
    with mlflow.start_run(), mlflow_flux.watch(plain, optimizer=optimizers[0], **options) as fa, \
            mlflow.start_run(nested=True), mlflow_flux.watch(
                recycled, optimizer=optimizers[1], recycle="redo", recycle_period=1, recycle_tau=tau,
                next_layers=next_layers, **options) as fb:
        for epoch in range(rounds + 1):
            for key, model, optimizer, flux in (("snapshot", plain, optimizers[0], fa),
                                                ("with reset", recycled, optimizers[1], fb)):
                step(model, optimizer)
                if device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                logged = flux.end_epoch(epoch)
                if device == "cuda":
                    torch.cuda.synchronize()
                if epoch:  # the first snapshot also makes the weight copies
                    times[key].append(time.perf_counter() - started)
                    if key == "with reset":
                        units.append(int(logged.get("flux/recycle/reset", 0)))
    return {key: statistics.median(values) for key, values in times.items()} | {"units": statistics.median(units)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-paper-scale", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'bench.db'}")
        mlflow.set_experiment("recycling-bench")
        if not args.skip_paper_scale and args.device == "cpu":
            aa, ratio = paper_scale_steps(args.epochs)
            print(f"paper scale, epoch time with recycle=redo resetting nothing / without recycling: {ratio:.3f}x "
                  f"(A/A {aa:.3f}x; medians over {args.epochs - 1} epochs)")
        for tau in (0.1, 1.0):
            got = gpt2_resets(args.rounds, args.device, tau)
            added = got["with reset"] - got["snapshot"]
            print(f"GPT-2 small ({args.device}), ReDo tau {tau}: snapshot {got['snapshot'] * 1e3:.0f} ms; "
                  f"snapshot with a decision resetting {got['units']:.0f} units {got['with reset'] * 1e3:.0f} ms: "
                  f"the reset adds {added * 1e3:.0f} ms, {added / got['snapshot']:.2f}x a snapshot "
                  f"(medians of {args.rounds})")


if __name__ == "__main__":
    main()
