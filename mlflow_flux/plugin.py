"""What MLflow discovers through entry points: a run context provider that tags the runs mlflow-flux creates.

MLflow asks every registered provider for tags whenever a run is created through the fluent API or
``resolve_tags``. Ours answers only while mlflow-flux itself is creating a run (inside :func:`creating_runs`),
so the user's other runs stay untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from mlflow.tracking.context.abstract_context import RunContextProvider

__all__ = ["VERSION_TAG", "FluxRunContextProvider", "creating_runs"]

VERSION_TAG = "mlflow_flux.version"
_creating = contextvars.ContextVar("mlflow_flux_creating_runs", default=False)


@contextlib.contextmanager
def creating_runs() -> Iterator[None]:
    """Runs created inside this block get mlflow-flux's tags."""
    token = _creating.set(True)
    try:
        yield
    finally:
        _creating.reset(token)


class FluxRunContextProvider(RunContextProvider):
    """Tags runs created by mlflow-flux with ``mlflow_flux.version``."""

    def in_context(self) -> bool:
        return _creating.get()

    def tags(self) -> dict[str, str]:
        from . import __version__

        return {VERSION_TAG: __version__}
