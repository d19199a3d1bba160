"""The ``train`` entry point: one variant of the study, one MLflow run.

    mlflow run . -e train -P lr=0.01 -P epochs=1000 --env-manager local
    mlflow-flux train --lr 0.01 --epochs 50             # same, without the MLproject

Reads top to bottom: data, model, run, loop, final evaluation. docs/experiment.md explains every default.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import mlflow
import numpy as np
import torch
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ..errors import DivergedError, KeptLocally, TrackingLost
from ..report.spec import SPEC_TAG, spec_tag_value
from ..traces import runs as flux_runs
from ..traces.lifecycle import ending
from ..traces.mlflow_adapter import RUN_NAME_TAG, mlflow_pytorch
from ..traces.server import check_reachable
from ..watcher import FluxWatcher
from .config import SGD_MOMENTUM, TrainConfig, model_name, variant_name
from .figures import image_rows_figure
from .model import Autoencoder
from .progress import PROGRESS_LABEL_ENV, Progress
from .report import FINAL_LOSS_KEY, LOSS_KEY, RECONSTRUCTIONS, STUDY_REPORT
from .shapes import SHAPES, ShapeSpec, make_shapes
from .twins import Twins

__all__ = ["TrainResult", "train", "train_one_epoch", "make_optimizer"]


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    final_loss: float
    epochs: int


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The study's optimizer for ``model``: ``config.optimizer`` at ``config.lr`` (the benchmarks time the same)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=SGD_MOMENTUM)
    # PyTorch's fused Adam: the same update in one kernel per parameter instead of ~10 elementwise ops, nearly halving
    # a step of this small model on CPU (docs/decisions.md); it differs from the default loop only in rounding.
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)


def train_one_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    batch_size: int, order: torch.Generator,
                    twins: list[tuple[torch.nn.Module, torch.optim.Optimizer]] = ()) -> float:
    """One epoch of the study's training (shuffled mini-batches, MSE reconstruction); returns the mean loss.

    ``twins`` (models and their optimizers) take the same steps on the same batches. The sweep benchmark times this
    same function as the plain floor the sweep is measured against.
    """
    pairs = [(model, optimizer), *twins]
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
    """The dataset as the run's MLflow input (its digest is the same for every variant of a sweep)."""
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


def _dataset_preview(images: np.ndarray, labels: np.ndarray):
    """Four samples of each shape."""
    picks = [np.flatnonzero(labels == c)[:4] for c in range(len(SHAPES))]
    rows = [(f"sample {r + 1}", [images[p[r]] for p in picks if len(p) > r]) for r in range(4)]
    return image_rows_figure(rows, labels=list(range(len(SHAPES))))


def _reconstructions(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, lr: float):
    """Originals above reconstructions, one per shape class (the paper's Figures 1-3)."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in range(len(SHAPES)) if (labels == c).any()]
    with torch.no_grad():
        rebuilt = model(images[firsts]).cpu().numpy()
    rows = [("original", images[firsts].cpu().numpy()), (f"lr={lr:g}", rebuilt)]
    return image_rows_figure(rows, labels=[int(labels[i]) for i in firsts])


def _start_run(name: str, config: TrainConfig) -> str:
    """Resume the run that `mlflow run` or the sweep made for us, or start one tagged as ours; log the config."""
    with flux_runs.creating_runs():
        run = mlflow.start_run(run_name=None if os.environ.get("MLFLOW_RUN_ID") else name)
    client = MlflowClient()
    flux_runs.ensure_runs_view(client, run.info.experiment_id)
    ours = {**flux_runs.flux_tags("variant"), SPEC_TAG: spec_tag_value(STUDY_REPORT)}
    tags = {key: value for key, value in ours.items() if key not in run.data.tags}
    if flux_runs.ROLE_TAG not in run.data.tags:  # made by `mlflow run -e train` (random name) or by us: name it
        tags[RUN_NAME_TAG] = name
    # `mlflow run` may have logged the raw parameter strings already; MLflow refuses to change a param.
    params = {k: v for k, v in config.as_params().items() if k not in run.data.params}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    return run.info.run_id


def _epochs(config: TrainConfig, model, optimizer, images, twins: Twins | None, flux, label: str,
            progress: bool) -> None:
    """The training loop: the recorder's hooks ride along; end_epoch() snapshots and queues metrics."""
    order = torch.Generator().manual_seed(config.seed)
    bar = Progress(config.epochs, label=label) if progress else None
    for epoch in range(config.epochs):
        epoch_loss = train_one_epoch(model, optimizer, images, config.batch_size, order,
                                     twins.twins if twins is not None else [])
        twin_metrics = twins.end_epoch() if twins is not None else {}
        flux.end_epoch(epoch, {LOSS_KEY: epoch_loss, **twin_metrics})
        if bar:
            bar.update(epoch, epoch_loss)
        if not math.isfinite(epoch_loss):
            raise DivergedError(f"loss became {epoch_loss} at epoch {epoch} with lr={config.lr:g}: "
                                "the learning rate is too large for this setup")


