"""Every call into MLflow's internals, in one place.

The rest of the package uses MLflow's public API (``mlflow.*``, ``MlflowClient``, ``mlflow.entities``). What the
public API does not offer, we take from MLflow's modules here, so that a change in a new MLflow release is mended
in this file alone: the experiment the fluent API would use, raw HTTP to the tracking server (a health check that
does not retry for minutes, and Range requests on artifacts), where an artifact store keeps a run's files, the tags
MLflow's run-context providers add, and the provider base class our plugin subclasses.

Imports are deferred: MLflow loads our plugin while it is itself still importing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "PARENT_RUN_ID_TAG",
    "RUN_NAME_TAG",
    "current_experiment_id",
    "resolve_run_tags",
    "run_context_provider_base",
    "http_get",
    "ArtifactAccess",
    "artifact_access",
    "delete_artifacts",
    "abandon_active_run",
    "keep_status_past_mlflow_run",
]

# MLflow's documented system tags.
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"


def current_experiment_id() -> str:
    """The experiment ``mlflow.start_run()`` would use now (set_experiment, environment, or the default)."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


def resolve_run_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` plus what MLflow's run-context providers add (user, source, git commit, our plugin's version tag),
    as ``mlflow.start_run`` would; ``MlflowClient.create_run`` alone adds none of them."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags(dict(tags))


def run_context_provider_base() -> type:
    """The base class of MLflow run-context provider plugins."""
    from mlflow.tracking.context.abstract_context import RunContextProvider

    return RunContextProvider


def http_get(base_uri: str, endpoint: str, *, headers: Mapping[str, str] | None = None,
             timeout: float | None = None, max_retries: int | None = None):
    """A GET to ``base_uri + endpoint`` with the credentials MLflow would use for ``base_uri`` (its environment
    variables for tokens and TLS); returns the ``requests`` response without raising on HTTP errors.

    ``max_retries=0`` with a short ``timeout`` fails within seconds where MLflow's defaults retry for minutes.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    options = {}
    if timeout is not None:
        options["timeout"] = timeout
    if max_retries is not None:
        options["max_retries"] = max_retries
    return http_request(get_default_host_creds(base_uri), endpoint, "GET", extra_headers=dict(headers or {}),
                        **options)


@dataclass(frozen=True)
class ArtifactAccess:
    """How a run's artifacts can be read in place: ``local`` (a directory), ``http`` (MLflow's artifact server,
    which answers Range requests) or ``other`` (download them)."""

    kind: str
    location: str | None  # the directory, or the base URI of the run's artifacts on the server


def artifact_access(artifact_uri: str) -> ArtifactAccess:
    """Where the artifact store behind ``artifact_uri`` keeps a run's files."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    repo = get_artifact_repository(artifact_uri)
    if isinstance(repo, LocalArtifactRepository):
        return ArtifactAccess("local", os.fspath(repo.artifact_dir))
    if isinstance(repo, HttpArtifactRepository):
        return ArtifactAccess("http", repo.artifact_uri)
    return ArtifactAccess("other", None)


def delete_artifacts(artifact_uri: str, path: str) -> None:
    """Delete ``path`` under a run's artifacts; raises where the store does not allow deletion."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(artifact_uri).delete_artifacts(path)


def abandon_active_run(run_id: str) -> bool:
    """Take run ``run_id`` off the fluent API's stack without a request to the server, which does not answer.

    ``mlflow.end_run()`` and MLflow's own ``atexit`` hook would otherwise try to end it, retrying for minutes. The
    run stays RUNNING on the server; returns whether it was the active run.
    """
    from mlflow.environment_variables import MLFLOW_RUN_ID
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if not stack or stack[-1].info.run_id != run_id:
        return False
    stack.pop()
    MLFLOW_RUN_ID.unset()
    return True


# Run by a short-lived helper process: wait for `mlflow run` (the parent) to exit, then put the status back.
_RESTORE_STATUS = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
parent, run_id, status, deadline = int(sys.argv[1]), sys.argv[2], sys.argv[3], time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    time.sleep(0.1)
from mlflow.tracking import MlflowClient
client = MlflowClient()
if client.get_run(run_id).info.status != status:
    client.set_terminated(run_id, status)
"""


def keep_status_past_mlflow_run(run_id: str, status: str, mlflow_run_pid: int, timeout: float = 60.0) -> None:
    """Make ``status`` (KILLED) stick on the run ``mlflow run`` made for this process.

    MLflow 3.17's ``mlflow run``, once its child exits, ends the run FAILED unless it is already terminated, but its
    check passes the status string to ``RunStatus.is_terminated``, which expects the enum's integer, so it always
    overwrites (``mlflow/projects/__init__.py``, ``_maybe_set_run_terminated``). A status set by this process can
    only stick if it is written again after ``mlflow run`` exits: a helper process waits for that (at most
    ``timeout`` seconds, ignoring further signals) and writes it back. It is in the same process group as us.
    Nothing is started when ``mlflow run`` (``mlflow_run_pid``, our parent when we started) is already gone.
    """
    import subprocess
    import sys

    try:
        os.kill(mlflow_run_pid, 0)
    except ProcessLookupError:
        return
    subprocess.Popen([sys.executable, "-c", _RESTORE_STATUS, str(mlflow_run_pid), run_id, status, str(timeout)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
