"""The ``main`` entry point: the learning-rate sweep, one parent run and one child run per (lr, seed).

    mlflow run . --env-manager local                       # defaults: lrs 0.01,0.001,0.0001, seed 0, 1000 epochs
    mlflow run . --env-manager local -P epochs=50 -P seeds=0,1

Each variant is one process (``python -m mlflow_flux.cli train``, one interpreter): a child of the sweep, or with
``backend=ray`` a Ray task's child on a local instance or the cluster at ``RAY_ADDRESS`` (:mod:`.backends`). It
starts when a slot is free; its run is created as it starts, so a queued variant has no clock running. Ctrl-C or
SIGTERM stops every variant the way it stops one ``train`` (its run ends KILLED with its trace), waits for them,
and ends the sweep KILLED; a variant also stops if its parent process dies (Linux parent-death signal). No process
outlives the sweep.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from ..errors import KeptLocally, TrackingLost
from ..report.spec import SPEC_TAG, spec_tag_value
from ..traces import runs as flux_runs
from ..traces.lifecycle import MISSING_TAG, RunEnd, conclude, ending
from ..traces.mlflow_adapter import PARENT_RUN_ID_TAG, RUN_NAME_TAG
from ..traces.server import check_reachable, health_probe
from ..watcher import default_upload_timeout
from .backends import make_backend
from .config import SweepConfig, auto_parallel, parse_sweep_config, variant_name
from .progress import PROGRESS_LABEL_ENV, PROGRESS_MODE_ENV
from .report import EXPERIMENT_DESCRIPTION, STUDY_REPORT

__all__ = ["SweepConfig", "SweepResult", "Variant", "parse_sweep_config", "run_sweep", "auto_parallel"]
# A stopping child saves its trace, which may wait for uploads up to their timeout; then it is killed.
GRACE_MARGIN = 30.0


@dataclass(frozen=True)
class Variant:
    values: dict  # the swept settings' values: optimizer, activation, recycle, lr, seed
    run_id: str
    name: str  # the run's name, e.g. "adam lr=0.01 seed=0"
    position: str = ""  # "variant 2/3"

    @property
    def label(self) -> str:
        return f"{self.position} {self.name}".strip()


@dataclass(frozen=True)
class SweepResult:
    sweep_run_id: str
    experiment_id: str
    variants: tuple[Variant, ...]
    failed: dict[str, str]  # run id -> reason
    kept: dict[str, str] = field(default_factory=dict)  # run id -> what did not reach the artifact store, and where

    @property
    def ok(self) -> bool:
        return not self.failed


def _start_variant(client: MlflowClient, parent, config: SweepConfig, values: dict, backend, position: str) -> _Child:
    """Create the variant's run (its clock starts now) and its process."""
    sweep_id = parent.info.run_id
    name = variant_name(**values)
    tags = {**flux_runs.flux_tags("variant", sweep_id), PARENT_RUN_ID_TAG: sweep_id, RUN_NAME_TAG: name}
    run = flux_runs.create_run(client, parent.info.experiment_id, tags, run_name=name)
    variant = Variant(values, run.info.run_id, name, position)
    params = config.train.as_params()
    params.update({key: repr(value) if isinstance(value, float) else str(value) for key, value in values.items()},
                  threads=str(config.threads_per_variant))
    command = [sys.executable, "-m", "mlflow_flux.cli", "train"]
    for name, value in params.items():
        command += [f"--{name.replace('_', '-')}", value]
    env = dict(os.environ)
    env.pop("MLFLOW_EXPERIMENT_NAME", None)  # the id below names the experiment; both set make MLflow refuse
    package_root = str(Path(__file__).resolve().parents[2])  # the child imports the same mlflow_flux as we do
    env.update({
        "MLFLOW_RUN_ID": variant.run_id,
        "MLFLOW_EXPERIMENT_ID": parent.info.experiment_id,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        # One plain progress line per ~10% from each variant, labelled, on the terminal they share.
        PROGRESS_MODE_ENV: "lines",
        PROGRESS_LABEL_ENV: variant.label,
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p),
    })
    handle = backend.start(command, env, config.threads_per_variant)
    print(f"{variant.label}: started (run {variant.run_id})", flush=True)
    return _Child(variant, handle)


@dataclass
class _Child:
    variant: Variant
    handle: object  # the backend's: a process, or a Ray task
    code: int | None = None


def _grace() -> float:
    return default_upload_timeout() + GRACE_MARGIN


def _stop(backend, children: list[_Child]) -> None:
    """SIGTERM every child still running (a second signal is only noted by one already stopping), wait for them to
    save their traces, and kill what is left after the grace; each child gets its exit code."""
    codes = backend.stop([child.handle for child in children], _grace())
    for child in children:
        child.code = codes.get(child.handle, child.code)


def _settle(client: MlflowClient, variant: Variant, code: int, killed: bool = False) -> str | None:
    """The failure reason of a finished child, or None; gives a child that died without a word its status."""
    run = client.get_run(variant.run_id)
    if code in (0, KeptLocally.exit_code) and run.info.status == "FINISHED":
        return None
    reason = run.data.tags.get(flux_runs.FAILURE_TAG)
    if reason is None:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        reason = f"the train process {how} (see its output above)"
    if not RunStatus.is_terminated(RunStatus.from_string(run.info.status)):
        how = RunEnd(variant.run_id, killed=reason) if killed else RunEnd(variant.run_id, failure=reason)
        conclude(client, variant.run_id, None, how)
    elif flux_runs.FAILURE_TAG not in run.data.tags:
        client.set_tag(variant.run_id, flux_runs.FAILURE_TAG, reason)
    return reason