def _log_model(model: torch.nn.Module, config: TrainConfig, example: np.ndarray, final: float) -> None:
    """The model, named after its variant and linked to the last epoch's metrics and to the final loss. Explicit
    requirements: inferring them would import-scan the environment, seconds per run."""
    info = mlflow_pytorch().log_model(model, name=model_name(config.optimizer, config.lr, config.seed,
                                                             config.activation, config.recycle),
                                      input_example=example[:2], step=config.epochs - 1,
                                      pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    mlflow.log_metric(FINAL_LOSS_KEY, final, step=config.epochs - 1, model_id=info.model_id)


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one variant in the active MLflow run (or in a new one) and log everything to it.

    Raises:
        DivergedError: the loss became NaN or infinite; the run ends FAILED with the reason in a tag.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the run ends KILLED, with every finished epoch's trace logged.
        KeptLocally: the artifact store did not take everything: the run ends FINISHED with a tag that says what is
            missing, where it is kept and how to upload it.
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

    # -- model, optimizer, and twins a relative twin_perturbation away (made before watch(): unwatched) ----------
    torch.manual_seed(config.seed)
    model = Autoencoder(config.image_size**2, config.hidden, config.activation)
    optimizer = make_optimizer(config, model)
    twins = (Twins(model, optimizer, lambda twin: make_optimizer(config, twin), config.twins, config.twin_perturbation,
                   config.twin_period, config.seed) if config.twins else None)

    # -- the run, ended honestly whatever happens ----------------------------------------------------------------
    name = variant_name(config.optimizer, config.lr, config.seed, config.activation, config.recycle)
    run_id = _start_run(name, config)
    client = MlflowClient()
    with ending(client, run_id) as end:
        _log_dataset(images_np, labels, spec)
        # Gradients are read as the optimizer applies them where a policy resets neurons (it resets their moments);
        # otherwise per backward pass, as before (the same values here: one pass per step).
        recycles = config.recycle != "none"
        with FluxWatcher(model, run_id, config.recorder, client=client,
                         optimizer=optimizer if recycles else None) as flux:
            flux.log_figure(_dataset_preview(images_np, labels), "figures/dataset_preview.png")
            _epochs(config, model, optimizer, images, twins, flux, os.environ.get(PROGRESS_LABEL_ENV) or name,
                    progress)
            # -- final evaluation on the whole dataset ------------------------------------------------------------
            model.eval()
            with torch.no_grad():
                final = float(torch.nn.functional.mse_loss(model(images), images))
            flux.log_figure(_reconstructions(model, images, labels, config.lr), RECONSTRUCTIONS)
        end.include(flux.result)
        if end.missing and not end.offline:  # the artifact store did not take everything: the model waits too
            mlflow.log_metric(FINAL_LOSS_KEY, final, step=config.epochs - 1)
        elif not end.offline:
            _log_model(model, config, images_np, final)
    if end.offline:
        raise TrackingLost(f"the tracking server at {tracking_uri} stopped answering during run {run_id}: training "
                           f"finished, but the run does not hold everything; {end.describe()}")
    if end.missing:
        raise KeptLocally(f"run {run_id} finished, but {end.describe()}")
    return TrainResult(run_id, final, config.epochs)
