"""The ``main`` entry point: the learning-rate sweep, one parent run and one child run per (lr, seed).

    mlflow run . --env-manager local                       # defaults: lrs 0.01,0.001,0.0001, seed 0, 1000 epochs
    mlflow run . --env-manager local -P epochs=50 -P seeds=0,1

Children are launched through ``mlflow.projects.run`` (the ``train`` entry point), in parallel processes with a
fair share of threads each, so moving them to a cluster backend is a configuration change, not a rewrite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import mlflow
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from ..errors import FluxError, InvalidParameter
from ..traces import runs as flux_runs
from ..traces.mlflow_adapter import PARENT_RUN_ID_TAG, RUN_NAME_TAG
from .config import TrainConfig, parse_floats, parse_ints, parse_train_config

__all__ = ["SweepConfig", "SweepResult", "Variant", "parse_sweep_config", "run_sweep", "find_project_dir"]

@dataclass(frozen=True)
class SweepConfig:
    """What the sweep varies (``lrs`` x ``seeds``), how wide it runs, and the settings every variant shares."""

    lrs: tuple[float, ...] = (0.01, 0.001, 0.0001)
    seeds: tuple[int, ...] = (0,)
    max_parallel: int = 0  # 0: one process per core
    train: TrainConfig = TrainConfig()
    report: bool = True

    @property
    def parallel(self) -> int:
        wanted = self.max_parallel or os.cpu_count() or 1
        return max(1, min(wanted, len(self.lrs) * len(self.seeds)))

    @property
    def threads_per_variant(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.parallel)


@dataclass(frozen=True)
class Variant:
    lr: float
    seed: int
    run_id: str

    @property
    def label(self) -> str:
        return f"lr={self.lr:g} seed={self.seed}"


@dataclass(frozen=True)
class SweepResult:
    sweep_run_id: str
    variants: tuple[Variant, ...]
    failed: dict[str, str]  # run id -> reason

    @property
    def ok(self) -> bool:
        return not self.failed


def parse_sweep_config(overrides: Mapping[str, str]) -> SweepConfig:
    """Parse string parameters; every bad value is an :class:`InvalidParameter` before anything runs."""
    overrides = dict(overrides)
    lrs = parse_floats("lrs", overrides.pop("lrs")) if "lrs" in overrides else SweepConfig.lrs
    seeds = parse_ints("seeds", overrides.pop("seeds"), minimum=0) if "seeds" in overrides else SweepConfig.seeds
    max_parallel = 0
    if "max_parallel" in overrides:
        raw = str(overrides.pop("max_parallel")).strip()
        if raw.lower() not in ("auto", "0", ""):
            max_parallel = parse_ints("max_parallel", raw)[0]
    report = True
    if "report" in overrides:
        raw = str(overrides.pop("report")).strip().lower()
        if raw not in ("true", "false", "1", "0", "yes", "no"):
            raise InvalidParameter("report", raw, "expected true or false")
        report = raw in ("true", "1", "yes")
    for name in ("lr", "seed"):
        if name in overrides:
            raise InvalidParameter(name, overrides[name], f"the sweep varies it: pass {name}s= instead")
    return SweepConfig(lrs=lrs, seeds=seeds, max_parallel=max_parallel, train=parse_train_config(overrides), report=report)


def check_launch_tools() -> None:
    """MLflow launches each child as `mlflow run ...` and then `python -m ...`, both looked up on PATH."""
    for tool in ("mlflow", "python"):
        if shutil.which(tool) is None:
            raise FluxError(
                f"'{tool}' is not on PATH, and MLflow starts each variant through it: activate the environment "
                f"mlflow-flux is installed in (e.g. `source .venv/bin/activate`), or use `make run`"
            )


def find_project_dir() -> Path:
    """The MLflow Project the children run: the working directory's, else the one this package came from."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (candidate / "MLproject").is_file():
            return candidate
    raise FluxError("no MLproject found: run the sweep from a checkout of mlflow-flux (where MLproject is)")


def _create_children(client: MlflowClient, parent, config: SweepConfig) -> list[Variant]:
    sweep_id = parent.info.run_id
    variants = []
    for seed in config.seeds:
        for lr in config.lrs:
            label = f"lr={lr:g} seed={seed}"
            tags = {**flux_runs.flux_tags("variant", sweep_id), PARENT_RUN_ID_TAG: sweep_id, RUN_NAME_TAG: label}
            run = flux_runs.create_run(client, parent.info.experiment_id, tags, run_name=label)
            variants.append(Variant(lr, seed, run.info.run_id))
    return variants


def _train_parameters(config: SweepConfig, variant: Variant) -> dict[str, str]:
    params = config.train.as_params()
    params.update(lr=repr(variant.lr), seed=str(variant.seed), threads=str(config.threads_per_variant))
    return params


