"""Neuron-level SQL across runs against the loop people write today, through a real `mlflow server`.

    .venv/bin/python benchmarks/query.py --atlas atlas/mlflow.db    # the atlas's 18 real traces (~1 GB): ~10 min
    .venv/bin/python benchmarks/query.py                             # atlas-sized synthetic traces instead
    .venv/bin/python benchmarks/query.py --only many                 # the 100-run case alone

Starts a server on 127.0.0.1 (sqlite backend, artifacts served by the server, so every read crosses HTTP) and
asks one question: the dead fraction (act_rate = 0) per run and layer at epoch 500.

1. Atlas-sized: 18 runs x 1000 epochs x the study's 1680 neurons: the atlas's own traces (``--atlas`` copies them
   into the server with their runs' parameters), or synthetic ones of that shape. Timed, alternating, 3 rounds:
   ``mlflow.search_runs`` + ``load_traces(run_id)`` + pandas (what users write today: each trace downloaded whole),
   the same loop with ``load_traces(columns=, epochs=)``, and ``mlflow_flux.query`` (no cache: every round fetches
   again). Prints the medians, the ratio, and the bytes each fetched against the traces' size.
2. Many runs: 100 runs x 300 epochs x 1680 neurons, their traces written by the real sink
   (``traces/sink.TraceSink``, as ``watch()`` writes them), then one query over all of them, cold and cached.
Targets (issue "Neuron-level queries"): query >= 10x faster than the whole-download loop; 100 runs < 60 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import start_server  # noqa: E402

STUDY_LAYERS = {"encoder.fc1": 256, "encoder.fc2": 64, "encoder.fc3": 16, "decoder.fc1": 64, "decoder.fc2": 256,
                "decoder.out": 1024}  # the study's autoencoder: 1680 neurons
EPOCH = 500
SQL = ("SELECT run_id, layer, avg(CASE WHEN act_rate = 0 THEN 1.0 ELSE 0.0 END) AS dead FROM traces "
       f"WHERE epoch = {EPOCH} GROUP BY run_id, layer ORDER BY run_id, layer")


def snapshots(epochs: int, rng: np.random.Generator):
    """Snapshots shaped like the study's (random walks for the weights' spread, a quarter of neurons dead)."""
    from mlflow_flux.traces.schema import STAT_COLUMNS, Snapshot

    names, sizes = list(STUDY_LAYERS), list(STUDY_LAYERS.values())
    layer_index = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    neuron = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes])
    n = len(neuron)
    dead = rng.random(n) < 0.25
    stats = rng.random((len(STAT_COLUMNS), n), dtype=np.float32)
    for epoch in range(epochs):
        stats = stats + rng.normal(0, 1e-3, stats.shape).astype(np.float32)
        current = stats.copy()
        current[STAT_COLUMNS.index("act_rate")][dead] = 0.0
        yield Snapshot(epoch, names, layer_index, neuron, current, 0)


def write_run(client, experiment: str, params: dict, epochs: int, rng, spool: Path) -> str:
    """A run whose trace the real sink writes and uploads, as watch() does."""
    from mlflow_flux.traces.sink import TraceSink

    run_id = client.create_run(experiment, tags={"mlflow.runName": f"lr {params['lr']} seed {params['seed']}"},
                               ).info.run_id
    for name, value in params.items():
        client.log_param(run_id, name, str(value))
    client.log_param(run_id, "flux.layers", ",".join(STUDY_LAYERS))
    sink = TraceSink(client, run_id, spool / run_id, flush_every=100).start()
    for snapshot in snapshots(epochs, rng):
        sink.write(snapshot)
    result = sink.close(timeout=600)
    if not result.uploaded:
        raise SystemExit(f"the sink did not upload run {run_id}'s trace")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def copy_atlas(client, experiment: str, atlas_db: str) -> int:
    """The atlas's variant runs, their params and traces, into ``experiment`` on the server."""
    from mlflow.tracking import MlflowClient

    source = MlflowClient(f"sqlite:///{Path(atlas_db).resolve()}")
    ids = [e.experiment_id for e in source.search_experiments()]
    runs = source.search_runs(ids, "tags.`mlflow_flux.role` = 'variant' and attributes.status = 'FINISHED'")
    for run in runs:
        run_id = client.create_run(experiment, tags={"mlflow.runName": run.data.tags.get("mlflow.runName", "")}
                                   ).info.run_id
        for name, value in run.data.params.items():
            client.log_param(run_id, name, value)
        with tempfile.TemporaryDirectory() as tmp:
            path = source.download_artifacts(run.info.run_id, "traces/traces.parquet", tmp)
            client.log_artifact(run_id, path, "traces")
        client.set_terminated(run_id, "FINISHED")
    return len(runs)


def loop_whole(experiment: str) -> dict:
    """What users write today: every run, every trace whole, then pandas."""
    import mlflow

    import mlflow_flux

    answer = {}
    for run_id in mlflow.search_runs(experiment_names=[experiment]).run_id:
        trace = mlflow_flux.load_traces(run_id)
        at = trace[trace.epoch == EPOCH]
        for layer, part in at.groupby("layer", observed=True):
            answer[(run_id, str(layer))] = float((part.act_rate == 0).mean())
    return answer


