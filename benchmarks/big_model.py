"""What watching a GPT-2-small-sized model costs: snapshot time (torch path and C path), the snapshot's transient
memory, the recorder's persistent memory, and the step overhead.

    .venv/bin/python benchmarks/big_model.py               # about 10 minutes on 2 cores
    .venv/bin/python benchmarks/big_model.py --device cuda # on a GPU: step overhead, snapshot, max_memory_allocated

The model: transformers' GPT2LMHeadModel from GPT2Config() (12 layers, width 768, 124M parameters; no download),
every Conv1D and the tied lm_head watched (49 layers, 133,201 neurons), batch 1 x 128 tokens, SGD. A temporary
sqlite store. Measured in one process:
- snapshot: ``end_epoch`` after a training step (the snapshot, the trace queued), median of 5, per path; the C path
  is the CPU default, the torch path is what a GPU (or a CPU without a compiler) runs (MLFLOW_FLUX_FASTPATH=0);
- transient memory: the peak resident memory during a snapshot above the memory before it (VmHWM, reset through
  /proc/self/clear_refs), in a second process whose glibc maps every allocation over 128 KiB on its own (so that
  each temporary shows; snapshots run slower there), against the largest watched weight (lm_head, 154 MB);
- persistent memory: ``recorder.memory`` (device: per-neuron sums; host: the weight copies behind w_step and
  w_dist0) as a multiple of the parameters' bytes, with both quantities, one, and none;
- step overhead: a plain and a watched copy trained in turn, median over rounds of watched/plain step time.
Targets (issue "Big models"): torch-path snapshot <= 0.5 s, C path <= 100 ms, transient <= 1/4 of the largest
weight, step overhead <= 1.05x.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gpt2_small():
    import transformers

    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config())


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    """Hand freed heap back to the kernel (else a snapshot's temporaries reuse it unseen), then reset VmHWM to the
    current RSS: the peak above it is what the snapshot touched."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def step(model, optimizer, tokens) -> None:
    optimizer.zero_grad(set_to_none=False)
    model(input_ids=tokens, labels=tokens).loss.backward()
    optimizer.step()


def snapshots(model, tokens, device: str, fastpath: bool, rounds: int, **options) -> dict:
    import mlflow

    import mlflow_flux

    os.environ["MLFLOW_FLUX_FASTPATH"] = "1" if fastpath else "0"
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    times, transient = [], []
    with mlflow.start_run(), mlflow_flux.watch(model, optimizer=optimizer, summary_every=10**6, log_figures=False,
                                               explorer=False, **options) as flux:
        path = flux.recorder.path
        for epoch in range(rounds + 1):
            step(model, optimizer, tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            reset_peak()
            before = rss_kib("VmRSS")
            started = time.perf_counter()
            flux.end_epoch(epoch)
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            if epoch > 0:  # the first snapshot also makes the weight copies (persistent, counted below)
                times.append(elapsed)
                transient.append((rss_kib("VmHWM") - before) * 1024)
        memory = flux.recorder.memory
        neurons = sum(flux.recorder.layer_sizes)
        largest = max(m.weight.numel() * m.weight.element_size() for m in model.modules()
                      if hasattr(m, "weight") and isinstance(m.weight, torch.Tensor) and m.weight.dim() >= 2)
    return {"path": path, "snapshot": statistics.median(times), "transient": max(transient), "memory": memory,
            "neurons": neurons, "largest": largest}


def overhead(model, tokens, rounds: int) -> float:
    import mlflow

    import mlflow_flux

    os.environ["MLFLOW_FLUX_FASTPATH"] = "1"
    plain = copy.deepcopy(model)
    watched = model
    opt_plain = torch.optim.SGD(plain.parameters(), lr=1e-4)
    opt_watched = torch.optim.SGD(watched.parameters(), lr=1e-4)
    ratios = []
    with mlflow.start_run(), mlflow_flux.watch(watched, optimizer=opt_watched, log_figures=False,
                                               explorer=False) as flux:
        for epoch in range(rounds):
            started = time.perf_counter()
            step(plain, opt_plain, tokens)
            plain_time = time.perf_counter() - started
            started = time.perf_counter()
            step(watched, opt_watched, tokens)
            watched_time = time.perf_counter() - started
            if epoch > 0:
                ratios.append(watched_time / plain_time)
            flux.end_epoch(epoch)  # a snapshot per step: outside the timed steps, measured above
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--transient", action="store_true", help="(internal) only the snapshots' transient memory")
    parser.add_argument("--overhead-steps", type=int, default=21,
                        help="steps of the step-overhead figure (6 gave 0.94-1.07x from run to run on this host)")
    parser.add_argument("--only-overhead", action="store_true", help="only the step-overhead figure")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/bench.db")
        mlflow.set_experiment("big-model")
        model = gpt2_small().to(args.device)
        parameters = sum(p.numel() for p in model.parameters())
        parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        if not args.transient:
            print(f"GPT-2 small from GPT2Config(): {parameters / 1e6:.1f}M parameters ({parameter_bytes / 2**20:.0f} "
                  f"MiB), {args.tokens} tokens a step, device {args.device}")
        tokens = torch.randint(0, 50257, (1, args.tokens), device=args.device)
        if args.only_overhead:
            ratio = overhead(model, tokens, args.overhead_steps)
            print(f"  step overhead (watched / plain, median of {args.overhead_steps - 1}): {ratio:.3f}x")
            return
        paths = [False] if args.device != "cpu" else [True, False]
        for fastpath in paths:
            result = snapshots(model, tokens, args.device, fastpath, args.rounds)
            if args.transient:
                print(f"  transient peak of a snapshot, {result['path']} path: {result['transient'] / 2**20:.0f} MiB "
                      f"= {result['transient'] / result['largest']:.2f} x the largest weight "
                      f"({result['largest'] / 2**20:.0f} MiB)")
            else:
                print(f"  snapshot, {result['path']} path: {result['snapshot'] * 1000:.0f} ms (median of "
                      f"{args.rounds}); {result['neurons']:,} neurons")
        if args.transient:
            return
        # glibc keeps freed memory in its heap and serves the next allocation from it, unseen by the resident size:
        # in a process where every allocation over 128 KiB is mapped on its own, VmHWM sees each temporary a
        # snapshot makes (and the snapshots run slower: timed above, in this process).
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        subprocess.run([sys.executable, __file__, "--transient", "--rounds", "2", "--device", args.device,
                        "--tokens", str(args.tokens)], env=env, check=True)
        for label, options in (("w_step and w_dist0", {}), ("w_dist0 only", {"w_step": False}),
                               ("neither", {"w_step": False, "w_dist0": False})):
            memory = snapshots(model, tokens, args.device, args.device == "cpu", 1, **options)["memory"]
            print(f"  persistent memory with {label}: device {memory['device'] / 2**20:.1f} MiB "
                  f"({memory['device'] / parameter_bytes:.4f} x the parameters), host {memory['host'] / 2**20:.0f} MiB "
                  f"({memory['host'] / parameter_bytes:.2f} x)")
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            plain = copy.deepcopy(model)
            optimizer = torch.optim.SGD(plain.parameters(), lr=1e-4)
            step(plain, optimizer, tokens)
            print(f"  max_memory_allocated, plain step: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
            del plain, optimizer
            torch.cuda.reset_peak_memory_stats()
            snapshots(model, tokens, args.device, False, 2)
            print(f"  max_memory_allocated, watched steps and snapshots: "
                  f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
        ratio = overhead(model, tokens, args.overhead_steps)
        print(f"  step overhead (watched / plain, median of {args.overhead_steps - 1}): {ratio:.3f}x")


if __name__ == "__main__":
    main()