@contextlib.contextmanager
def _experiment_name_hidden() -> Iterator[None]:
    """Hide MLFLOW_EXPERIMENT_NAME while MLflow spawns a child.

    MLflow launches an asynchronous project run as `mlflow run --experiment-id ...`, whose child inherits our
    environment; `mlflow run` itself exported MLFLOW_EXPERIMENT_ID to us, and with a user's
    MLFLOW_EXPERIMENT_NAME beside it the child's CLI refuses to start. The id we pass names the same experiment.
    """
    name = os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    try:
        yield
    finally:
        if name is not None:
            os.environ["MLFLOW_EXPERIMENT_NAME"] = name


def _launch(project: Path, experiment_id: str, variant: Variant, params: dict[str, str]):
    with _experiment_name_hidden():
        return mlflow.projects.run(
            str(project),
            entry_point="train",
            parameters=params,
            experiment_id=experiment_id,
            run_id=variant.run_id,
            env_manager="local",
            synchronous=False,
        )


def _settle(client: MlflowClient, variant: Variant, succeeded: bool) -> str | None:
    """The failure reason of a finished child, or None; marks a child that died without a word FAILED."""
    run = client.get_run(variant.run_id)
    reason = run.data.tags.get(flux_runs.FAILURE_TAG)
    if succeeded and run.info.status == "FINISHED":
        return None
    if reason is None:
        reason = "the train process exited with an error (see its output above)"
        client.set_tag(variant.run_id, flux_runs.FAILURE_TAG, reason)
    if not RunStatus.is_terminated(run.info.status):
        client.set_terminated(variant.run_id, "FAILED")
    return reason


def run_sweep(config: SweepConfig) -> SweepResult:
    """Run every variant, ``config.parallel`` at a time, under one parent run; a failed child stops no sibling.

    Returns:
        The parent run, the variants and the failed ones with their reasons. The parent ends FAILED (with the
        failed variants named in ``mlflow_flux.failure``) when any child failed.
    """
    project = find_project_dir()
    check_launch_tools()
    client = MlflowClient()
    with flux_runs.creating_runs():
        parent = mlflow.start_run()
    sweep_id = parent.info.run_id
    flux_runs.ensure_runs_view(client, parent.info.experiment_id)
    shared = {k: v for k, v in config.train.as_params().items() if k not in ("lr", "seed", "threads")}
    existing = parent.data.params
    params = {
        "lrs": ",".join(f"{lr:g}" for lr in config.lrs),
        "seeds": ",".join(map(str, config.seeds)),
        "max_parallel": str(config.parallel),
        **shared,
    }
    client.log_batch(
        sweep_id,
        params=[Param(k, v) for k, v in params.items() if k not in existing],
        tags=[RunTag(k, v) for k, v in flux_runs.flux_tags("sweep", sweep_id).items()],
    )
    variants = _create_children(client, parent, config)
    print(f"sweep {sweep_id}: {len(variants)} variants, {config.parallel} at a time, "
          f"{config.threads_per_variant} thread(s) each", flush=True)

    pending = list(variants)
    running: list[tuple[Variant, object]] = []
    failed: dict[str, str] = {}
    status = RunStatus.FAILED
    try:
        while pending or running:
            while pending and len(running) < config.parallel:
                variant = pending.pop(0)
                running.append((variant, _launch(project, parent.info.experiment_id, variant,
                                                 _train_parameters(config, variant))))
            still = []
            for variant, submitted in running:
                if submitted.get_status() == "RUNNING":
                    still.append((variant, submitted))
                    continue
                reason = _settle(client, variant, submitted.wait())
                if reason is not None:
                    failed[variant.run_id] = f"{variant.label}: {reason}"
                    print(f"variant {variant.label} FAILED: {reason}", flush=True)
            running = still
            time.sleep(0.2)
        if failed:
            client.set_tag(sweep_id, flux_runs.FAILURE_TAG, "failed variants: " + "; ".join(failed.values())[:4900])
        else:
            status = RunStatus.FINISHED
        client.log_metric(sweep_id, "sweep/failed_variants", len(failed))
    except BaseException as exc:
        # Ctrl-C, or a child that could not be launched: no variant may stay RUNNING forever.
        interrupted = isinstance(exc, KeyboardInterrupt)
        status = RunStatus.KILLED if interrupted else RunStatus.FAILED
        for _, submitted in running:
            submitted.cancel()
        for variant in [v for v, _ in running] + pending:
            if not interrupted:
                client.set_tag(variant.run_id, flux_runs.FAILURE_TAG, f"the sweep stopped: {type(exc).__name__}: {exc}")
            client.set_terminated(variant.run_id, RunStatus.to_string(status))
        raise
    finally:
        mlflow.end_run(RunStatus.to_string(status))
    return SweepResult(sweep_id, tuple(variants), failed)