def loop_narrow(experiment: str) -> dict:
    """The same loop asking load_traces for one column at one epoch (ranged reads)."""
    import mlflow

    import mlflow_flux

    answer = {}
    for run_id in mlflow.search_runs(experiment_names=[experiment]).run_id:
        at = mlflow_flux.load_traces(run_id, columns=["act_rate"], epochs=[EPOCH])
        for layer, part in at.groupby("layer", observed=True):
            answer[(run_id, str(layer))] = float((part.act_rate == 0).mean())
    return answer


def by_query(experiment: str, result=None) -> dict:
    import mlflow_flux

    table = mlflow_flux.query(SQL, experiment=experiment, cache=None, result=result)
    return {(r, str(layer)): float(d) for r, layer, d in zip(table.run_id, table.layer, table.dead)}


def atlas_case(client, atlas_db: str | None, rounds: int, spool: Path) -> None:
    from mlflow_flux.sql.engine import QueryResult

    experiment = client.create_experiment("query-bench-atlas")
    if atlas_db:
        count = copy_atlas(client, experiment, atlas_db)
        print(f"copied the atlas's {count} runs from {atlas_db}")
    else:
        rng = np.random.default_rng(0)
        count = 0
        for optimizer in ("adam", "sgd"):
            for lr in (0.01, 0.001, 0.0001):
                for seed in range(3):
                    write_run(client, experiment, {"optimizer": optimizer, "lr": lr, "seed": seed}, 1000, rng, spool)
                    count += 1
        print(f"wrote {count} synthetic atlas-shaped runs")
    name = "query-bench-atlas"
    result = QueryResult()
    expected = by_query(name, result)
    print(f"{count} runs, {result.trace_bytes / 1e6:.0f} MB of traces")
    times = {"loop (whole traces)": [], "loop (load_traces columns=, epochs=)": [], "query": []}
    for _ in range(rounds):  # alternating, so the machine's mood spreads over all three
        for label, fn in (("loop (whole traces)", loop_whole), ("loop (load_traces columns=, epochs=)", loop_narrow),
                          ("query", by_query)):
            started = time.perf_counter()
            answer = fn(name)
            times[label].append(time.perf_counter() - started)
            assert answer.keys() == expected.keys() and all(abs(answer[k] - expected[k]) < 1e-12 for k in answer), \
                label
    base = statistics.median(times["loop (whole traces)"])
    for label, values in times.items():
        print(f"  {label:40s} median {statistics.median(values):7.2f} s  ({base / statistics.median(values):5.1f}x "
              f"faster than the whole-trace loop; rounds {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  query fetched {result.fetched / 1e6:.1f} MB of {result.trace_bytes / 1e6:.0f} MB "
          f"({result.fetched / result.trace_bytes:.2%}) in {result.requests} requests; the whole-trace loop "
          f"downloads all of it")


def many_case(client, runs: int, epochs: int, spool: Path, cache: Path) -> None:
    from mlflow_flux.sql.engine import QueryResult

    experiment = client.create_experiment("query-bench-many")
    rng = np.random.default_rng(1)
    started = time.perf_counter()
    for i in range(runs):
        write_run(client, experiment, {"optimizer": ("adam", "sgd")[i % 2], "lr": (0.01, 0.001, 0.0001)[i % 3],
                                       "seed": i // 6}, epochs, rng, spool)
    print(f"wrote {runs} runs x {epochs} epochs x {sum(STUDY_LAYERS.values())} neurons with the sink in "
          f"{time.perf_counter() - started:.0f} s")
    import mlflow_flux

    sql = SQL.replace(f"epoch = {EPOCH}", f"epoch = {epochs // 2}")
    for label in ("cold", "cached"):
        result = QueryResult()
        started = time.perf_counter()
        table = mlflow_flux.query(sql, experiment="query-bench-many", cache=cache, result=result)
        print(f"  {runs} runs, {label}: {time.perf_counter() - started:.1f} s, {len(table)} rows, fetched "
              f"{result.fetched / 1e6:.1f} of {result.trace_bytes / 1e6:.0f} MB in {result.requests} requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--atlas", help="the atlas's tracking database (sqlite file); default: synthetic traces")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100, help="runs of the many-runs case")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of the many-runs case")
    parser.add_argument("--only", choices=("atlas", "many"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import mlflow
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        process, uri = start_server(root)
        try:
            os.environ["MLFLOW_TRACKING_URI"] = uri
            mlflow.set_tracking_uri(uri)
            client = MlflowClient()
            if args.only in (None, "atlas"):
                atlas_case(client, args.atlas, args.rounds, root / "spool")
            if args.only in (None, "many"):
                many_case(client, args.runs, args.epochs, root / "spool", root / "cache")
        finally:
            os.killpg(process.pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
