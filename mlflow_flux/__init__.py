"""mlflow-flux: per-neuron fluctuation traces of PyTorch training, kept in MLflow.

    import mlflow, mlflow_flux
    with mlflow.start_run():
        with mlflow_flux.watch(model) as flux:
            for epoch in range(epochs):
                ...
                flux.end_epoch(epoch, {"loss/train": loss})
    traces = mlflow_flux.load_traces(run_id)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names load on first use: MLflow imports our plugin while it is itself still importing, and a plain
# `import mlflow_flux` should not pay for torch and MLflow before they are needed.
_EXPORTS = {
    "FluxError": ".errors",
    "FluxWatcher": ".watcher",
    "watch": ".watcher",
    "load_traces": ".traces.reader",
    "compare": ".report.pipeline",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from .errors import FluxError
    from .report.pipeline import compare
    from .traces.reader import load_traces
    from .watcher import FluxWatcher, watch


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'mlflow_flux' has no attribute {name!r}")
