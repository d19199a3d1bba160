"""What watching costs: training time watched vs plain, trace size, and memory against run length.

    .venv/bin/python benchmarks/recorder.py                  # about 8 minutes on 2 cores
    .venv/bin/python benchmarks/recorder.py --pairs 5        # quicker, noisier
    .venv/bin/python benchmarks/recorder.py --only-whole-run # the whole-run figure alone (~4 minutes)

Time is measured as ratios within one process: two identical models train in turn, step by step, one plain and
one under mlflow_flux.watch (hooks, snapshot, summaries, trace sink and metric logger all live, into a temporary
sqlite store); the figure is the median over epochs of watched/plain epoch time, so machine noise cancels. The same
loop with two plain models (A/A) prints the noise floor first. A whole run (watch() to close(), figures, uploads
and the background threads' CPU) is stepped against a plain run the same way, in a fresh process each time.
Targets: paper-scale <= 1.05x with 2048 and with 1024 images, a whole 100-epoch run with close() and figures
<= 1.10x, wide model <= 1.15x, <= 40 trace bytes per neuron-epoch, and peak memory that does not grow with epochs.
Transformers, torch.compile, autocast and DDP: benchmarks/transformer.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlflow_flux  # noqa: E402
from mlflow_flux.study.model import Autoencoder  # noqa: E402
from mlflow_flux.study.shapes import ShapeSpec, make_shapes  # noqa: E402


def paper_scale(n_samples: int = 2048):
    images = torch.from_numpy(make_shapes(ShapeSpec(n_samples=n_samples))[0])
    return Autoencoder(32 * 32, (256, 64, 16)), images, images


def wide_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 256))
    x = torch.randn(1024, 256)
    return model, x, x


def small_cnn():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    x = torch.randn(1024, 1, 32, 32)
    y = torch.randint(0, 10, (1024,))
    return model, x, y


def one_epoch(model, optimizer, x, y, batch_size=64):
    total = torch.zeros(())
    for xb, yb in batches(x, y, batch_size):
        total += train_step(model, optimizer, xb, yb)
    return float(total)


def batches(x, y, batch_size=64):
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def train_step(model, optimizer, xb, yb):
    loss_fn = nn.functional.cross_entropy if yb.dtype == torch.int64 else nn.functional.mse_loss
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(xb), yb)
    loss.backward()
    optimizer.step()
    return loss.detach()


def alternate(plain_step, watched_step, end_epoch, epochs: int, steps: int, warmup: int = 2,
              totals: dict | None = None) -> tuple[list[float], list[float]]:
    """Per-epoch watched/plain time ratios (and plain epoch times) of two models trained step by step in turn.

    ``plain_step(step)`` and ``watched_step(step)`` each run one training step; ``end_epoch(epoch)`` closes the
    watched model's epoch and counts as its time. On this machine speed drifts by several percent within a second,
    and alternating per step puts both models under the same drift, which alternating whole epochs did not (A/A
    quartiles about twice as wide). Which model goes first alternates too, so neither always runs on caches the
    other just warmed. The first ``warmup`` epochs (caches, allocators, compilation) are not counted.
    """
    ratios, plain_times = [], []
    for epoch in range(epochs + warmup):
        times = {"plain": 0.0, "watched": 0.0}
        for step in range(steps):
            for which in ("plain", "watched") if (epoch + step) % 2 == 0 else ("watched", "plain"):
                start = time.perf_counter()
                (plain_step if which == "plain" else watched_step)(step)
                times[which] += time.perf_counter() - start
        start = time.perf_counter()
        end_epoch(epoch)
        times["watched"] += time.perf_counter() - start
        if epoch >= warmup:
            ratios.append(times["watched"] / times["plain"])
            plain_times.append(times["plain"])
            if totals is not None:
                for key in ("plain", "watched"):
                    totals[key] = totals.get(key, 0.0) + times[key]
    return ratios, plain_times


def report(label: str, what: str, ratios: list[float], plain_times: list[float], quiet: bool = False) -> float:
    """Print one benchmark line; returns the median ratio."""
    median = statistics.median(ratios)
    if not quiet:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(f"{label:22s} {what} epoch time: median {median:.3f}x over {len(ratios)} pairs "
              f"(quartiles {q1:.3f}-{q3:.3f}), plain epoch {statistics.median(plain_times) * 1000:.0f} ms",
              flush=True)
    return median


def overhead(name: str, build, pairs: int, watched: bool = True, quiet: bool = False, totals: dict | None = None,
             **watch_options) -> float:
    """Median over epochs of watched/plain epoch time; ``watched=False`` times plain against plain (the noise floor)."""
    plain_model, x, y = build()
    other_model = copy.deepcopy(plain_model)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    other_opt = torch.optim.Adam(other_model.parameters(), lr=1e-3)
    data = batches(x, y)
    label = name if watched else f"{name} A/A"
    cpu_start = time.process_time()
    with mlflow.start_run(run_name=f"bench-{label}"):
        options = {"log_figures": False, **watch_options}
        flux = mlflow_flux.watch(other_model, **options) if watched else contextlib.nullcontext()
        with flux:
            ratios, plain_times = alternate(
                lambda step: train_step(plain_model, plain_opt, *data[step]),
                lambda step: train_step(other_model, other_opt, *data[step]),
                (lambda epoch: flux.end_epoch(epoch, {"loss/train": 0.0})) if watched else (lambda epoch: None),
                pairs, len(data), totals=totals,
            )
    if totals is not None:  # CPU time of the whole process, close() included: what the watch cost in work
        totals["cpu"] = time.process_time() - cpu_start
        totals["other"] = totals.pop("watched")
    return report(label, "watched/plain" if watched else "plain/plain  ", ratios, plain_times, quiet)


def trace_bytes(epochs: int) -> float:
    model, x, y = paper_scale()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with mlflow.start_run(run_name="bench-bytes") as run:
        with mlflow_flux.watch(model, log_figures=False) as flux:
            for epoch in range(epochs):
                flux.end_epoch(epoch, {"loss/train": one_epoch(model, optimizer, x, y)})
            neurons = len(flux.recorder._rows[1])
    size = sum(f.file_size for f in mlflow.MlflowClient().list_artifacts(run.info.run_id, "traces"))
    per = size / (neurons * epochs)
    print(f"trace size: {size / 1e6:.2f} MB for {neurons} neurons x {epochs} epochs = {per:.1f} bytes per neuron-epoch")
    return per


def peak_memory_child(epochs: int) -> None:
    model, x, y = paper_scale(n_samples=256)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with mlflow.start_run(run_name=f"bench-memory-{epochs}"):
        with mlflow_flux.watch(model, log_figures=False) as flux:
            for epoch in range(epochs):
                flux.end_epoch(epoch, {"loss/train": one_epoch(model, optimizer, x, y)})
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def peak_memory_wide_child(epochs: int) -> None:
    """A 16,384-wide layer for ``epochs`` epochs, figures on: close() draws them without reading the trace back."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16384), nn.ReLU(), nn.Linear(16384, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 16), torch.randn(32, 4)
    with mlflow.start_run(run_name=f"bench-memory-wide-{epochs}"):
        with mlflow_flux.watch(model, log_figures=True) as flux:
            for epoch in range(epochs):
                flux.end_epoch(epoch, {"loss/train": float(train_step(model, optimizer, x, y))})
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _thread_cpu_seconds(native_ids: set[int]) -> float:
    """CPU seconds (user + system) the given threads of this process have used so far (Linux /proc)."""
    total = 0
    for tid in native_ids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def whole_run(epochs: int, n_samples: int = 2048, figures: bool = True,
              explorer: bool = True) -> tuple[float, dict[str, float]]:
    """A whole watched run against a plain one, in one process, stepped in turn: watched/plain wall time.

    The watched run is charged everything watching adds from its first step to its last byte: ``watch()`` itself
    (hooks, sinks, params), every step, every ``end_epoch``, ``close()`` with the figures, the compaction and the
    uploads, and the CPU time its background threads (metric logger, trace writer, uploader) used before
    ``close()``. That last part is an upper bound: on two busy cores a background thread's CPU second costs the
    training thread at most a second, and the interleaving has already put part of it on the plain run's steps.
    Both models train in the same process, alternating step by step, so the machine's drift cancels (separate
    processes timed in turn differed by up to 14x here). The plain run logs nothing. Prints nothing: returns the
    ratio and the seconds of each part.
    """
    plain_model, x, y = paper_scale(n_samples)
    watched_model = copy.deepcopy(plain_model)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    watched_opt = torch.optim.Adam(watched_model.parameters(), lr=1e-3)
    data = batches(x, y)
    before = {thread.native_id for thread in threading.enumerate()}
    seconds = {"plain": 0.0, "steps": 0.0, "watch": 0.0, "end_epoch": 0.0, "close": 0.0}
    epoch_loss = [torch.zeros(())]

    def watched_step(step: int) -> None:
        epoch_loss[0] += train_step(watched_model, watched_opt, *data[step])

    def end_epoch(epoch: int) -> None:
        start = time.perf_counter()
        flux.end_epoch(epoch, {"loss/train": float(epoch_loss[0])})
        seconds["end_epoch"] += time.perf_counter() - start
        epoch_loss[0] = torch.zeros(())

    with mlflow.start_run(run_name="bench-whole"):
        start = time.perf_counter()
        # figures and the explorer page on by default, as in a user's run
        flux = mlflow_flux.watch(watched_model, log_figures=figures, explorer=explorer)
        flux.__enter__()
        seconds["watch"] = time.perf_counter() - start
        totals: dict[str, float] = {}  # every epoch counts: the whole run, warm-up included
        alternate(lambda step: train_step(plain_model, plain_opt, *data[step]), watched_step, end_epoch, epochs,
                  len(data), warmup=0, totals=totals)
        seconds["plain"] = totals["plain"]
        seconds["steps"] = totals["watched"] - seconds["end_epoch"]  # alternate() counts end_epoch as watched time
        ours = {thread.native_id for thread in threading.enumerate()} - before
        seconds["background"] = _thread_cpu_seconds(ours)  # before close(), whose wall time covers what follows
        start = time.perf_counter()
        flux.__exit__(None, None, None)
        seconds["close"] = time.perf_counter() - start
    watched = sum(seconds[key] for key in ("steps", "watch", "end_epoch", "close", "background"))
    return watched / seconds["plain"], seconds


