"""How mlflow-flux names, tags and creates its runs in MLflow.

Runs the study creates carry a role (``sweep`` | ``variant`` | ``report``), their sweep's id and the package
version; runs of a user's own ``watch()`` carry none of these. MLflow asks our run-context provider plugin for tags
whenever a run is created; it answers only inside :func:`creating_runs`, so the user's other runs stay untouched.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

from ..version import __version__
from . import mlflow_adapter

__all__ = [
    "ROLE_TAG",
    "LAYERS_PARAM",
    "FASTPATH_PARAM",
    "SWEEP_TAG",
    "FAILURE_TAG",
    "VERSION_TAG",
    "flux_tags",
    "creating_runs",
    "is_creating_runs",
    "create_run",
    "ensure_runs_view",
]

ROLE_TAG = "mlflow_flux.role"  # sweep | variant | report
# What a watcher logs beside its settings: the layers it watched (every run holding a trace has it), and which path
# of the recorder served them.
LAYERS_PARAM = "flux.layers"
FASTPATH_PARAM = "flux.fastpath"
SWEEP_TAG = "mlflow_flux.sweep_id"
FAILURE_TAG = "mlflow_flux.failure"
VERSION_TAG = "mlflow_flux.version"
_KIND_TAG = "mlflow.experimentKind"
_NOTE_TAG = "mlflow.note.content"  # the experiment's description in MLflow's UI

_creating = contextvars.ContextVar("mlflow_flux_creating_runs", default=False)


def flux_tags(role: str, sweep_id: str | None = None) -> dict[str, str]:
    """The tags every run mlflow-flux creates carries."""
    tags = {ROLE_TAG: role, VERSION_TAG: __version__}
    if sweep_id is not None:
        tags[SWEEP_TAG] = sweep_id
    return tags


@contextlib.contextmanager
def creating_runs() -> Iterator[None]:
    """Runs created inside this block get mlflow-flux's tags from the run-context provider plugin."""
    token = _creating.set(True)
    try:
        yield
    finally:
        _creating.reset(token)


def is_creating_runs() -> bool:
    return _creating.get()


def create_run(client, experiment_id: str, tags: Mapping[str, str], run_name: str | None = None):
    """``client.create_run`` with the tags ``mlflow.start_run`` would add (user, source, git, our version)."""
    with creating_runs():
        return client.create_run(experiment_id, tags=mlflow_adapter.resolve_run_tags(tags), run_name=run_name)


def ensure_runs_view(client, experiment_id: str, description: str | None = None) -> None:
    """Mark the experiment as model training (MLflow 3's UI otherwise guesses its GenAI view), and give it
    ``description`` when it has none.

    Only an experiment without a kind is changed: a kind someone chose is kept, and so is a description.
    """
    experiment = client.get_experiment(experiment_id)
    if _KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, _KIND_TAG, "custom_model_development")
    if description and not experiment.tags.get(_NOTE_TAG):
        client.set_experiment_tag(experiment_id, _NOTE_TAG, description)
