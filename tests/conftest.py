"""Shared fixtures: temporary sqlite tracking stores, and one real `mlflow server` per test session."""

from __future__ import annotations

import sys
import uuid

import mlflow
import pytest

from tests.helpers import MlflowServer


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
