"""What watching costs on a small GPT: eager, torch.compile, bf16 autocast, two-rank DDP, and a Lightning fit.

    .venv/bin/python benchmarks/transformer.py              # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/transformer.py --only eager,compiled --epochs 6
    .venv/bin/python benchmarks/transformer.py --device cuda   # the same settings on a GPU

The model: 4 pre-norm blocks, width 128, 4 heads, 64 tokens, vocabulary 256, batch 16 (every Linear watched: 25
layers, 6,400 neurons). As in benchmarks/recorder.py, two identical models train in turn step by step in one
process, one plain and one under mlflow_flux.watch (a temporary sqlite store, snapshot every epoch of 10 steps);
the figure is the median over epochs of watched/plain epoch time. DDP: two gloo processes, each timing its own
pair; the figure is rank 0's. Lightning: whole fits with and without FluxCallback, alternating, in one process.
Targets: every line <= 1.10x.
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

import mlflow
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from recorder import alternate, report  # noqa: E402

import mlflow_flux  # noqa: E402

VOCAB, TOKENS, WIDTH, HEADS, BLOCKS, BATCH, STEPS = 256, 64, 128, 4, 4, 16, 10


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.up, self.down = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, WIDTH)
        x = x + self.proj(attention)
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class SmallGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.position = nn.Embedding(VOCAB, WIDTH), nn.Embedding(TOKENS, WIDTH)
        self.blocks = nn.Sequential(*[Block() for _ in range(BLOCKS)])
        self.norm, self.head = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, VOCAB)

    def forward(self, ids):
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        return self.head(self.norm(self.blocks(x)))


def _data(device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (STEPS, BATCH, TOKENS + 1), generator=generator).to(device)


def _stepper(model, forward, data, autocast: bool, device):
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step(i):
        ids = data[i]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = forward(ids[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def pair(kind: str, epochs: int, device: torch.device, quiet: bool = False) -> float:
    torch.manual_seed(0)
    plain = SmallGPT().to(device)
    watched = copy.deepcopy(plain)
    data = _data(device)
    autocast = kind == "bf16 autocast"
    with mlflow.start_run(run_name=f"bench-gpt-{kind}"):
        with mlflow_flux.watch(watched, window=4, log_figures=False) as flux:
            plain_forward, watched_forward = plain, watched
            if kind == "compiled":
                plain_forward, watched_forward = torch.compile(plain), torch.compile(watched)
            ratios, plain_times = alternate(_stepper(plain, plain_forward, data, autocast, device),
                                            _stepper(watched, watched_forward, data, autocast, device),
                                            flux.end_epoch, epochs, STEPS, warmup=3 if kind == "compiled" else 2)
    return report(f"gpt {kind}", "watched/plain", ratios, plain_times, quiet=quiet)


def _ddp_rank(rank: int, epochs: int, store_uri: str, port: int, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    mlflow.set_tracking_uri(store_uri)
    torch.manual_seed(0)
    base = SmallGPT()
    plain, watched = DistributedDataParallel(base), DistributedDataParallel(copy.deepcopy(base))
    data = _data(torch.device("cpu"), seed=rank)
    plain_step = _stepper(plain, plain, data, False, torch.device("cpu"))
    optimizer = torch.optim.AdamW(watched.parameters(), lr=3e-4)

    def watched_step(i):
        ids = data[i]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(watched(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1)).backward()
        optimizer.step()

    run = mlflow.start_run(run_name="bench-gpt-ddp") if rank == 0 else None
    with mlflow_flux.watch(watched, window=4, log_figures=False, optimizer=optimizer) as flux:
        ratios, plain_times = alternate(plain_step, watched_step, flux.end_epoch, epochs, STEPS)
    if run is not None:
        mlflow.end_run()
        results.put((ratios, plain_times))
    dist.destroy_process_group()


def ddp(epochs: int) -> float:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    processes = [context.Process(target=_ddp_rank, args=(rank, epochs, mlflow.get_tracking_uri(), port, results))
                 for rank in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    ratios, plain_times = results.get()
    return report("gpt DDP 2 gloo ranks", "watched/plain", ratios, plain_times)


def lightning_fits(repeats: int, epochs: int) -> float:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from mlflow_flux.integrations.lightning import FluxCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.gpt = SmallGPT()

        def training_step(self, batch, batch_idx):
            (ids,) = batch
            return F.cross_entropy(self.gpt(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=3e-4)

    data = DataLoader(TensorDataset(_data(torch.device("cpu")).reshape(-1, TOKENS + 1)), batch_size=BATCH)

    def fit(watched: bool) -> float:
        torch.manual_seed(0)
        callbacks = [FluxCallback(window=4, log_figures=False)] if watched else []
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, callbacks=callbacks,
                             enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
        start = time.perf_counter()
        if watched:
            with mlflow.start_run(run_name="bench-gpt-lightning"):
                trainer.fit(Module(), data)
        else:
            trainer.fit(Module(), data)
        return time.perf_counter() - start

    fit(False), fit(True)  # warm-up: imports, allocator, first-use costs
    ratios, plain = [], []
    for index in range(repeats):
        order = (False, True) if index % 2 == 0 else (True, False)
        times = {watched: fit(watched) for watched in order}
        ratios.append(times[True] / times[False])
        plain.append(times[False])
    median = statistics.median(ratios)
    print(f"{'gpt Lightning fit':22s} with/without FluxCallback: median {median:.3f}x over {repeats} fits "
          f"of {epochs} epochs (range {min(ratios):.3f}-{max(ratios):.3f}), plain fit {statistics.median(plain):.2f} s",
          flush=True)
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs (of 10 steps) per setting")
    parser.add_argument("--fits", type=int, default=5, help="Lightning fits per side")
    parser.add_argument("--only", default="eager,compiled,bf16,ddp,lightning")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    only = set(args.only.split(","))
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core per process: the DDP line uses both
    os.environ.setdefault("MLFLOW_FLUX_UPLOAD_TIMEOUT", "120")
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/bench.db")
        mlflow.set_experiment("bench-transformer")
        print(f"small GPT: {BLOCKS} blocks, width {WIDTH}, {TOKENS} tokens, batch {BATCH}, {STEPS} steps per epoch, "
              f"{args.device}", flush=True)
        if "eager" in only:
            pair("eager", args.epochs, device)
        if "compiled" in only:
            pair("compiled", args.epochs, device)
        if "bf16" in only:
            pair("bf16 autocast", args.epochs, device)
        if "ddp" in only and device.type == "cpu":
            ddp(args.epochs)
        if "lightning" in only and device.type == "cpu":
            lightning_fits(args.fits, epochs=4)


if __name__ == "__main__":
    main()
