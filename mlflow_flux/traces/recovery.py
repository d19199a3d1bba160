"""Putting back what a run kept locally: ``mlflow-flux upload RUN_ID DIR`` (the command a run's
``mlflow_flux.missing`` tag names). Every file goes where a normal run has it (``traces/traces.parquet``,
``figures/``, ``explorer.html``), the trace's leftover segments are removed from the run, and the local copy and
the tags go once the run lists the trace with its size.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ..errors import FluxError, InvalidParameter
from . import mlflow_adapter
from .lifecycle import KEPT_AT_TAG, MISSING_TAG
from .schema import PARTS_DIR, TRACE_ARTIFACT_DIR, TRACE_FILE
from .server import check_reachable
from .sink import compact_segments

__all__ = ["upload_kept"]


def upload_kept(run_id: str, directory: str | Path) -> list[str]:
    """Upload the spool ``directory`` into run ``run_id``; returns the artifact paths uploaded.

    Raises:
        FluxError: no such directory or run, or the trace did not arrive (the local copy is then kept).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    spool = Path(directory)
    if not spool.is_dir():
        raise InvalidParameter("directory", str(directory), "expected the directory a run kept (its "
                                                            f"{KEPT_AT_TAG} tag)")
    uri = mlflow.get_tracking_uri()
    check_reachable(uri)
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 -- MLflow raises its own kinds for an unknown run
        raise mlflow_adapter.flux_error(exc, uri, f"no run with id {run_id!r} at {uri}", f"run {run_id}") from None
    trace = spool / TRACE_FILE
    parts = sorted((spool / PARTS_DIR).glob("*.parquet"))
    if not trace.exists() and parts:
        compact_segments(parts, trace)
    uploaded = []
    if trace.exists():
        client.log_artifact(run_id, str(trace), TRACE_ARTIFACT_DIR)
        listed = {f.path: f.file_size for f in client.list_artifacts(run_id, TRACE_ARTIFACT_DIR)}
        if listed.get(f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}") not in (None, trace.stat().st_size):
            raise FluxError(f"the trace did not arrive whole in run {run_id}; the local copy stays at {spool}")
        uploaded.append(f"{TRACE_ARTIFACT_DIR}/{TRACE_FILE}")
        # The segments a killed upload left are stale beside the whole trace; a store that does not delete keeps them.
        with contextlib.suppress(Exception):
            mlflow_adapter.delete_artifacts(run.info.artifact_uri, f"{TRACE_ARTIFACT_DIR}/{PARTS_DIR}")
    for path in sorted(spool.rglob("*")):
        relative = path.relative_to(spool)
        if not path.is_file() or relative.parts[0] in (PARTS_DIR, TRACE_FILE) or path.suffix == ".tmp":
            continue
        folder = relative.parent.as_posix()
        client.log_artifact(run_id, str(path), None if folder == "." else folder)
        uploaded.append(relative.as_posix())
    for tag in (MISSING_TAG, KEPT_AT_TAG):
        if tag in run.data.tags:
            client.delete_tag(run_id, tag)
    shutil.rmtree(spool, ignore_errors=True)
    return uploaded
