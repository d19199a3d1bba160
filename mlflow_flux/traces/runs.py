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
    "ACTIVATIONS_PARAM",
    "FINGERPRINT_TAG",
    "watched_run_params",
    "log_watched_run",
    "format_activations",
    "parse_activations",
]

ROLE_TAG = "mlflow_flux.role"  # sweep | variant | report
# What a watcher logs beside its settings: the layers it watched (every run holding a trace has it), and which path
# of the recorder served them.
LAYERS_PARAM = "flux.layers"
FASTPATH_PARAM = "flux.fastpath"
ACTIVATIONS_PARAM = "flux.activations"  # the activation after each watched layer, once a training pass showed it
# A hash of the watched weights when the watcher started: runs with equal ones started from the same weights.
FINGERPRINT_TAG = "mlflow_flux.fingerprint"
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


def watched_run_params(run, settings) -> dict[str, str]:
    """The params a watcher logs into ``run`` (an MLflow ``Run``): its settings the run does not hold yet. A setting
    it holds under the same name (``mlflow run`` logs the MLproject's parameters, the study its config) must have
    the same value: the report reads the trace with it.

    Raises:
        FluxError: the run holds a watcher's trace already.
        InvalidParameter: the run holds a param of a setting's name with another value.
    """
    from ..errors import FluxError, InvalidParameter

    existing = run.data.params
    run_id = run.info.run_id
    if LAYERS_PARAM in existing:
        raise FluxError(f"run {run_id} already holds a watcher's traces: start another run "
                        "(mlflow.start_run(nested=True)) for a second watch")
    new = {}
    for spec in settings.schema():
        value = getattr(settings, spec.name)
        if spec.name not in existing:
            new[spec.name] = spec.kind.format(value)
            continue
        try:
            same = spec.kind.parse(spec.name, existing[spec.name]) == value
        except InvalidParameter:
            same = False
        if not same:
            raise InvalidParameter(spec.name, value, f"run {run_id} already has the param {spec.name}="
                                                     f"{existing[spec.name]!r}, the name mlflow-flux logs this "
                                                     f"setting under: pass {spec.name}={existing[spec.name]} or "
                                                     "record into another run")
    return new


def log_watched_run(client, run_id: str, params: Mapping[str, str], recorder, fingerprint: str) -> None:
    """Log a watched run's settings (``params``, from :func:`watched_run_params`), its layers, its recording path and
    the fingerprint of its starting weights, in one request."""
    from mlflow.entities import Param, RunTag

    client.log_batch(run_id, params=[*(Param(name, value) for name, value in params.items()),
                                     Param(LAYERS_PARAM, ",".join(recorder.layer_names)[:6000]),
                                     Param(FASTPATH_PARAM, recorder.path)],
                     tags=[RunTag(FINGERPRINT_TAG, fingerprint)])


def format_activations(activations) -> str:
    """The activation after each watched layer, as the ``flux.activations`` param holds it: run-length encoded, ``-``
    for one not known.

    >>> format_activations(["relu", "relu", None, "sigmoid"]), parse_activations("relu*2,-,sigmoid", 4)
    ('relu*2,-,sigmoid', ('relu', 'relu', None, 'sigmoid'))
    """
    parts: list[list] = []
    for value in activations:
        name = value or "-"
        if parts and parts[-1][0] == name:
            parts[-1][1] += 1
        else:
            parts.append([name, 1])
    return ",".join(name if count == 1 else f"{name}*{count}" for name, count in parts)


def parse_activations(text: str | None, layers: int) -> tuple[str | None, ...]:
    """The activations a run logged (:func:`format_activations`), one per layer; all unknown when it logged none or
    the param does not match its layers."""
    out: list[str | None] = []
    for part in (text or "").split(","):
        if not part:
            continue
        name, _, count = part.partition("*")
        try:
            out.extend([None if name == "-" else name] * (int(count) if count else 1))
        except ValueError:
            return (None,) * layers
    return tuple(out) if len(out) == layers else (None,) * layers
