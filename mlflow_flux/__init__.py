"""mlflow-flux: per-neuron fluctuation traces of PyTorch training, kept in MLflow.

    import mlflow, mlflow_flux
    with mlflow.start_run():
        with mlflow_flux.watch(model) as flux:
            for epoch in range(epochs):
                ...
                flux.end_epoch(epoch, {"loss/train": loss})
    traces = mlflow_flux.load_traces(run_id)
    mlflow_flux.explore(run_id)                      # the interactive page, as every watched run logs it
    report = mlflow_flux.compare(experiment="mine")  # the cross-run report
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# Public names load on first use: MLflow imports our plugin while it is itself still importing, and a plain
# `import mlflow_flux` should not pay for torch and MLflow before they are needed.
_EXPORTS = {
    # the recorder
    "watch": ".watcher",
    "FluxWatcher": ".watcher",
    "WatchResult": ".watcher",
    "RecorderSettings": ".settings",
    # reading and comparing
    "load_traces": ".traces.reader",
    "load_resets": ".traces.reader",
    "explore": ".explorer.runs",
    "query": ".sql.engine",
    "traces_dataset": ".sql.ray_data",
    "compare": ".report.pipeline",
    "Report": ".report.analysis",
    "ReportSpec": ".report.spec",
    "ClaimSpec": ".report.claims",
    "Claim": ".report.claims",
    # errors: what a user can fix, each with its exit code on the command line
    "FluxError": ".errors",
    "InvalidParameter": ".errors",
    "NoRunsMatch": ".errors",
    "QueryError": ".errors",
    "KeptLocally": ".errors",
    "TrackingLost": ".errors",
    "NotAuthenticated": ".errors",
    "PermissionDenied": ".errors",
    "DivergedError": ".errors",
}

__all__ = [  # the names of _EXPORTS, written out for readers and tools
    "__version__", "watch", "FluxWatcher", "WatchResult", "RecorderSettings", "load_traces", "load_resets", "explore",
    "query",
    "traces_dataset", "compare", "Report", "ReportSpec", "ClaimSpec", "Claim", "FluxError", "InvalidParameter",
    "NoRunsMatch", "QueryError", "KeptLocally", "TrackingLost", "NotAuthenticated", "PermissionDenied", "DivergedError",
]

if TYPE_CHECKING:
    from .errors import (
        DivergedError,
        FluxError,
        InvalidParameter,
        KeptLocally,
        NoRunsMatch,
        NotAuthenticated,
        PermissionDenied,
        TrackingLost,
    )
    from .explorer.runs import explore
    from .report.analysis import Report
    from .report.claims import Claim, ClaimSpec
    from .report.pipeline import compare
    from .report.spec import ReportSpec
    from .settings import RecorderSettings
    from .sql.engine import query
    from .sql.ray_data import traces_dataset
    from .traces.reader import load_resets, load_traces
    from .watcher import FluxWatcher, WatchResult, watch


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'mlflow_flux' has no attribute {name!r}")
