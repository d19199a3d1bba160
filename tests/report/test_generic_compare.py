"""compare() over runs of a user's own loop: no study tags, no lr, grouped by any parameter."""

from __future__ import annotations

import csv
import math

import mlflow
import pytest
import torch
from torch import nn

import mlflow_flux
from mlflow_flux import fluctuation, reshape
from mlflow_flux.errors import FluxError


def _user_run(width: int, seed: int, epochs: int = 4, log_loss: bool = True) -> str:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(32, 6)
    with mlflow.start_run(run_name=f"w{width}-s{seed}") as run:
        mlflow.log_params({"width": width, "seed": seed})
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(epochs):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(data), data)
                loss.backward()
                optimizer.step()
                flux.end_epoch(epoch, {"val/mse": loss.item()} if log_loss else None)
    return run.info.run_id


def test_compare_groups_a_users_own_runs_by_any_parameter(store, tmp_path):
    ids = [_user_run(width, seed) for width in (8, 16) for seed in (0, 1)]
    with mlflow.start_run(run_name="no width"):  # a watched run without the grouping parameter
        model = nn.Linear(3, 2)
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(3):
                model(torch.randn(4, 3)).sum().backward()
                flux.end_epoch(epoch)
    report = mlflow_flux.compare(group_by="width", loss_key="val/mse", output=tmp_path, log_run=False)
    assert [why for _, name, why in report.skipped] == ["no parameter 'width' to group by"]
    assert not report.claims  # the paper's claims belong to the study's runs only
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert sorted(r["run_id"] for r in rows) == sorted(ids)
    for row in rows:
        trace = mlflow_flux.load_traces(row["run_id"])
        expected = reshape.summaries_over_epochs(trace, 2, fluctuation.DEFAULT_TAU).iloc[-1]
        for key in ("participating", "participating_frac", "dead_frac", "sos_median", "bias_fluct_median"):
            value, wanted = float(row[f"all/{key}"]), float(expected[f"all/{key}"])
            assert value == wanted or (math.isnan(value) and math.isnan(wanted)), key
        history = mlflow.MlflowClient().get_metric_history(row["run_id"], "val/mse")
        assert float(row["loss_final"]) == max(history, key=lambda m: m.step).value
    summary = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [float(r["width"]) for r in summary] == [8, 16] and [r["n"] for r in summary] == ["2", "2"]
    for group in summary:
        members = [r for r in rows if float(r["width"]) == float(group["width"])]
        mean = sum(float(r["all/participating_frac"]) for r in members) / len(members)
        assert float(group["all/participating_frac"]) == pytest.approx(mean, rel=1e-12)
    markdown = (tmp_path / "report.md").read_text()
    assert "grouped by the parameter width, the loss from val/mse" in markdown and "paper's claims" not in markdown
    assert "## Per width (final window)" in markdown


def test_without_lr_or_group_by_every_run_is_its_own_group(store, tmp_path):
    _user_run(8, 0, log_loss=False)
    report = mlflow_flux.compare(output=tmp_path, log_run=False)
    assert list(report.groups["run"]) == ["w8-s0"]
    assert "each run on its own" in (tmp_path / "report.md").read_text()


def test_group_by_must_be_a_name(store):
    with pytest.raises(FluxError, match="group_by"):
        mlflow_flux.compare(group_by="", log_run=False)


@pytest.mark.slow
def test_the_compare_entry_point_takes_a_filter_and_a_grouping(store):
    from tests.helpers import run_cli, run_mlflow_project

    for width in (8, 16):
        _user_run(width, 0)
    result = run_mlflow_project(store, "group_by=width", "filter=params.width = '8'", entry_point="compare",
                                timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (report,) = [r for r in mlflow.search_runs([store["experiment_id"]], output_format="list")
                 if r.data.tags.get("mlflow_flux.role") == "report"]
    assert report.data.params["group_by"] == "width" and report.data.params["runs_compared"] == "1"
    both = run_cli(store, "compare", "--sweep", "abc", "--experiment", "x")
    assert both.returncode == 2
    assert both.stderr.strip().splitlines() == [
        "mlflow-flux: error: pass only one of --sweep, --experiment, --filter, not --sweep and --experiment"]
