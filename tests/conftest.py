"""Shared fixtures: temporary sqlite tracking stores, and one real `mlflow server` per test session."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import mlflow
import pytest

from tests.helpers import MlflowServer


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty sqlite store with MLflow's tables, made once per session (MLflow's migrations take ~2 s a store,
    paid by ~150 tests): each test's store starts as a copy of it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    made = SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "artifacts"))
    made.engine.dispose()  # nothing of it open while the file is copied
    return path


@pytest.fixture()
def store(tmp_path, monkeypatch, empty_store):
    """A fresh sqlite store with its own experiment whose artifacts live under tmp_path."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real tracking server for the whole session: it takes ~20 s to answer /health here."""
    root = tmp_path_factory.mktemp("server")
    running = MlflowServer(root).start()
    yield {"uri": running.uri, "root": root}
    running.stop()


def pytest_collection_modifyitems(config, items):
    """Under ``python -OO`` transformers cannot build its model classes (it parses their docstrings): the tests
    that need them are skipped there and run by the plain pass of ``make test``."""
    if sys.flags.optimize < 2:
        return
    skip = pytest.mark.skip(reason="transformers needs docstrings (python -OO strips them); run by the plain pass")
    for item in items:
        if "docstrings" in item.keywords:
            item.add_marker(skip)
