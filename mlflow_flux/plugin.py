"""What MLflow discovers through entry points: a run-context provider that tags the runs mlflow-flux creates.

MLflow asks every registered provider for tags whenever a run is created through the fluent API or
``resolve_tags``. Ours answers only while mlflow-flux itself is creating a run (inside
:func:`mlflow_flux.traces.runs.creating_runs`), so the user's other runs stay untouched.
"""

from __future__ import annotations

from .traces import mlflow_adapter, runs
from .version import __version__

__all__ = ["FluxRunContextProvider"]


class FluxRunContextProvider(mlflow_adapter.run_context_provider_base()):
    """Tags runs created by mlflow-flux with ``mlflow_flux.version``."""

    def in_context(self) -> bool:
        return runs.is_creating_runs()

    def tags(self) -> dict[str, str]:
        return {runs.VERSION_TAG: __version__}
