"""Shared fixtures: temporary sqlite tracking stores, and helpers to run the CLI as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """A fresh sqlite store with its own experiment whose artifacts live under tmp_path."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    name = f"test-{uuid.uuid4().hex[:8]}"
    experiment_id = mlflow.create_experiment(name, artifact_location=str(tmp_path / "artifacts"))
    mlflow.set_experiment(experiment_id=experiment_id)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
    yield {"uri": uri, "experiment_id": experiment_id, "experiment_name": name, "dir": tmp_path}
    while mlflow.active_run():
        mlflow.end_run()


def subprocess_env(store: dict, **extra: str) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it; the name is what children get
    env.update(
        MLFLOW_TRACKING_URI=store["uri"],
        MLFLOW_EXPERIMENT_NAME=store["experiment_name"],
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(store: dict, *args: str, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``mlflow-flux ARGS`` in a child process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow_flux.cli", *args],
        cwd=cwd, env=subprocess_env(store), capture_output=True, text=True, timeout=timeout,
    )


def run_mlflow_project(store: dict, *params: str, entry_point: str = "main", timeout: float = 600):
    """``mlflow run . --env-manager local -e ENTRY -P ...`` from the project root."""
    args = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", entry_point,
            "--experiment-name", store["experiment_name"]]
    for param in params:
        args += ["-P", param]
    return subprocess.run(args, cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=timeout)


def runs_of(store: dict):
    return mlflow.search_runs(experiment_ids=[store["experiment_id"]], output_format="list")
