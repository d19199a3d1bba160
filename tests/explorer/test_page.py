"""The explorer page a watched run logs when it closes, and explore() for any run: one self-contained file whose
data decode to what the trace holds."""

from __future__ import annotations

import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from scipy import stats
from torch import nn

import mlflow_flux
from mlflow_flux.explorer.build import PooledRun, RunInput
from mlflow_flux.explorer.encoding import RELATIVE_RESOLUTION, read_page
from mlflow_flux.explorer.page import interval_curves
from mlflow_flux.statistics import STAT_NAMES
from tests.helpers import run_cli_concurrently, subprocess_env


def _train(epochs: int = 6, **options) -> str:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x = torch.randn(48, 6)
    with mlflow.start_run(run_name="page") as run:
        with mlflow_flux.watch(model, window=3, log_figures=False, **options) as flux:
            for epoch in range(epochs):
                for batch in x.split(16):
                    optimizer.zero_grad()
                    loss = nn.functional.mse_loss(model(batch), batch[:, :4])
                    loss.backward()
                    optimizer.step()
                flux.end_epoch(epoch, {"loss/train": float(loss)})
    return run.info.run_id


def _page(run_id: str, tmp_path) -> str:
    path = MlflowClient().download_artifacts(run_id, "explorer.html", str(tmp_path))
    return open(path, encoding="utf-8").read()


def test_a_watched_run_logs_a_self_contained_page_whose_values_are_the_trace(store, tmp_path):
    run_id = _train()
    page = _page(run_id, tmp_path)
    # Nothing is fetched: no external script, style, image or link address anywhere in the page.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script src" not in page and "@import" not in page
    meta, arrays = read_page(page)
    (run,) = meta["runs"]
    assert run["id"] == run_id and run["loss"][0]["key"] == "loss/train"
    trace = mlflow_flux.load_traces(run_id)
    assert arrays[run["epochs"]].tolist() == sorted(trace["epoch"].unique())
    assert [layer["name"] for layer in run["layers"]] == ["0", "2"]
    for layer in run["layers"]:
        rows = trace[trace["layer"] == layer["name"]]
        assert set(layer["values"]) == set(STAT_NAMES)
        for column in STAT_NAMES:  # nothing was pooled: each value within the stated resolution of the trace
            expected = rows.pivot(index="epoch", columns="neuron", values=column).to_numpy(dtype=np.float64)
            got = arrays[layer["values"][column]].astype(np.float64)
            finite = np.isfinite(expected)
            assert (np.isfinite(got) == finite).all(), column
            assert (np.abs(got[finite] - expected[finite]) <= RELATIVE_RESOLUTION * np.abs(expected[finite])).all()
    assert any("not pooled" in line for line in meta["pooled"]) and "0.39%" in meta["resolution"]
    assert meta["codes"] == {"NO_WINDOW": 0, "PARTICIPATING": 1, "FROZEN": 2, "DEAD": 3}  # the script reads these


def test_the_page_pooled_as_the_run_writes_equals_the_page_built_from_its_trace(store, tmp_path):
    # A layer past the neuron budget (banded: its extreme neurons read back from the file) and enough epochs in
    # segments of 7 snapshots for the bins to widen as they arrive.
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 1100), nn.ReLU(), nn.Linear(1100, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(32, 3)
    with mlflow.start_run(run_name="live") as run:
        with mlflow_flux.watch(model, window=3, log_figures=False, flush_every=7) as flux:
            for epoch in range(300):
                optimizer.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                optimizer.step()
                flux.end_epoch(epoch, {"loss": float(loss)})
    logged_meta, logged = read_page(_page(run.info.run_id, tmp_path))
    built_meta, built = read_page(mlflow_flux.explore(run.info.run_id, output=tmp_path / "built.html")
                                  .read_text(encoding="utf-8"))
    layers = {layer["name"]: layer for layer in logged_meta["runs"][0]["layers"]}
    assert layers["0"]["banded"] and not layers["2"]["banded"]
    assert logged_meta["pooled"] == built_meta["pooled"] and any("bins of" in line for line in logged_meta["pooled"])
    assert any(line.startswith("banded: 1 layer wider than the neuron budget (0)") for line in logged_meta["pooled"])
    assert logged.keys() == built.keys()
    for key, values in logged.items():
        np.testing.assert_array_equal(values, built[key], err_msg=key)


def test_the_page_can_be_switched_off_and_explore_builds_it_for_any_run(store, tmp_path):
    run_id = _train(explorer=False)
    assert "explorer.html" not in [f.path for f in MlflowClient().list_artifacts(run_id)]
    path = mlflow_flux.explore(run_id, output=tmp_path / "page.html")
    meta, _ = read_page(path.read_text(encoding="utf-8"))
    assert meta["runs"][0]["id"] == run_id
    second = _train(explorer=False)
    both = mlflow_flux.explore([run_id, second], output=tmp_path / "both.html")
    meta, _ = read_page(both.read_text(encoding="utf-8"))
    assert [r["id"] for r in meta["runs"]] == [run_id, second] and len(meta["groups"]) == 2


@pytest.mark.slow
def test_the_cli_writes_the_page_and_refuses_an_unknown_run_in_one_line(store, tmp_path):
    run_id = _train(explorer=False)
    env = subprocess_env(store)
    out, bad = run_cli_concurrently([(["explore", run_id, "--output", str(tmp_path / "x.html")], env),
                                     (["explore", "0" * 32], env)], timeout=180)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.html").exists() and "explorer page written to" in out.stdout
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"mlflow-flux: error: no run with id '{'0' * 32}' at {store['uri']}"]


def _pooled(epochs, fractions) -> PooledRun:
    return PooledRun(RunInput("r", "r", trace=None), np.asarray(epochs), 1, {}, np.asarray(fractions, np.float32))


def test_interval_curves_are_the_student_t_interval_over_runs_on_their_shared_epochs():
    rng = np.random.default_rng(0)
    runs = [_pooled([0, 1, 2, 3], rng.random((4, 3))) for _ in range(3)] + [_pooled([1, 2], rng.random((2, 3)))]
    epochs, mean, low, high = interval_curves(runs)
    assert epochs.tolist() == [1, 2]
    values = np.stack([run.fractions[np.searchsorted(run.epochs, [1, 2])].astype(np.float64) for run in runs])
    half = stats.t.ppf(0.975, 3) * values.std(axis=0, ddof=1) / 2.0  # n = 4 runs
    np.testing.assert_allclose(mean, values.mean(axis=0))
    np.testing.assert_allclose(low, values.mean(axis=0) - half)
    np.testing.assert_allclose(high, values.mean(axis=0) + half)
    _, one_mean, one_low, one_high = interval_curves(runs[:1])
    np.testing.assert_allclose(one_mean, runs[0].fractions)
    assert np.isnan(one_low).all() and np.isnan(one_high).all()


def test_watching_imports_no_scipy_stats():
    """scipy.stats is 0.6-2.3 s of imports: a watched run (whose page is pooled from watch() on) must not pay it; only
    the interval of a group of several runs needs it."""
    code = ("import sys, torch, mlflow_flux; from mlflow_flux.explorer import LivePooler, render_page; "
            "import mlflow_flux.watcher, mlflow_flux.figures.draw; print(sorted(m for m in sys.modules "
            "if m.startswith('scipy.stats')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
