"""The ``train`` entry point: one variant of the study, one MLflow run.

    mlflow run . -e train -P lr=0.01 -P epochs=1000 --env-manager local
    mlflow-flux train --lr 0.01 --epochs 50             # same, without the MLproject

Reads top to bottom: data, model, run, loop, final evaluation. docs/experiment.md explains every default.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import mlflow
import numpy as np
import torch
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..errors import DivergedError, TrackingLost
from ..report.claims import CLAIMS_TAG, claims_tag_value
from ..traces import runs as flux_runs
from ..traces.mlflow_adapter import RUN_NAME_TAG, abandon_active_run
from ..traces.server import check_reachable
from ..watcher import watch
from .claims import PAPER_CLAIMS
from .config import SGD_MOMENTUM, TrainConfig, model_name, variant_name
from .figures import image_rows_figure
from .model import Autoencoder
from .progress import PROGRESS_LABEL_ENV, Progress
from .shapes import SHAPES, ShapeSpec, make_shapes
from .twins import TwinDistance, make_twin

__all__ = ["TrainResult", "train", "train_one_epoch", "RECORDER_PARAMS", "LOSS_KEY", "FINAL_LOSS_KEY"]

# Logged by watch() (settings_prefix=""), under the names the sweep's parameters use too.
RECORDER_PARAMS = ("snapshot_every", "window", "tau", "summary_every", "flush_every")
# Under flux/, beside the whole-network summaries: MLflow's UI orders chart sections by name, and the study's first
# section then shows the loss with the participation (docs/decisions.md).
LOSS_KEY = "flux/loss_train"
FINAL_LOSS_KEY = "flux/loss_final"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    final_loss: float
    epochs: int


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=SGD_MOMENTUM)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    batch_size: int, order: torch.Generator,
                    twin: tuple[torch.nn.Module, torch.optim.Optimizer] | None = None) -> float:
    """One epoch of the study's training (shuffled mini-batches, MSE reconstruction); returns the mean loss.

    ``twin`` (a model and its optimizer) takes the same steps on the same batches. The sweep benchmark times this
    same function as the plain floor the sweep is measured against.
    """
    pairs = [(model, optimizer)] + ([twin] if twin is not None else [])
    for net, _ in pairs:
        net.train()
    total = torch.zeros((), dtype=torch.float64)
    for batch in torch.randperm(len(images), generator=order).split(batch_size):
        x = images[batch]
        for index, (net, opt) in enumerate(pairs):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(net(x), x)
            loss.backward()
            opt.step()
            if index == 0:
                total += loss.detach() * len(batch)
    return float(total) / len(images)  # one sync per epoch, not per step


def _log_dataset(images: np.ndarray, labels: np.ndarray, spec: ShapeSpec) -> None:
    dataset = mlflow.data.from_numpy(images, targets=labels, name=spec.name)
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training")
            break
        except MlflowException:
            # Sibling variants log the same dataset at the same moment; the store's check-then-insert can
            # then fail on its unique key (seen with `mlflow server` on sqlite). The row exists on the retry.
            if attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))
    picks = [np.flatnonzero(labels == c)[:4] for c in range(len(SHAPES))]
    rows = [(f"sample {r + 1}", [images[p[r]] for p in picks if len(p) > r]) for r in range(4)]
    mlflow.log_figure(image_rows_figure(rows, labels=list(range(len(SHAPES)))), "figures/dataset_preview.png")


def _log_reconstructions(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, lr: float) -> None:
    """Originals above reconstructions, one per shape class (the paper's Figures 1-3)."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(len(SHAPES)) if (labels == c).any()]
    with torch.no_grad():
        rebuilt = model(images[firsts]).cpu().numpy()
    rows = [("original", images[firsts].cpu().numpy()), (f"lr={lr:g}", rebuilt)]
    figure = image_rows_figure(rows, labels=[int(labels[i]) for i in firsts])
    mlflow.log_figure(figure, "figures/reconstructions.png")


def _start_run(name: str) -> mlflow.ActiveRun:
    """Resume the run that `mlflow run` or the sweep made for us, or start one tagged as ours."""
    with flux_runs.creating_runs():
        run = mlflow.start_run(run_name=None if os.environ.get("MLFLOW_RUN_ID") else name)
    client = MlflowClient()
    flux_runs.ensure_runs_view(client, run.info.experiment_id)
    tags = run.data.tags
    ours = {**flux_runs.flux_tags("variant"), CLAIMS_TAG: claims_tag_value(PAPER_CLAIMS)}
    missing = {key: value for key, value in ours.items() if key not in tags}
    if flux_runs.ROLE_TAG not in tags:  # made by `mlflow run -e train` (random name) or by us: name it
        missing[RUN_NAME_TAG] = name
    if missing:
        client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in missing.items()])
    return run


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one variant in the active MLflow run (or in a new one) and log everything to it.

    Raises:
        DivergedError: the loss became NaN or infinite; the run ends FAILED with the reason in a tag.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the run ends KILLED, with every finished epoch's trace logged.
        TrackingLost: the tracking server stopped answering; the run keeps what reached it, the rest is on disk.
    """
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    # Subnormal gradients and updates slow CPU training as it converges (lr 1e-4: 219 -> 334 ms an epoch); flushed
    # to zero the loss is the same to the digits we print (docs/decisions.md). The study's own process only:
    # watch() never changes a user's numerics.
    torch.set_flush_denormal(True)
    tracking_uri = mlflow.get_tracking_uri()
    check_reachable(tracking_uri)

    # -- data: the same images for every variant of a sweep (the seed varies only init and batch order) --------
    spec = ShapeSpec(n_samples=config.n_samples, image_size=config.image_size, noise=config.noise)
    images_np, labels = make_shapes(spec)
    images = torch.from_numpy(images_np)

    # -- model and optimizer -----------------------------------------------------------------------------------
    torch.manual_seed(config.seed)
    model = Autoencoder(config.image_size**2, config.hidden)
    optimizer = _optimizer(config, model)
    twin, distance = None, None
    if config.twins:  # before watch(): the twin is a plain copy
        twin_model = make_twin(model, config.twin_perturbation, config.seed)
        twin, distance = (twin_model, _optimizer(config, twin_model)), TwinDistance(model, twin_model)
    order = torch.Generator().manual_seed(config.seed)

    name = variant_name(config.optimizer, config.lr, config.seed)
    run = _start_run(name)
    run_id = run.info.run_id
    client = MlflowClient()
    # `mlflow run` may have logged the raw parameter strings already; MLflow refuses to change a param.
    params = {k: v for k, v in config.as_params().items() if k not in RECORDER_PARAMS and k not in run.data.params}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    status: RunStatus | None = RunStatus.FAILED
    flux = None

    def server_answers() -> bool:  # after the watcher found the server gone, no MLflow call may wait on it
        return flux is None or flux.result is None or not flux.result.offline

    try:
        _log_dataset(images_np, labels, spec)
        bar = Progress(config.epochs, label=os.environ.get(PROGRESS_LABEL_ENV) or name) if progress else None

        # -- the loop: the recorder's hooks ride along; end_epoch() snapshots and queues metrics ---------------
        with watch(
            model,
            snapshot_every=config.snapshot_every,
            window=config.window,
            tau=config.tau,
            summary_every=config.summary_every,
            flush_every=config.flush_every,
            layer_metrics=config.layer_metric_keys,
            settings_prefix="",  # the sweep's parameters already use the plain names
        ) as flux:
            for epoch in range(config.epochs):
                epoch_loss = train_one_epoch(model, optimizer, images, config.batch_size, order, twin)
                twin_metrics = distance.metrics(epoch + 1) if distance is not None else {}
                flux.end_epoch(epoch, {LOSS_KEY: epoch_loss, **twin_metrics})
                if bar:
                    bar.update(epoch, epoch_loss)
                if not math.isfinite(epoch_loss):
                    raise DivergedError(
                        f"loss became {epoch_loss} at epoch {epoch} with lr={config.lr:g}: "
                        "the learning rate is too large for this setup"
                    )
        if not server_answers():
            kept = flux.result.kept_trace
            raise TrackingLost(
                f"the tracking server at {tracking_uri} stopped answering during run {run_id}: training finished, "
                f"but the run does not hold everything"
                + (f"; the trace is kept at {kept} (upload it with: mlflow artifacts log-artifacts --run-id {run_id} "
                   f"--local-dir {kept} --artifact-path traces)" if kept else "")
            )

        # -- final evaluation on the whole dataset ---------------------------------------------------------------
        model.eval()
        with torch.no_grad():
            final = float(torch.nn.functional.mse_loss(model(images), images))
        _log_reconstructions(model, images, labels, config.lr)
        # Explicit requirements: inferring them would import-scan the environment, seconds per run. The model is
        # named after its variant and linked to the last epoch's metrics and to the final loss.
        model_info = mlflow.pytorch.log_model(
            model,
            name=model_name(config.optimizer, config.lr, config.seed),
            input_example=images_np[:2],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            step=config.epochs - 1,
        )
        mlflow.log_metric(FINAL_LOSS_KEY, final, step=config.epochs - 1, model_id=model_info.model_id)
        status = RunStatus.FINISHED
        return TrainResult(run_id, final, config.epochs)
    except TrackingLost:
        status = None
        raise
    except KeyboardInterrupt as exc:
        status = RunStatus.KILLED
        if server_answers():
            how = f"stopped by {exc.args[0]}" if hasattr(exc, "signum") else "interrupted (Ctrl-C)"
            client.set_tag(run_id, flux_runs.FAILURE_TAG, how)
        raise
    except BaseException as exc:
        if server_answers():
            client.set_tag(run_id, flux_runs.FAILURE_TAG, f"{type(exc).__name__}: {exc}"[:5000])
        raise
    finally:
        if status is not None and server_answers():
            mlflow.end_run(RunStatus.to_string(status))
        else:
            abandon_active_run(run_id)  # the run cannot be ended; MLflow's atexit hook must not wait on it
        sys.stderr.flush()
