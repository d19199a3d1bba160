"""Every call into MLflow's internals, in one place.

The rest of the package uses MLflow's public API (``mlflow.*``, ``MlflowClient``, ``mlflow.entities``). What the
public API does not offer, we take from MLflow's modules here, so that a change in a new MLflow release is mended
in this file alone: the experiment the fluent API would use, raw HTTP to the tracking server (a health check that
does not retry for minutes, and Range requests on artifacts), where an artifact store keeps a run's files, the tags
MLflow's run-context providers add, and the provider base class our plugin subclasses.

Imports are deferred: MLflow loads our plugin while it is itself still importing.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = [
    "PARENT_RUN_ID_TAG",
    "RUN_NAME_TAG",
    "current_experiment_id",
    "resolve_run_tags",
    "run_context_provider_base",
    "http_get",
    "ArtifactAccess",
    "artifact_access",
    "RemoteFile",
    "remote_file",
    "download_quietly",
    "delete_artifacts",
    "abandon_active_run",
    "wait_for_exit",
    "after_mlflow_run_exits",
    "metric_value",
    "mlflow_pytorch",
    "flux_error",
    "http_status",
    "auth_errors",
    "is_auth_error",
    "experiment_ids",
]

# MLflow's documented system tags.
PARENT_RUN_ID_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"


def current_experiment_id() -> str:
    """The experiment ``mlflow.start_run()`` would use now (set_experiment, environment, or the default)."""
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()


def experiment_ids(client, experiment: str | None, tracking_uri: str | None = None) -> list[str]:
    """``[id]`` of ``experiment`` (a name, else an id), as ``search_runs`` takes it; the current experiment's for None.

    Raises:
        NoRunsMatch: no experiment by that name or id.
        NotAuthenticated, PermissionDenied: the server answered 401 / 403.
    """
    import mlflow

    from ..errors import NoRunsMatch

    if experiment is None:
        return [current_experiment_id()]
    uri = tracking_uri or mlflow.get_tracking_uri()
    missing = f"no experiment named {experiment!r} at {uri}"
    subject = f"experiment {experiment!r}"
    try:
        found = client.get_experiment_by_name(experiment)
    except Exception as exc:  # a 401/403 is one line; anything else is not "no experiment"
        if is_auth_error(exc):
            raise flux_error(exc, uri, missing, subject) from None
        raise
    if found is None:
        try:
            found = client.get_experiment(experiment)
        except Exception as exc:  # noqa: BLE001 -- not an id either (MLflow raises its own kinds)
            if is_auth_error(exc):
                raise flux_error(exc, uri, missing, subject) from None
            found = None
    if found is None:
        raise NoRunsMatch(missing)
    return [found.experiment_id]


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


@dataclass(frozen=True)
class RemoteFile:
    """An artifact read over HTTP: a presigned URL of the store itself (``headers`` go with every request, no MLflow
    credentials), or the file's address on MLflow's artifact server (``base_uri`` + ``endpoint``, with them)."""

    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    base_uri: str | None = None
    endpoint: str | None = None

    @property
    def presigned(self) -> bool:
        return self.url is not None


def remote_file(artifact_uri: str, path: str) -> RemoteFile | None:
    """How to read a run's artifact ``path`` with HTTP Range requests, or None where only a download works.

    MLflow's artifact server (``mlflow-artifacts:``) answers ranges itself when it keeps files on its own disk, but for
    a cloud destination (``--artifacts-destination s3://...``) it streams the whole object whatever the range (3.17,
    ``handlers._download_artifact``): it is asked for a presigned URL of the store first (``GET
    /mlflow-artifacts/presigned/...``, 501 where it has none). A client that talks to the store itself (``s3://``,
    ``gs://``, ``wasbs://``) presigns the URL with the store's own client.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    repo = get_artifact_repository(artifact_uri)
    if isinstance(repo, HttpArtifactRepository):
        try:
            signed = repo._get_presigned_download_url(path)
            return RemoteFile(url=signed.url, headers=tuple(signed.headers.items()))
        except Exception as exc:
            status = http_status(exc)
            if status in (401, 403):
                raise
        return RemoteFile(base_uri=repo.artifact_uri, endpoint="/" + path)
    signer = getattr(repo, "get_download_presigned_url", None)
    if signer is not None:
        try:
            signed = signer(path)
            return RemoteFile(url=signed.url, headers=tuple(signed.headers.items()))
        except NotImplementedError:
            pass
    return _signed_by_sdk(repo, path)


def _signed_by_sdk(repo, path: str) -> RemoteFile | None:
    """GCS and Azure Blob stores, whose MLflow repositories (3.17) offer no presigned download: a URL signed with
    their own SDK client for an hour, or None (then the file is downloaded)."""
    import datetime
    import posixpath

    name = type(repo).__name__
    try:
        if name == "GCSArtifactRepository":
            bucket, prefix = repo.parse_gcs_uri(repo.artifact_uri)
            blob = repo._get_bucket(bucket).blob(posixpath.join(prefix, path))
            return RemoteFile(url=blob.generate_signed_url(version="v4", expiration=datetime.timedelta(hours=1)))
        if name == "AzureBlobArtifactRepository":
            from azure.storage.blob import BlobSasPermissions, generate_blob_sas

            container, account, prefix, _ = repo.parse_wasbs_uri(repo.artifact_uri)
            blob_name = posixpath.join(prefix, path)
            client = repo.client
            credential = client.credential
            sas = generate_blob_sas(account, container, blob_name, account_key=getattr(credential, "account_key", None),
                                    permission=BlobSasPermissions(read=True),
                                    expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
            return RemoteFile(url=f"{client.url.rstrip('/')}/{container}/{blob_name}?{sas}")
    except Exception:  # noqa: BLE001 -- no SDK, no key to sign with: the file is downloaded instead
        return None
    return None


def download_quietly(client, run_id: str, path: str, dst: str) -> str:
    """``client.download_artifacts`` without MLflow's progress bars (3.17 draws one per download unless the environment
    says otherwise: ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``): each file through the store's own ``_download_file``.
    Returns the local path of ``path`` (a file, or a folder of files)."""
    from pathlib import Path

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    listed = [f.path for f in client.list_artifacts(run_id, path) if not f.is_dir]
    for remote in listed or [path]:  # a file lists as nothing
        local = Path(dst) / remote
        local.parent.mkdir(parents=True, exist_ok=True)
        repo._download_file(remote, str(local))
    return str(Path(dst) / path)


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


def wait_for_exit(pid: int, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds, ignoring SIGINT and SIGTERM) until process ``pid`` has exited."""
    import signal
    import time

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def after_mlflow_run_exits(mlflow_run_pid: int, command: list[str]) -> None:
    """Start ``command``, a helper that waits for ``mlflow run`` to exit (:func:`wait_for_exit`) and then writes the
    run's status again (``mlflow_flux.traces.lifecycle``, the one writer of a status).

    Works around MLflow 3.17's ``mlflow run`` (``mlflow/projects/__init__.py``, ``_maybe_set_run_terminated``; see
    also mlflow/mlflow#1832, "KILLED state for a run"): once its child exits it ends the run FAILED unless it is
    already terminated, but its check passes the status string to ``RunStatus.is_terminated``, which expects the
    enum's integer, so it always overwrites. A status set by this process can only stick if it is written again after
    ``mlflow run`` exits. The helper is in the same process group as us. Nothing is started when ``mlflow run``
    (``mlflow_run_pid``, our parent when we started) is already gone.
    """
    import subprocess

    try:
        os.kill(mlflow_run_pid, 0)
    except ProcessLookupError:
        return
    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind an MLflow client error: 401 and 403 arrive as ``MlflowException`` (error codes
    ``UNAUTHENTICATED``, ``PERMISSION_DENIED``), as ``RestException``, or as a requests ``HTTPError``."""
    code = getattr(exc, "error_code", None)
    if code in ("UNAUTHENTICATED",):
        return 401
    if code in ("PERMISSION_DENIED",):
        return 403
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    getter = getattr(exc, "get_http_status_code", None)
    if callable(getter):
        try:
            value = getter()
        except Exception:  # noqa: BLE001 -- no status to read: the error is not an HTTP one
            value = None
        if value in (401, 403):
            return value
    text = str(exc)
    for status in (401, 403):
        if f"{status} Client Error" in text or f"status code {status}" in text:
            return status
    return None


def flux_error(exc: BaseException, tracking_uri: str, otherwise: str, what: str | None = None):
    """The one-line error for an MLflow call that failed: not authenticated (401), permission denied (403) on
    ``what`` (``"experiment 'atlas'"``, ``"run 0a1b..."``), else ``otherwise`` (e.g. "no run with id ...")."""
    from ..errors import NoRunsMatch, NotAuthenticated, PermissionDenied

    status = http_status(exc)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        return NotAuthenticated(f"not authenticated at {tracking_uri}: check MLFLOW_TRACKING_USERNAME and "
                                "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    if status == 403:
        return PermissionDenied(f"permission denied on {what or 'what was asked'} at {tracking_uri} for user "
                                f"{user or '(none)'}: ask its owner or an admin for READ (or EDIT to write)")
    return NoRunsMatch(otherwise)


def is_auth_error(exc: BaseException) -> bool:
    """Whether an MLflow error is a 401 or 403: code that turns MLflow's errors into its own ("no run with id")
    must let these through to :func:`auth_errors`."""
    return http_status(exc) in (401, 403)


@contextlib.contextmanager
def auth_errors(tracking_uri: str | None = None, what: str | None = None) -> Iterator[None]:
    """Turn a 401 or 403 from MLflow, wherever it surfaces (the tracking API, an artifact download), into the
    one-line :class:`~mlflow_flux.errors.NotAuthenticated` or :class:`~mlflow_flux.errors.PermissionDenied`; any
    other error passes through unchanged."""
    from ..errors import FluxError

    try:
        yield
    except FluxError:
        raise
    except Exception as exc:
        if http_status(exc) not in (401, 403):
            raise
        import mlflow

        raise flux_error(exc, tracking_uri or mlflow.get_tracking_uri(), "", what) from None


def mlflow_pytorch():
    """``mlflow.pytorch``, without the seconds of Lightning it would import for nothing.

    Works around MLflow 3.17's ``mlflow/pytorch/__init__.py``, whose last lines import
    ``mlflow.pytorch._lightning_autolog`` (for ``MlflowModelCheckpointCallback``, added by mlflow/mlflow#10935)
    whenever Lightning is installed: ``pytorch_lightning``, then torchmetrics, then transformers (``import torch,
    mlflow, mlflow.pytorch`` 8.8 s against 3.9 s on our 2-core host), paid by every variant when it logs its model,
    in a process that never trains with Lightning. When this process has not
    imported Lightning itself, the import is made to fail during ``mlflow.pytorch``'s own import (that line is in a
    ``try/except ImportError``); the callback is then missing from ``mlflow.pytorch``, and everything else,
    ``log_model`` and autologging (which imports Lightning in its own functions), works as before.
    """
    if "mlflow.pytorch" in sys.modules or "pytorch_lightning" in sys.modules:
        import mlflow.pytorch

        return mlflow.pytorch
    sys.modules["pytorch_lightning"] = None  # an ImportError for `import pytorch_lightning`, by Python's rule
    try:
        import mlflow.pytorch
    finally:
        if sys.modules.get("pytorch_lightning", ...) is None:
            del sys.modules["pytorch_lightning"]
    return mlflow.pytorch


def metric_value(value: float) -> float:
    """A metric's value as it was logged. MLflow's SQL tracking store (3.17, ``SqlAlchemyStore.sanitize_metric_value``:
    "Sql can not represent Infs") writes +-inf as the largest float64 of that sign: read back as +-inf."""
    if abs(value) >= 1.7976931348623157e308:
        return math.copysign(math.inf, value)
    return value
