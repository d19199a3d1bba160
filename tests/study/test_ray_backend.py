"""The sweep on a real local Ray instance (2 CPUs): same runs as the local backend, failures, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, default_sigint, group_ended, run_cli, runs_of, subprocess_env

pytestmark = pytest.mark.slow
TINY = ["--epochs", "3", "--n-samples", "64", "--hidden", "32,8", "--image-size", "16", "--window", "2"]


def _ray_processes(store: dict) -> list[str]:
    """Ray's processes, and the variants this test started: under pytest-xdist another test may be training beside
    this one, so a variant counts when its environment names this test's store directory (in the tracking URI,
    however a launcher spells it). Ray's agents do not inherit that environment; no other test of the -OO pass
    starts Ray."""
    found = subprocess.run(["pgrep", "-fa", "raylet|gcs_server|ray::|mlflow_flux.cli train"], capture_output=True,
                           text=True).stdout
    ours = str(store["dir"]).encode()
    return [line for line in found.splitlines() if "pgrep" not in line
            and ("mlflow_flux.cli train" not in line or ours in _environment(int(line.split()[0])))]


def _environment(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # it ended meanwhile
        return b""


def _shape(runs) -> dict:
    """What a backend must not change: per role and lr, the status, tag keys and params."""
    shape = {}
    for run in runs:
        role = run.data.tags.get("mlflow_flux.role")
        key = (role, run.data.params.get("lr", ""))
        tags = {k for k in run.data.tags if not k.startswith("mlflow.") or k in ("mlflow.parentRunId",)}
        params = dict(run.data.params)
        for differs in ("flux.fastpath", "selection", "backend"):  # the report names its sweep's id
            params.pop(differs, None)
        shape[key] = (run.info.status, tags, params)
    return shape


def test_ray_runs_match_the_local_backends_and_a_failing_variant_spares_its_sibling(store):
    assert not _ray_processes(store)
    shapes = {}
    for backend in ("local", "ray"):
        result = run_cli(store, "sweep", "--lrs", "0.01,1e30", "--backend", backend, *TINY, timeout=600)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "lr=1e+30 seed=0: DivergedError" in result.stderr
        assert "Traceback" not in result.stderr.split("sweep")[-1]
        runs = runs_of(store)
        sweep_ids = {r.data.tags.get("mlflow_flux.sweep_id") for r in runs if r.data.tags.get("mlflow_flux.sweep_id")}
        latest = max(sweep_ids, key=lambda s: next(r.info.start_time for r in runs if r.info.run_id == s))
        shapes[backend] = _shape([r for r in runs if r.data.tags.get("mlflow_flux.sweep_id") == latest])
    assert shapes["ray"] == shapes["local"]
    assert shapes["ray"][("variant", "0.01")][0] == "FINISHED"
    assert shapes["ray"][("variant", "1e+30")][0] == "FAILED"
    assert shapes["ray"][("sweep", "")][0] == "FAILED"
    assert ("report", "") in shapes["ray"]
    assert not _ray_processes(store)  # the instance the sweep started is gone


RAY_SWEEP = {"lrs": "0.01,0.001", "backend": "ray", "epochs": "100000", "n_samples": "64", "hidden": "32,8",
             "image_size": "16", "window": "2"}


def _mlflow_run(store) -> list[str]:
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local",
            "--experiment-name", store["experiment_name"]]
    return args + [arg for name, value in RAY_SWEEP.items() for arg in ("-P", f"{name}={value}")]


def _cli(store) -> list[str]:
    return [*PYTHON, "-m", "mlflow_flux.cli", "sweep",
            *(arg for name, value in RAY_SWEEP.items() for arg in (f"--{name.replace('_', '-')}", value))]


@pytest.mark.parametrize("command, stop, code", [
    # Through the front door (`mlflow run . -P backend=ray`), which wraps the CLI's sweep: a terminal's Ctrl-C reaches
    # the whole foreground group, MLflow's runner included (which exits with its own code).
    (_mlflow_run, lambda process: os.killpg(process.pid, signal.SIGINT), None),
    # A scheduler's SIGTERM to the sweep alone: ray.init had replaced its handler with a bare exit (the sweep run
    # stayed RUNNING and Ray aborted the process) until the backend put ours back.
    (_cli, lambda process: process.send_signal(signal.SIGTERM), 143),
], ids=["ctrl-c-of-mlflow-run", "sigterm-of-the-sweep"])
def test_stopping_a_ray_sweep_kills_every_run_and_leaves_no_process(store, command, stop, code):
    process = subprocess.Popen(command(store), cwd=ROOT, env=subprocess_env(store, RAY_DEDUP_LOGS="0"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               preexec_fn=default_sigint)
    seen = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # both variants are training
        line = process.stdout.readline()
        seen.append(line)
        if all(any(f"lr={lr} seed=0: epoch 1/" in s for s in seen) for lr in ("0.01", "0.001")) or not line:
            break
    if not all(any(f"lr={lr} seed=0: epoch 1/" in s for s in seen) for lr in ("0.01", "0.001")):
        os.killpg(process.pid, signal.SIGINT)  # stop the sweep (it stops its variants) before failing
        process.communicate(timeout=240)
        raise AssertionError("".join(seen)[-3000:])
    stop(process)
    out, _ = process.communicate(timeout=240)
    assert process.returncode == code if code is not None else process.returncode != 0, out[-3000:]
    assert "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]
    # Every process of the group has ended, the one that keeps KILLED past `mlflow run` too (it waits for its exit).
    assert group_ended(process.pid, timeout=150), "processes of the sweep outlived it"
    assert not _ray_processes(store)  # nor any variant, which runs in a session of its own
    runs = runs_of(store)
    statuses = sorted((r.data.tags["mlflow_flux.role"], r.info.status) for r in runs)
    assert statuses == [("sweep", "KILLED"), ("variant", "KILLED"), ("variant", "KILLED")], (statuses, out[-3000:])
    for run in runs:
        if run.data.tags["mlflow_flux.role"] == "variant":
            from mlflow import MlflowClient

            traces = {f.path for f in MlflowClient().list_artifacts(run.info.run_id, "traces")}
            assert "traces/traces.parquet" in traces, traces  # compacted: the variant saved its trace
