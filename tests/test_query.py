"""Neuron-level SQL over many runs (`mlflow_flux.query`, `mlflow-flux query`, `mlflow_flux.traces_dataset`): the
answers equal pandas over `load_traces` for the same runs, on a local store and through a real `mlflow server`;
parameters are typed columns; a second query reads remote traces from the local cache; a narrow query fetches a
small part of the files; Ray Data on a local Ray instance returns the same rows; bad input is one line each.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mlflow_flux
from mlflow_flux.sql.engine import QueryResult
from tests.helpers import run_cli_concurrently, subprocess_env

EPOCHS = 6
VARIANTS = [  # lr (float), seed (int), optimizer (text), twins (flag)
    {"lr": "0.01", "seed": "0", "optimizer": "adam", "twins": "false"},
    {"lr": "0.001", "seed": "1", "optimizer": "sgd", "twins": "true"},
    {"lr": "1e-4", "seed": "2", "optimizer": "adam", "twins": "false"},
]
DEAD_BY_LAYER = ("SELECT run_id, layer, avg(CASE WHEN act_rate = 0 THEN 1.0 ELSE 0.0 END) AS dead FROM traces "
                 "WHERE epoch = 3 AND lr >= 1e-3 GROUP BY run_id, layer ORDER BY run_id, layer")


def _record(experiment_id: str, params: dict, width: int = 24, epochs: int = EPOCHS) -> str:
    seed = int(params["seed"])
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, width), nn.ReLU(), nn.Linear(width, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[: seed + 2] = -50.0  # a few dead neurons, more with the seed
    optimizer = torch.optim.SGD(model.parameters(), lr=float(params["lr"]))
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params(params)
        with mlflow_flux.watch(model, optimizer=optimizer, window=2, log_figures=False, explorer=False) as flux:
            for epoch in range(epochs):
                optimizer.zero_grad()
                model(torch.randn(32, 5)).pow(2).mean().backward()
                optimizer.step()
                flux.end_epoch(epoch, {"loss": float(epoch)})
    return run.info.run_id


def _recorded(experiment_id: str) -> list[str]:
    ids = [_record(experiment_id, params) for params in VARIANTS]
    with mlflow.start_run(experiment_id=experiment_id, run_name="no-trace"):
        mlflow.log_param("lr", "0.5")  # a run without a trace is never part of the views
    return ids


def _pandas_dead(ids: list[str]) -> pd.DataFrame:
    rows = []
    for run_id, params in zip(ids, VARIANTS):
        if float(params["lr"]) < 1e-3:
            continue
        trace = mlflow_flux.load_traces(run_id, epochs=[3])
        for layer, part in trace.groupby("layer", observed=True, sort=False):
            rows.append({"run_id": run_id, "layer": str(layer), "dead": float((part.act_rate == 0).mean())})
    return pd.DataFrame(rows).sort_values(["run_id", "layer"]).reset_index(drop=True)


@pytest.fixture()
def local_runs(store):
    return _recorded(store["experiment_id"])


def test_a_query_equals_pandas_over_load_traces_with_typed_parameters(store, local_runs):
    answer = mlflow_flux.query(DEAD_BY_LAYER, experiment=store["experiment_name"])
    pd.testing.assert_frame_equal(answer, _pandas_dead(local_runs), check_dtype=False)
    assert (answer.dead > 0).any()  # the check sees dead neurons, not only zeros
    typed = mlflow_flux.query("SELECT DISTINCT run_id, lr, seed, optimizer, twins FROM traces ORDER BY seed",
                              experiment=store["experiment_name"], as_arrow=True)
    assert [str(typed.schema.field(c).type) for c in ("lr", "seed", "optimizer", "twins")] == \
        ["double", "int64", "string", "bool"]
    assert typed.column("lr").to_pylist() == [0.01, 0.001, 1e-4] and typed.column("twins").to_pylist()[1] is True
    # every trace row, once per run
    total = mlflow_flux.query("SELECT run_id, count(*) AS n FROM traces GROUP BY run_id ORDER BY run_id",
                              experiment=store["experiment_name"])
    assert dict(zip(total.run_id, total.n)) == {r: len(mlflow_flux.load_traces(r)) for r in local_runs}
    # the runs view: one row per run holding a trace, its parameters and the last value of each metric
    runs = mlflow_flux.query('SELECT run_id, lr, "flux/dead_frac" AS dead FROM runs ORDER BY lr',
                             experiment=store["experiment_name"])
    assert sorted(runs.run_id) == sorted(local_runs)
    for run_id, dead in zip(runs.run_id, runs.dead):
        assert dead == mlflow.get_run(run_id).data.metrics["flux/dead_frac"]


def test_the_readme_questions_run_as_written(store, local_runs):
    """The three questions of the README (docs/traces.md): dead fraction at an epoch, which layers lose
    participation first, the neurons whose weights stopped moving early: each answered, and the same-neurons one
    checked against pandas."""
    same = mlflow_flux.query(
        "SELECT layer, neuron, count(DISTINCT seed) AS seeds FROM traces WHERE epoch = 3 AND act_rate = 0 "
        "GROUP BY layer, neuron HAVING count(DISTINCT seed) > 1 ORDER BY layer, neuron",
        experiment=store["experiment_name"])
    dead = {}
    for run_id in local_runs:
        trace = mlflow_flux.load_traces(run_id, epochs=[3])
        for layer, neuron in trace[trace.act_rate == 0][["layer", "neuron"]].itertuples(index=False):
            dead.setdefault((str(layer), int(neuron)), set()).add(run_id)
    expected = sorted((layer, neuron, len(r)) for (layer, neuron), r in dead.items() if len(r) > 1)
    assert [tuple(row) for row in same.itertuples(index=False)] == expected and expected
    first = mlflow_flux.query(
        "SELECT optimizer, layer, min(epoch) AS first_epoch FROM traces WHERE w_rel_step < 1e-3 "
        "GROUP BY optimizer, layer ORDER BY first_epoch", experiment=store["experiment_name"])
    assert set(first.optimizer) <= {"adam", "sgd"}
    stopped = mlflow_flux.query(
        "SELECT run_id, layer, neuron FROM traces GROUP BY run_id, layer, neuron "
        "HAVING max(CASE WHEN epoch >= 2 THEN w_step END) < 1e-6", experiment=store["experiment_name"])
    assert len(stopped) > 0  # the dead neurons' weights never move


def test_through_a_server_the_second_query_reads_from_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])
    mlflow.set_tracking_uri(server["uri"])
    experiment_id = mlflow.create_experiment(f"query-{tmp_path.name}")
    ids = [_record(experiment_id, params, width=1500, epochs=40) for params in VARIANTS]  # ~1 MB traces
    name = mlflow.get_experiment(experiment_id).name
    cache = tmp_path / "cache"
    first, second = QueryResult(), QueryResult()
    answer = mlflow_flux.query(DEAD_BY_LAYER, experiment=name, cache=cache, result=first)
    assert first.trace_bytes > 2_000_000 and 0 < first.fetched < 0.5 * first.trace_bytes, first
    again = mlflow_flux.query(DEAD_BY_LAYER, experiment=name, cache=cache, result=second)
    pd.testing.assert_frame_equal(answer, again)
    assert second.fetched <= len(ids) and second.requests <= 2 * len(ids), second  # only each file's version
    for run_id in ids:  # the same answer as pandas over the whole traces
        trace = mlflow_flux.load_traces(run_id, epochs=[3])
        for layer, part in trace.groupby("layer", observed=True):
            row = answer[(answer.run_id == run_id) & (answer.layer == layer)]
            if float(mlflow.get_run(run_id).data.params["lr"]) >= 1e-3:
                assert float(row.dead.iloc[0]) == pytest.approx(float((part.act_rate == 0).mean()), abs=0)
    # one column at one epoch of one run reads a small part of the files
    narrow = QueryResult()
    mlflow_flux.query("SELECT neuron, w_std FROM traces WHERE epoch = 39 AND seed = 0", experiment=name,
                      cache=None, result=narrow)
    print(f"\nthrough the server: {first.trace_bytes} B of traces; DEAD_BY_LAYER fetched {first.fetched} B "
          f"({first.fetched / first.trace_bytes:.1%}) in {first.requests} requests; the same query again "
          f"{second.fetched} B (each file's version); one column of one run at one epoch {narrow.fetched} B")
    assert narrow.fetched < 0.1 * narrow.trace_bytes, narrow


def test_bad_input_is_one_line_each_and_the_rest_is_answered(store, local_runs):
    env = subprocess_env(store)
    cases = ((["SELEC 1"], "the query failed: Parser Error"),
             (["SELECT nonesuch FROM traces"], "the query failed: Binder Error"),
             (["SELECT count(*) FROM traces", "--filter", "params.lr = '7'"], "no runs holding a trace match"),
             (["SELECT 1", "--experiment", "nope"], "no experiment named 'nope'"),
             (["SELECT 1", "--output", "x.txt"], "invalid value for 'output'"))
    # a run whose trace is kept locally is skipped, named, and the others answered (tagged first: the bad inputs
    # above fail the same with it, and all six commands then start side by side)
    kept = local_runs[0]
    mlflow.MlflowClient().set_tag(kept, "mlflow_flux.missing", "traces/traces.parquet did not reach the store")
    good = ["query", "SELECT count(*) AS n FROM traces", "--output", str(store["dir"] / "out.parquet")]
    *answers, done = run_cli_concurrently([(["query", *args], env) for args, _ in cases] + [(good, env)],
                                          timeout=120)
    for (args, message), answer in zip(cases, answers):
        lines = [line for line in answer.stderr.splitlines() if line.strip()]
        assert answer.returncode == 2 and len(lines) == 1 and message in lines[0], (args, answer.stderr)
    result = QueryResult()
    answer = mlflow_flux.query("SELECT DISTINCT run_id FROM traces", experiment=store["experiment_name"],
                               result=result)
    assert set(answer.run_id) == set(local_runs[1:]) and [r for r, _ in result.skipped] == [kept]
    assert done.returncode == 0 and f"skipped run {kept}: results kept locally" in done.stderr, done.stderr
    assert pd.read_parquet(store["dir"] / "out.parquet").n.iloc[0] == sum(
        len(mlflow_flux.load_traces(r)) for r in local_runs[1:])


@pytest.mark.slow
@pytest.mark.docstrings  # Ray Data formats its own docstrings at run time: skipped under -OO, run by the plain pass
def test_ray_data_reads_the_same_rows_from_the_server_on_its_workers(server, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])  # the workers ask the server for the files themselves
    mlflow.set_tracking_uri(server["uri"])
    experiment_id = mlflow.create_experiment(f"ray-{tmp_path.name}")
    for params in VARIANTS[:2]:
        _record(experiment_id, params)
    name = mlflow.get_experiment(experiment_id).name
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = mlflow_flux.traces_dataset(experiment=name).to_pandas()
    finally:
        ray.shutdown()
    expected = mlflow_flux.query("SELECT * FROM traces", experiment=name, cache=None)
    keys = ["run_id", "epoch", "layer", "neuron"]
    rows = rows.astype({"layer": str}).sort_values(keys).reset_index(drop=True)
    expected = expected.astype({"layer": str}).sort_values(keys).reset_index(drop=True)
    assert list(rows.columns) == list(expected.columns) and len(rows) == len(expected) > 0
    for column in expected.columns:
        a, b = rows[column].to_numpy(), expected[column].to_numpy()
        if np.issubdtype(a.dtype, np.floating):
            assert np.array_equal(a, b, equal_nan=True), column
        else:
            assert (a == b).all(), column


def test_through_a_server_a_run_whose_trace_is_gone_is_skipped_with_the_reason(server, tmp_path, monkeypatch):
    # Remote traces are probed, not listed: a probe that finds no file (HTTP 404) lists the run's artifacts only to
    # say why, and the other runs are answered.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["uri"])
    mlflow.set_tracking_uri(server["uri"])
    experiment_id = mlflow.create_experiment(f"gone-{tmp_path.name}")
    kept = _record(experiment_id, VARIANTS[0], epochs=4)
    with mlflow.start_run(experiment_id=experiment_id, run_name="watched, then cleared") as run:
        mlflow.log_param("flux.layers", "0,2,4")  # what a watched run logs; its trace never arrived
    result = QueryResult()
    answer = mlflow_flux.query("SELECT DISTINCT run_id FROM traces", runs=[kept, run.info.run_id], cache=None,
                               result=result)
    assert answer.run_id.tolist() == [kept] and result.runs == [kept]
    assert result.skipped == [(run.info.run_id, "no compacted trace (never watched, or killed before it closed its "
                                                "trace)")]
    assert result.requests >= 1 and result.fetched > 0  # the kept run's probe and column chunks crossed HTTP