class _Scheduler:
    """Starts the variants ``config.parallel`` at a time, collects how each ended, and stops them all on request."""

    def __init__(self, client: MlflowClient, config: SweepConfig, parent, backend, server_answers) -> None:
        self.client, self.config, self.parent, self.backend = client, config, parent, backend
        self.server_answers = server_answers
        self.pending = list(config.grid)
        self.running: list[_Child] = []
        self.variants: list[Variant] = []
        self.failed: dict[str, str] = {}
        self.kept: dict[str, str] = {}

    def run(self) -> None:
        count = len(self.pending)
        while self.pending or self.running:
            while self.pending and len(self.running) < self.config.parallel:
                child = _start_variant(self.client, self.parent, self.config, self.pending.pop(0), self.backend,
                                       position=f"variant {len(self.variants) + 1}/{count}")
                self.variants.append(child.variant)
                self.running.append(child)
            for child in list(self.running):
                code = self.backend.poll(child.handle)
                if code is not None:
                    self.running.remove(child)
                    self._collect(child.variant, code)
            time.sleep(0.2)

    def _collect(self, variant: Variant, code: int) -> None:
        if not self.server_answers():
            raise TrackingLost(f"the tracking server at {mlflow.get_tracking_uri()} stopped answering during the "
                               f"sweep ({variant.label})")
        reason = _settle(self.client, variant, code)
        if reason is not None:
            self.failed[variant.run_id] = f"{variant.label}: {reason}"
            print(f"{variant.label}: FAILED: {reason}", flush=True)
        elif code == KeptLocally.exit_code:
            missing = self.client.get_run(variant.run_id).data.tags.get(MISSING_TAG, "results kept locally")
            self.kept[variant.run_id] = f"{variant.label}: {missing}"
            print(f"{variant.label}: finished, but {missing}", flush=True)

    def stop(self, exc: BaseException) -> None:
        """Ctrl-C, SIGTERM, a lost server, or a child that could not be launched: no process and no variant may stay
        RUNNING. Each running child is stopped and waited for (it saves its trace), then settled."""
        _stop(self.backend, self.running)
        if isinstance(exc, TrackingLost) or not self.server_answers():
            return
        interrupted = isinstance(exc, KeyboardInterrupt)
        for child in self.running:
            if not interrupted:
                self.client.set_tag(child.variant.run_id, flux_runs.FAILURE_TAG,
                                    f"the sweep stopped: {type(exc).__name__}: {exc}")
            _settle(self.client, child.variant, child.code if child.code is not None else -signal.SIGTERM,
                    killed=interrupted)


def _start_sweep_run(client: MlflowClient, config: SweepConfig):
    """The sweep's parent run: `mlflow run`'s, or a new one; its settings under the names its variants use."""
    with flux_runs.creating_runs():
        parent = mlflow.start_run()
    flux_runs.ensure_runs_view(client, parent.info.experiment_id, EXPERIMENT_DESCRIPTION)
    client.log_batch(
        parent.info.run_id,
        params=[Param(k, v) for k, v in config.params().items() if k not in parent.data.params],
        tags=[RunTag(k, v) for k, v in {**flux_runs.flux_tags("sweep", parent.info.run_id),
                                        RUN_NAME_TAG: config.name, SPEC_TAG: spec_tag_value(STUDY_REPORT)}.items()],
    )
    return parent


def run_sweep(config: SweepConfig) -> SweepResult:
    """Run every variant, ``config.parallel`` at a time, under one parent run; a failed child stops no sibling.

    Returns:
        The parent run, the variants, the failed ones with their reasons and those whose results are kept locally.
        The parent ends FAILED (the failed variants named in ``mlflow_flux.failure``) when any child failed, and
        carries ``mlflow_flux.missing`` when any child's results did not all reach the artifact store.

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM; every running variant is stopped and ends KILLED with its trace.
        TrackingLost: the tracking server stopped answering; the variants that finished keep what reached it.
    """
    tracking_uri = mlflow.get_tracking_uri()
    check_reachable(tracking_uri)
    server_answers = health_probe(tracking_uri) or (lambda: True)
    client = MlflowClient()
    parent = _start_sweep_run(client, config)
    print(f"{config.name}: run {parent.info.run_id}, {config.variants} variants, {config.parallel} at a time, "
          f"{config.threads_per_variant} thread(s) each, backend {config.backend}", flush=True)
    backend = None
    with ending(client, parent.info.run_id) as end:
        try:
            backend = make_backend(config.backend, _grace())
            scheduler = _Scheduler(client, config, parent, backend, server_answers)
            scheduler.run()
        except BaseException as exc:
            if backend is not None:
                scheduler.stop(exc)
            if isinstance(exc, TrackingLost) or not server_answers():
                end.lost_tracking()
            raise
        finally:
            if backend is not None:
                backend.close()
        client.log_metric(parent.info.run_id, "sweep/failed_variants", len(scheduler.failed))
        end.add_missing(list(scheduler.kept.values()), None)
        if scheduler.failed:
            end.fail("failed variants: " + "; ".join(scheduler.failed.values()))
    return SweepResult(parent.info.run_id, parent.info.experiment_id, tuple(scheduler.variants), scheduler.failed,
                       scheduler.kept)
