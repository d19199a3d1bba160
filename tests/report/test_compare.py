"""The report against a real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts served by the server)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import mlflow_flux
from mlflow_flux import reshape
from tests.helpers import PYTHON, ROOT, free_port

NASTY = "<script>alert('x')</script> <img src=x onerror=alert(1)> & \"quotes\" | *x*"
NASTY_LAYER = "<img src=y onerror=alert(2)>"

pytestmark = pytest.mark.slow


def _env(uri: str, experiment: str) -> dict:
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=experiment)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _cli(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PYTHON, "-m", "mlflow_flux.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def sweep(server):
    """A tiny sweep on the server, plus three runs the report must skip or escape."""
    experiment = "compare-tests"
    env = _env(server["uri"], experiment)
    result = _cli(env, "sweep", "--lrs", "0.01,0.0001", "--seeds", "0,1", "--epochs", "6", "--n-samples", "64",
                  "--hidden", "32,8", "--image-size", "16", "--window", "3", "--summary-every", "1",
                  "--report", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(server["uri"])
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.`mlflow_flux.role` = 'sweep'")
    sweep_id = parent.info.run_id
    tags = {"mlflow_flux.role": "variant", "mlflow_flux.sweep_id": sweep_id, "mlflow.parentRunId": sweep_id}
    extra = {}
    for label in ("no traces", "corrupt", NASTY):
        run = client.create_run(experiment_id, tags=tags, run_name=label)
        client.log_param(run.info.run_id, "lr", "0.001")
        extra[label] = run.info.run_id
    corrupt = server["root"] / "traces.parquet"
    corrupt.write_bytes(b"PAR1 this is not a parquet file")
    client.log_artifact(extra["corrupt"], str(corrupt), "traces")
    # the run with markup in its name has a real trace, so its name reaches the tables (its experiment made the
    # active one: an earlier test's set_experiment would otherwise refuse to resume a run of another experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_id=extra[NASTY]):
        import torch

        model = torch.nn.ModuleDict({NASTY_LAYER: torch.nn.Linear(3, 2)})
        with mlflow_flux.watch(model, window=2, summary_every=1, log_figures=False) as flux:
            for epoch in range(3):
                model[NASTY_LAYER](torch.randn(4, 3)).sum().backward()
                flux.end_epoch(epoch)
        mlflow.log_metric("loss/final", 0.5)
        mlflow.log_param("optimizer", "<b onmouseover=alert(3)>adam</b>")
    for run_id in extra.values():
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "FINISHED")
    return {"env": env, "sweep_id": sweep_id, "extra": extra, "client": client}


def test_report_through_the_cli_matches_load_traces(sweep, tmp_path):
    out = tmp_path / "report"
    result = _cli(sweep["env"], "compare", "--sweep", sweep["sweep_id"], "--output", str(out), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"report.html", "report.md", "summary.csv", "runs.csv", "participation.png", "loss.png",
            "tau_sensitivity.png", "tau_sensitivity_relative.png", "dormant.png", "weight_fluctuation.png",
            "bias_fluctuation.png", "verdicts_by_definition.csv",
            "reconstructions.png"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "runs.csv").open()))
    assert len(rows) == 5  # four variants and the run with markup in its name
    for row in rows:
        trace = mlflow_flux.load_traces(row["run_id"])
        params = sweep["client"].get_run(row["run_id"]).data.params
        # the study's runs log the sweep's plain names, a watch() run flux.*
        window, tau = (params.get(name, params.get(f"flux.{name}")) for name in ("window", "tau"))
        expected = reshape.summaries_over_epochs(trace, int(window), float(tau))
        last = expected.iloc[-1]
        for key in ("participating", "participating_frac", "dead_frac", "sos_median", "bias_fluct_median",
                    "redo_dormant_frac", "redo_dormant0_frac", "grama_dormant_frac", "grama_ref_dormant_frac",
                    "reduced_width_1e-3"):
            value = float(row[f"all/{key}"] or "nan")  # the CSV writes NaN as an empty cell
            assert value == last[f"all/{key}"] or (math.isnan(value) and math.isnan(last[f"all/{key}"])), key
        # and the live metric logged at that epoch is the same number
        history = {m.step: m.value for m in sweep["client"].get_metric_history(row["run_id"], "flux/sos_median")}
        assert history[int(row["final_epoch"])] == float(row["all/sos_median"])
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert sorted(float(r["lr"]) for r in summary) == [0.0001, 0.001, 0.01]
    markdown = (out / "report.md").read_text()
    # The run with markup in its optimizer is another optimizer: claims are judged per optimizer.
    assert "(a, adam) lr 0.01 reconstructs best" in markdown and "(b, adam) lr 0.01 leaves more neurons" in markdown
    assert "onmouseover=alert(3)" not in markdown.replace("&lt;b onmouseover=alert(3)&gt;", "")
    assert "## Where each claim holds, over epochs" in markdown and "verdicts_over_time.png" in markdown
    timeline = list(csv.DictReader((out / "verdicts_over_time.csv").open()))
    assert {(r["claim"], r["optimizer"]) for r in timeline} >= {("a", "adam"), ("b", "adam")}
    # the report run: tagged, a child of the sweep, its files in the run's artifacts
    (report_run,) = sweep["client"].search_runs(
        [sweep["client"].get_run(sweep["sweep_id"]).info.experiment_id], "tags.`mlflow_flux.role` = 'report'")
    assert report_run.data.tags["mlflow.parentRunId"] == sweep["sweep_id"]
    assert report_run.data.tags["mlflow_flux.claim_a_adam"] in ("agrees", "disagrees", "inconclusive")
    assert "report/report.html" in {f.path for f in sweep["client"].list_artifacts(report_run.info.run_id, "report")}


def test_runs_without_or_with_broken_traces_are_skipped_with_a_reason(sweep, tmp_path):
    report = mlflow_flux.compare(sweep["sweep_id"], output=tmp_path, log_run=False)
    reasons = {rid: why for rid, _, why in report.skipped}
    assert reasons[sweep["extra"]["no traces"]] == "no traces"
    assert reasons[sweep["extra"]["corrupt"]].startswith("unreadable trace")
    assert len(report.runs) == 5
    skipped = list(csv.DictReader((tmp_path / "skipped.csv").open()))
    assert {r["name"] for r in skipped} == {"no traces", "corrupt"}


def test_html_and_markdown_escape_what_came_from_runs(sweep, tmp_path):
    mlflow_flux.compare(sweep["sweep_id"], output=tmp_path, log_run=False)
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "<img src=" not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;alert(" in page and "&lt;img src=y onerror=alert(2)&gt;" in page
    assert page.count("data:image/png;base64,") >= 5  # self-contained
    markdown = (tmp_path / "report.md").read_text()
    for raw in ("<script>", "<img src=x", "<img src=y", "<b onmouseover", "| *x*"):
        assert raw not in markdown, raw  # a run's name, a layer's name, a param: all came from runs
    assert "&lt;img src=x onerror=alert(1)&gt;" in markdown and "&lt;img src=y onerror=alert(2)&gt;" in markdown
    assert "&lt;b onmouseover=alert(3)&gt;adam&lt;/b&gt;" in markdown


def test_compare_output_uploads_only_the_files_the_report_wrote(sweep, tmp_path):
    out = tmp_path / "out"
    (out / ".ssh").mkdir(parents=True)
    (out / ".ssh" / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----")
    (out / ".env").write_text("TOKEN=secret")
    report = mlflow_flux.compare(sweep["sweep_id"], output=out, log_run=True)
    client = sweep["client"]
    uploaded = {f.path.split("/", 1)[1] for f in client.list_artifacts(report.run_id, "report")}
    assert uploaded == set(report.files) and "report.html" in uploaded
    assert not {".env", ".ssh"} & uploaded
    assert (out / ".env").exists() and (out / "report.html").exists()  # the directory keeps both


def test_no_matching_runs_is_one_line_and_exit_2(sweep):
    result = _cli(sweep["env"], "compare", "--filter", "params.lr = '42'", timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [line for line in lines if line.startswith("mlflow-flux: error: no runs holding a trace match")]
    assert len(lines) == 1
    malformed = _cli(sweep["env"], "compare", "--filter", "params.lr ~~ 1", timeout=120)
    assert malformed.returncode == 2 and "invalid value for 'filter'" in malformed.stderr


def test_unreachable_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = _cli(_env(uri, "whatever"), "compare", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert f"cannot reach the tracking server at {uri}" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 30, elapsed  # the CLI's own start-up included; MLflow alone retries for minutes


class _ListingCounter:
    """The real client, with its calls to ``list_artifacts`` counted (one costs the server a listing and, in MLflow
    3.x, two fetches of the run)."""

    def __init__(self, client):
        self._client = client
        self.listings = 0

    def list_artifacts(self, *args, **kwargs):
        self.listings += 1
        return self._client.list_artifacts(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_trace_is_opened_without_listing_the_runs_artifacts_and_a_missing_one_says_why(sweep, tmp_path):
    import pyarrow.parquet as pq

    from mlflow_flux.errors import FluxError
    from mlflow_flux.traces.reader import opened_trace
    from mlflow_flux.traces.schema import KEY_COLUMNS

    client = _ListingCounter(sweep["client"])
    experiment_id = sweep["client"].get_run(sweep["sweep_id"]).info.experiment_id
    variant = next(r for r in sweep["client"].search_runs([experiment_id], "tags.`mlflow_flux.role` = 'variant'")
                   if r.info.run_id not in sweep["extra"].values())
    with opened_trace(client, variant) as source:
        read = pq.ParquetFile(source).read(columns=list(KEY_COLUMNS))
    assert read.num_rows > 0 and client.listings == 0
    # Not where the compacted trace would be: the listing says why (segments only, or nothing at all).
    segment = tmp_path / "part-00000.parquet"
    segment.write_bytes(b"PAR1")
    elsewhere = sweep["client"].create_experiment("opened-trace-tests")  # not among the sweep's runs
    killed = sweep["client"].create_run(elsewhere, run_name="killed before it compacted")
    sweep["client"].log_artifact(killed.info.run_id, str(segment), "traces/parts")
    with pytest.raises(FluxError, match="partial trace"), opened_trace(client, sweep["client"].get_run(
            killed.info.run_id)):
        pass
    with pytest.raises(FluxError, match="no traces"), opened_trace(client, sweep["client"].get_run(
            sweep["extra"]["no traces"])):
        pass
    assert client.listings == 2


def test_the_report_fetches_only_the_column_chunks_it_needs(sweep):
    import pyarrow.parquet as pq
    import torch

    from mlflow_flux.traces import mlflow_adapter
    from mlflow_flux.traces.reader import RangedHttpFile
    from mlflow_flux.traces.schema import KEY_COLUMNS, SUMMARY_COLUMNS

    # a trace of a few MB: pyarrow reads the last 64 KiB for the footer, so a tiny file would come whole
    model = torch.nn.Sequential(torch.nn.Linear(8, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 8))
    with mlflow.start_run(experiment_id=sweep["client"].get_run(sweep["sweep_id"]).info.experiment_id) as run:
        with mlflow_flux.watch(model, log_figures=False) as flux:
            for epoch in range(40):
                model(torch.randn(16, 8)).sum().backward()
                flux.end_epoch(epoch)
    remote = mlflow_adapter.remote_file(run.info.artifact_uri, "traces/traces.parquet")
    assert remote is not None and not remote.presigned  # the server keeps the files on its disk: it answers ranges
    ranged = RangedHttpFile(remote)
    table = pq.ParquetFile(ranged, pre_buffer=True).read(columns=[*KEY_COLUMNS, *SUMMARY_COLUMNS])
    whole = mlflow_flux.load_traces(run.info.run_id, columns=SUMMARY_COLUMNS)
    assert table.to_pandas().equals(whole)
    fetched, requests = ranged.fetched, ranged.requests
    # What it fetched is the chunks of the columns it reads (and the footer), not the others'.
    meta = pq.ParquetFile(ranged).metadata
    wanted = {*KEY_COLUMNS, *SUMMARY_COLUMNS}
    sizes = [(meta.row_group(g).column(c).path_in_schema, meta.row_group(g).column(c).total_compressed_size)
             for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    needed = sum(size for name, size in sizes if name.split(".")[0] in wanted)
    skipped = sum(size for name, size in sizes if name.split(".")[0] not in wanted)
    assert skipped > 0.1 * ranged.size() and fetched < needed + 0.05 * ranged.size() + (96 << 10), (
        fetched, needed, skipped)
    assert requests <= 4


def test_runs_that_share_their_start_have_one_fingerprint_and_are_paired_neuron_by_neuron(sweep, tmp_path):
    from mlflow_flux.explorer.encoding import from_bfloat16, read_page, to_bfloat16
    from mlflow_flux.explorer.runs import page_budget, pool_runs

    client = sweep["client"]
    variants = client.search_runs([client.get_run(sweep["sweep_id"]).info.experiment_id],
                                  f"tags.mlflow_flux.sweep_id = '{sweep['sweep_id']}' and "
                                  "tags.mlflow_flux.role = 'variant'")
    by = {(r.data.params.get("seed"), r.data.params.get("lr")): r for r in variants if "seed" in r.data.params}
    prints = {key: run.data.tags["mlflow_flux.fingerprint"] for key, run in by.items()}
    # The same seed starts from the same weights at every learning rate; another seed does not.
    assert prints[("0", "0.01")] == prints[("0", "0.0001")] != prints[("1", "0.01")] == prints[("1", "0.0001")]
    a, b = by[("0", "0.0001")], by[("0", "0.01")]
    page = mlflow_flux.explore([a.info.run_id, b.info.run_id], output=tmp_path / "pair.html")
    meta, arrays = read_page(page.read_text(encoding="utf-8"))
    (pair,) = meta["pairs"]
    assert (pair["a"], pair["b"]) == (1, 0)  # the second run against the first that shares its start
    pooled = pool_runs(client, [a, b], ["a", "b"], page_budget([a, b]))
    for name, quantities in pair["layers"].items():
        for column, key in quantities.items():
            expected = pooled[1].layers[name].values[column] - pooled[0].layers[name].values[column]  # float32
            np.testing.assert_array_equal(arrays[key], from_bfloat16(to_bfloat16(expected)), err_msg=column)
    # Runs that did not share their start are never paired, and the page says why.
    other = mlflow_flux.explore([a.info.run_id, by[("1", "0.01")].info.run_id], output=tmp_path / "apart.html")
    meta, _ = read_page(other.read_text(encoding="utf-8"))
    assert meta["pairs"] == [] and "fingerprints differ" in meta["unpaired"]
    # query() has the fingerprint of each run's start as a column of its runs view
    table = mlflow_flux.query("select run_id, fingerprint from runs", runs=[a.info.run_id, b.info.run_id])
    assert set(table.fingerprint) == {prints[("0", "0.01")]}