def whole_runs(epochs: int, repeats: int, figures: bool = True, explorer: bool = True) -> float:
    """Median over ``repeats`` of :func:`whole_run`, each in a fresh process: every run pays what a user's script
    pays once (pyarrow imported by ``watch()``, matplotlib by ``close()``), as a one-run script would."""
    ratios = []
    for repeat in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--whole-run-child", str(epochs),
                              *([] if figures else ["--no-figures"]), *([] if explorer else ["--no-explorer"])],
                             capture_output=True, text=True, check=True,
                             env=os.environ)
        ratio, seconds = json.loads(out.stdout.strip().splitlines()[-1])
        ratios.append(ratio)
        parts = ", ".join(f"{key} {value:.2f} s" for key, value in seconds.items())
        print(f"  whole run {repeat + 1}/{repeats}: {ratio:.3f}x ({parts})", flush=True)
    median = statistics.median(ratios)
    what = ("with figures" if figures else "log_figures=False") + ("" if explorer else ", explorer=False")
    print(f"whole {epochs}-epoch run, watch() to close() {what}, background threads' CPU included: median "
          f"{median:.3f}x over {repeats} runs (range {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return median


def peak_memory(epochs: int, wide: bool = False) -> int:
    flag = "--memory-wide-child" if wide else "--memory-child"
    out = subprocess.run([sys.executable, __file__, flag, str(epochs)], capture_output=True, text=True,
                         check=True, env=os.environ)
    return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description="What watching costs: watched vs plain training time, trace size, memory.")
    parser.add_argument("--pairs", type=int, default=41)
    parser.add_argument("--bytes-epochs", type=int, default=100)
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-wide-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--only-memory", action="store_true", help="only the peak-memory figures")
    parser.add_argument("--only-whole-run", action="store_true", help="only the whole-run figure")
    parser.add_argument("--whole-runs", type=int, default=3, help="whole 100-epoch runs (each against a plain one)")
    parser.add_argument("--whole-run-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-figures", action="store_true", help="the whole-run figure with log_figures=False")
    parser.add_argument("--no-explorer", action="store_true",
                        help="the whole-run figure with explorer=False (what the run paid before the page)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/bench.db"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        experiment = mlflow.create_experiment("bench", artifact_location=f"{tmp}/artifacts")
        os.environ["MLFLOW_EXPERIMENT_ID"] = experiment
        mlflow.set_experiment(experiment_id=experiment)
        if args.memory_child:
            peak_memory_child(args.memory_child)
            return
        if args.memory_wide_child:
            peak_memory_wide_child(args.memory_wide_child)
            return
        if args.whole_run_child:
            print(json.dumps(whole_run(args.whole_run_child, figures=not args.no_figures,
                                       explorer=not args.no_explorer)))
            return
        if args.only_whole_run:
            whole_runs(100, args.whole_runs, figures=not args.no_figures, explorer=not args.no_explorer)
            return
        if args.only_memory:
            wide_short, wide_long = peak_memory(50, wide=True), peak_memory(400, wide=True)
            print(f"peak RSS, 16,384-wide layer with figures: {wide_short / 2**20:.0f} MiB at 50 epochs, "
                  f"{wide_long / 2**20:.0f} MiB at 400 (ratio {wide_long / wide_short:.3f}, target <= 1.2)")
            return
        from mlflow_flux.recording import fastpath as kernels

        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
              f"recorder path: {'C extension' if kernels.fastpath() else 'torch ops'}")
        noise = overhead("paper-scale", paper_scale, args.pairs, watched=False)
        paper = overhead("paper-scale", paper_scale, args.pairs)
        half = overhead("paper-scale 1024", lambda: paper_scale(1024), args.pairs)
        wide = overhead("wide MLP", wide_mlp, max(5, args.pairs // 2))
        cnn = overhead("small CNN", small_cnn, max(5, args.pairs // 2))
        whole = whole_runs(100, args.whole_runs)
        per = trace_bytes(args.bytes_epochs)
        short, long = peak_memory(50), peak_memory(500)
        print(f"peak RSS: {short / 2**20:.0f} MiB at 50 epochs, {long / 2**20:.0f} MiB at 500 epochs "
              f"(ratio {long / short:.3f})")
        wide_short, wide_long = peak_memory(50, wide=True), peak_memory(400, wide=True)
        print(f"peak RSS, 16,384-wide layer with figures: {wide_short / 2**20:.0f} MiB at 50 epochs, "
              f"{wide_long / 2**20:.0f} MiB at 400 (ratio {wide_long / wide_short:.3f}, target <= 1.2)")
        print()
        print(f"summary: paper-scale {paper:.3f}x and with 1024 images {half:.3f}x (target <= 1.05; plain vs plain "
              f"{noise:.3f}x), whole 100-epoch run {whole:.3f}x (target <= 1.10), wide MLP {wide:.3f}x "
              f"and small CNN {cnn:.3f}x (target <= 1.15), {per:.1f} B/neuron-epoch (target <= 40), "
              f"memory 500/50 epochs {long / short:.3f}, 16k-wide 400/50 epochs {wide_long / wide_short:.3f} "
              f"(target <= 1.2)")


if __name__ == "__main__":
    main()
