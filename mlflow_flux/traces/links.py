"""Addresses of runs and artifacts in MLflow's web UI, for the lines the CLI prints.

MLflow 3's UI opens an experiment on its GenAI overview unless the workflow is chosen: ``workflowType=
machine_learning`` in the address selects "Model training" (and the UI remembers it in the browser). A runs table
sorted by anything but the start time lists child runs flat, so a sweep's runs all show without expanding the
parent. Checked against the UI of MLflow 3.17 by tests/study/test_browser.py.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode, urlsplit

__all__ = ["ui_base", "ui_command", "sweep_runs_url", "run_url", "artifact_url"]

DEFAULT_UI = "http://127.0.0.1:5000"
_WORKFLOW = {"workflowType": "machine_learning"}


def _is_server(tracking_uri: str) -> bool:
    return urlsplit(tracking_uri).scheme in ("http", "https")


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server itself, or where ``mlflow ui`` serves a local store by default.

    >>> ui_base("http://10.0.0.5:8080/"), ui_base("sqlite:///mlflow.db")
    ('http://10.0.0.5:8080', 'http://127.0.0.1:5000')
    """
    if _is_server(tracking_uri):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI, or None when the tracking URI is a server.

    >>> ui_command("sqlite:///mlflow.db")
    'mlflow ui --backend-store-uri sqlite:///mlflow.db'
    """
    if _is_server(tracking_uri):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def sweep_runs_url(tracking_uri: str, experiment_id: str, sweep_id: str) -> str:
    """The runs table of one sweep: its parent, variants and report, flat, by name.

    >>> sweep_runs_url("sqlite:///m.db", "1", "abc")  # doctest: +ELLIPSIS
    'http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning&searchFilter=tags.mlflow_flux...'
    """
    query = {**_WORKFLOW, "searchFilter": f"tags.mlflow_flux.sweep_id = '{sweep_id}'",
             "orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"}
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, tab: str = "") -> str:
    """A run's page; ``tab`` e.g. ``model-metrics``.

    >>> run_url("http://h:5000", "1", "r", "model-metrics")
    'http://h:5000/#/experiments/1/runs/r/model-metrics?workflowType=machine_learning'
    """
    path = f"/#/experiments/{experiment_id}/runs/{run_id}" + (f"/{tab}" if tab else "")
    return f"{ui_base(tracking_uri)}{path}?{urlencode(_WORKFLOW)}"


def artifact_url(tracking_uri: str, experiment_id: str, run_id: str, artifact_path: str) -> str:
    """A run's artifact in the UI's artifact viewer.

    >>> artifact_url("http://h:5000", "1", "r", "report/report.html")
    'http://h:5000/#/experiments/1/runs/r/artifacts/report/report.html?workflowType=machine_learning'
    """
    return run_url(tracking_uri, experiment_id, run_id, f"artifacts/{quote(artifact_path)}")
