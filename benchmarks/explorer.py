"""The explorer page: what it adds to close(), how big it is, how soon Chromium draws it, and that bigger traces
stay bounded.

    .venv/bin/python benchmarks/explorer.py               # about 6 minutes on 2 cores
    .venv/bin/python benchmarks/explorer.py --big-neurons 4096 --big-epochs 500

1. A default study variant's shape: the study's autoencoder (1680 neurons), watched for 1000 epochs of one small
   step each (a temporary sqlite store, no figures), closed with the page and without it, alternating, 2 rounds:
   the median close() times and their difference; the page's size; the peak resident memory close() adds for a run
   of 250 epochs and one of 1000, with the page and without, each in a fresh process (a heap grown by earlier runs
   would hide what close() takes): what the page adds must be flat in epochs (pooled as the run writes its trace).
2. That page opened from disk in Chromium (Debian's, through Playwright), 3 loads: the time from navigation to the
   first heatmap drawn (``window.fluxExplorer.timings.firstHeatmap``), median.
3. A bigger trace written as the sink writes it (default 6 layers x 2048 neurons x 1500 epochs): the page's size and
   build time, and what it says it pooled.
4. Live refreshes (issue "The explorer while a run trains"): what one refresh costs at the end of a long run (the
   live page rendered from the incremental pooling, as the trace writer's thread does it), for the default
   variant's shape (1680 neurons x 1000 snapshots) and a 12,288-neuron run (6 x 2048, 1500 snapshots), both fed
   synthetic snapshots (tests/synthetic.py); and its share of a one-hour run at the default interval (300 s: 12
   refreshes an hour, at most this cost each).
5. GPT-2 small's shapes (49 layers, 133,201 neurons) x 1000 synthetic snapshots: the live page's size, its first
   heatmap and the overview of every layer drawn in Chromium.
Targets (issue "See every neuron"): page <= 4 MB, first heatmap <= 2 s, close() + <= 0.5 s, memory flat in epochs,
any trace <= ~10 MB; live refreshes <= 1% of a one-hour run; GPT-2 small's page <= 10 MB, first draw <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def watched_run(epochs: int, explorer: bool, spool: Path) -> tuple[float, int, Path | None]:
    """A study-shaped run; the seconds close() took, the peak memory it added (bytes), and its page."""
    import mlflow

    import mlflow_flux
    from mlflow_flux.study.config import TrainConfig
    from mlflow_flux.study.model import Autoencoder

    config = TrainConfig()
    torch.manual_seed(0)
    model = Autoencoder(config.image_size**2, config.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.rand(8, config.image_size**2)
    trace_dir = spool / f"run-{time.monotonic_ns()}"
    with mlflow.start_run() as run:
        flux = mlflow_flux.watch(model, optimizer=optimizer, log_figures=False, explorer=explorer,
                                 trace_dir=trace_dir).start()
        for epoch in range(epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(data), data)
            loss.backward()
            optimizer.step()
            flux.end_epoch(epoch, {"loss": float(loss)})
        before = rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        started = time.perf_counter()
        flux.close()
        seconds = time.perf_counter() - started
        added = (rss_kib("VmHWM") - before) * 1024
    page = None
    if explorer:
        page = spool / f"explorer-{run.info.run_id}.html"
        mlflow.MlflowClient().download_artifacts(run.info.run_id, "explorer.html", str(spool))
        (spool / "explorer.html").rename(page)
    return seconds, added, page


def first_heatmap(page: Path, loads: int = 3) -> list[float]:
    import shutil

    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        return []
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        for _ in range(loads):
            tab = browser.new_page()
            tab.goto(page.as_uri())
            tab.wait_for_function("window.fluxExplorer && window.fluxExplorer.timings.firstHeatmap !== null",
                                  timeout=60_000)
            times.append(tab.evaluate("window.fluxExplorer.timings.firstHeatmap") / 1000)
            tab.close()
        browser.close()
    return times


def big_trace(directory: Path, layers: int, width: int, epochs: int) -> Path:
    """A trace of ``layers`` x ``width`` neurons written as the sink writes it (segments of 50 snapshots, then
    compacted by the sink's own ``compact_segments``), without a run to upload it to."""
    from mlflow_flux.traces.schema import STAT_COLUMNS, Snapshot, snapshots_to_table, write_trace_table
    from mlflow_flux.traces.sink import compact_segments

    names = [f"block{i}.mlp" for i in range(layers)]
    layer_index = np.repeat(np.arange(layers, dtype=np.int32), width)
    neuron = np.tile(np.arange(width, dtype=np.int32), layers)
    rng = np.random.default_rng(0)
    stats = rng.random((len(STAT_COLUMNS), len(neuron)), dtype=np.float32)
    dead = rng.random(len(neuron)) < 0.2
    parts, pending = [], []
    for epoch in range(epochs):
        stats = stats + rng.normal(0, 1e-3, stats.shape).astype(np.float32)
        current = stats.copy()
        current[STAT_COLUMNS.index("act_rate")][dead] = 0.0
        pending.append(Snapshot(epoch, names, layer_index, neuron, current, 0))
        if len(pending) == 50:
            parts.append(directory / f"part-{len(parts):05d}.parquet")
            write_trace_table(snapshots_to_table(pending), parts[-1])
            pending = []
    if pending:
        parts.append(directory / f"part-{len(parts):05d}.parquet")
        write_trace_table(snapshots_to_table(pending), parts[-1])
    return compact_segments(parts, directory / "traces.parquet")


def live_refresh(layers, count: int, rounds: int = 3) -> tuple[float, int]:
    """The median seconds of one live refresh after ``count`` synthetic snapshots of ``layers``, and the page's
    bytes."""
    from mlflow_flux.explorer import LivePooler, RunInput, render_page
    from tests.synthetic import snapshots

    pooler = LivePooler(10, 1e-4)
    pending = []
    for snapshot in snapshots(layers, count):
        pending.append(snapshot)
        if len(pending) == 10:  # flush_every's default: a segment
            pooler(pending)
            pending = []
    pooler(pending)
    run = RunInput("bench", "bench", None, 10, 1e-4)
    times, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        page = render_page([pooler.pooled(run, None)], "bench", "",
                           live={"snapshot": count - 1, "snapshots": count, "written": "now"})
        times.append(time.perf_counter() - started)
        size = len(page.encode())
    return statistics.median(times), size


def overview_in_chromium(page: Path) -> dict:
    import shutil

    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.goto(page.as_uri())
        tab.wait_for_function("document.body.getAttribute('data-ready') === 'true'", timeout=120_000)
        got = tab.evaluate("() => ({first: fluxExplorer.timings.firstHeatmap / 1000, layers: "
                           "fluxExplorer.layers(0).length, rows: document.querySelectorAll('.layer-row').length})")
        browser.close()
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--big-layers", type=int, default=6)
    parser.add_argument("--big-neurons", type=int, default=2048)
    parser.add_argument("--big-epochs", type=int, default=1500)
    parser.add_argument("--gpt2-snapshots", type=int, default=1000)
    parser.add_argument("--memory-of", nargs=2, type=int, metavar=("EPOCHS", "EXPLORER"),
                        help="(internal) print the memory one run's close() adds, in this fresh process")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow

    if args.memory_of:
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.set_tracking_uri(f"sqlite:///{tmp}/bench.db")
            mlflow.set_experiment("explorer-memory")
            _, added, _ = watched_run(args.memory_of[0], bool(args.memory_of[1]), Path(tmp))
        print(added)
        return

    from mlflow_flux.explorer import RunInput, pool_run, render_page
    from mlflow_flux.explorer.encoding import read_page

    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{spool}/bench.db")
        mlflow.set_experiment("explorer-bench")
        closes = {True: [], False: []}
        page = None
        for _ in range(args.rounds):
            for explorer in (True, False):
                seconds, _, made = watched_run(args.epochs, explorer, spool)
                closes[explorer].append(seconds)
                page = made or page
        with_page, without = statistics.median(closes[True]), statistics.median(closes[False])
        print(f"default variant shape (1680 neurons x {args.epochs} epochs): close() {with_page:.2f} s with the page, "
              f"{without:.2f} s without: the page adds {with_page - without:.2f} s "
              f"(rounds: {', '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(closes[True], closes[False]))})")
        meta, _ = read_page(page.read_text(encoding="utf-8"))
        print(f"  page: {page.stat().st_size / 1e6:.2f} MB; pooled: {meta['pooled']}")
        memory = {}
        for epochs in (args.epochs // 4, args.epochs):
            for explorer in (True, False):
                child = subprocess.run([sys.executable, __file__, "--memory-of", str(epochs), str(int(explorer))],
                                       capture_output=True, text=True, check=True)
                memory[epochs, explorer] = int(child.stdout.split()[-1])
        print("  peak memory close() adds (compaction, upload, the page), fresh process each: " + "; ".join(
            f"{e} epochs {memory[e, True] / 2**20:.1f} MiB with the page, {memory[e, False] / 2**20:.1f} without "
            f"(the page: {(memory[e, True] - memory[e, False]) / 2**20:+.1f})"
            for e in (args.epochs // 4, args.epochs)))
        times = first_heatmap(page)
        if times:
            print(f"  first heatmap drawn in Chromium: {statistics.median(times):.2f} s after navigation "
                  f"(loads: {', '.join(f'{t:.2f}' for t in times)})")
        else:
            print("  first heatmap: no chromium on this machine (apt-get install chromium)")
        big_dir = spool / "big"
        big_dir.mkdir()
        started = time.perf_counter()
        trace = big_trace(big_dir, args.big_layers, args.big_neurons, args.big_epochs)
        written = time.perf_counter() - started
        neurons = args.big_layers * args.big_neurons
        started = time.perf_counter()
        pooled = pool_run(RunInput("big", "big", trace, losses={}))
        html = render_page([pooled], "big", "")
        built = time.perf_counter() - started
        big_page = big_dir / "explorer.html"
        big_page.write_text(html, encoding="utf-8")
        meta, _ = read_page(html)
        print(f"bigger trace: {neurons:,} neurons x {args.big_epochs} epochs ({trace.stat().st_size / 1e6:.0f} MB, "
              f"written in {written:.0f} s): page {big_page.stat().st_size / 1e6:.2f} MB built in "
              f"{built:.1f} s; pooled: {meta['pooled']}")
        times = first_heatmap(big_page, loads=1)
        if times:
            print(f"  first heatmap drawn in Chromium: {times[0]:.2f} s")
        for label, layers, count in (
                ("default variant (1680 neurons)", [("encoder.fc1", 256), ("encoder.fc2", 64), ("encoder.fc3", 16),
                                                    ("decoder.fc1", 64), ("decoder.fc2", 256), ("decoder.out", 1024)],
                 args.epochs),
                (f"{neurons:,} neurons", [(f"block{i}.mlp", args.big_neurons) for i in range(args.big_layers)],
                 args.big_epochs)):
            seconds, size = live_refresh(layers, count)
            print(f"live refresh, {label} x {count} snapshots: {seconds:.2f} s a refresh (page {size / 1e6:.2f} MB); "
                  f"at the default interval (300 s) {seconds / 300:.3%} of a one-hour run")
        from tests.synthetic import GPT2_SMALL, live_page

        started = time.perf_counter()
        html = live_page(GPT2_SMALL, args.gpt2_snapshots, window=10, segment=10)
        built = time.perf_counter() - started
        gpt2_page = big_dir / "gpt2.html"
        gpt2_page.write_text(html, encoding="utf-8")
        meta, _ = read_page(html)
        print(f"GPT-2 small's shapes (49 layers, 133,201 neurons) x {args.gpt2_snapshots} synthetic snapshots: live "
              f"page {gpt2_page.stat().st_size / 1e6:.2f} MB (pooled and built in {built:.0f} s); {meta['pooled']}")
        got = overview_in_chromium(gpt2_page)
        print(f"  in Chromium: first heatmap {got['first']:.2f} s after navigation; the overview draws "
              f"{got['rows']} of {got['layers']} layers")


if __name__ == "__main__":
    main()
