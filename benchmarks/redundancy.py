"""What the redundant-unit columns (partner, partner_distance, fanout_rel) add to a snapshot.

    .venv/bin/python benchmarks/redundancy.py           # about 4 minutes on 2 cores

Two copies of a model, one watched with ``redundancy=True`` (the default) and one with ``redundancy=False``, trained
in turn; after each step ``end_epoch`` (a snapshot); the medians of ``--rounds`` snapshot times:
1. the study's autoencoder (1680 neurons, 5 hidden layers followed by ReLU, chains found from the modules);
2. GPT-2 small (transformers, 124M parameters): as it is (each block's ``mlp.c_fc`` is followed by GELU, which has
   no partner condition: the fan-out alone), and with ``activations`` declaring ReLU after each ``mlp.c_fc`` (the
   partner search over 3072 units, blockwise), the cost a ReLU transformer of that size would pay.
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


def snapshot_times(make, batch, rounds: int, **options) -> tuple[float, float, int]:
    """(median snapshot with redundancy, without, units with a partner column) for two copies trained in turn."""
    import mlflow

    import mlflow_flux

    torch.manual_seed(0)
    with_columns = make()
    without = copy.deepcopy(with_columns)
    optimizers = [torch.optim.SGD(m.parameters(), lr=1e-4) for m in (with_columns, without)]
    times: dict[bool, list[float]] = {True: [], False: []}
    common = {"log_figures": False, "explorer": False, "summary_every": 10**6, "window": 2}
    with mlflow.start_run(), mlflow_flux.watch(with_columns, optimizer=optimizers[0], redundancy=True, **common,
                                               **options) as fa, \
            mlflow.start_run(nested=True), mlflow_flux.watch(without, optimizer=optimizers[1], redundancy=False,
                                                              **common, **options) as fb:
        for epoch in range(rounds + 1):
            for on, model, optimizer, flux in ((True, with_columns, optimizers[0], fa),
                                               (False, without, optimizers[1], fb)):
                optimizer.zero_grad()
                batch(model).backward()
                optimizer.step()
                started = time.perf_counter()
                flux.end_epoch(epoch)
                if epoch:
                    times[on].append(time.perf_counter() - started)
        chained = sum(size for name, size in zip(fa.recorder.layer_names, fa.recorder.layer_sizes)
                      if fa.recorder.link(name) is not None)
    return statistics.median(times[True]), statistics.median(times[False]), chained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow
    import transformers

    from mlflow_flux.study.model import Autoencoder

    images = torch.rand(2048, 1024)
    tokens = torch.randint(0, 50257, (1, 128), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'bench.db'}")
        mlflow.set_experiment("redundancy-bench")
        cases = [
            ("study autoencoder (1680 neurons)", lambda: Autoencoder(1024, (256, 64, 16)),
             lambda m: torch.nn.functional.mse_loss(m(images[:64]), images[:64]), {}),
            ("GPT-2 small, GELU after mlp.c_fc (fan-out only)",
             lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config()),
             lambda m: m(input_ids=tokens, labels=tokens).loss, {}),
            ("GPT-2 small, ReLU declared after mlp.c_fc (partner search, 3072 units each)",
             lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config()),
             lambda m: m(input_ids=tokens, labels=tokens).loss,
             {"activations": {f"transformer.h.{i}.mlp.c_fc": "relu" for i in range(12)},
              "next_layers": {f"transformer.h.{i}.mlp.c_fc": f"transformer.h.{i}.mlp.c_proj" for i in range(12)}}),
        ]
        for label, make, batch, options in cases:
            on, off, chained = snapshot_times(make, batch, args.rounds, **options)
            print(f"{label}: snapshot {on * 1e3:.0f} ms with the redundancy columns, {off * 1e3:.0f} ms without: "
                  f"+{(on - off) * 1e3:.0f} ms ({on / off:.2f}x; {chained:,} units in chains; medians of "
                  f"{args.rounds})")


if __name__ == "__main__":
    main()
