"""A real lightning.Trainer fit with FluxCallback: one run, one trace, the module's layers, every epoch."""

from __future__ import annotations

import subprocess

import mlflow
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger

import mlflow_flux
from mlflow_flux.integrations.lightning import FluxCallback
from tests.helpers import PYTHON, ROOT, subprocess_env
from tests.integrations.lightning_models import AutoEncoder, loaders, trainer_options
from tests.reference import Reference, assert_trace_matches


def _runs(store):
    return mlflow.search_runs([store["experiment_id"]], output_format="list")


def test_fit_with_an_mlflow_logger_records_into_the_loggers_run(store):
    torch.manual_seed(0)
    model = AutoEncoder()
    logger = MLFlowLogger(experiment_name=store["experiment_name"], tracking_uri=store["uri"])
    train, val = loaders()
    Trainer(logger=logger, callbacks=[FluxCallback(window=2)], **trainer_options()).fit(model, train, val)
    (run,) = _runs(store)  # no second run
    assert run.info.run_id == logger.run_id and run.info.status == "FINISHED"
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(trace.epoch.unique()) == [0, 1, 2, 3]
    assert sorted(trace.layer.unique()) == ["net.0", "net.2"]
    assert (trace.groupby("epoch").size() == 16 + 8).all()
    assert "loss/train" in run.data.metrics and "flux/participating_frac" in run.data.metrics


def test_validation_and_sanity_passes_never_count_and_statistics_equal_plain_hooks(store):
    """4 batches of 16 per epoch: the trace's activation counts are those of training alone."""
    torch.manual_seed(0)
    model = AutoEncoder()
    reference = Reference({"net.0": model.net[0], "net.2": model.net[2]})
    expected = {}

    class Snapshots(FluxCallback):
        def on_train_epoch_end(self, trainer, pl_module):
            expected[trainer.current_epoch] = reference.snapshot()
            super().on_train_epoch_end(trainer, pl_module)

    train, val = loaders()
    with mlflow.start_run() as run:  # gradients read after Lightning's step(closure): one backward per step
        Trainer(logger=False, callbacks=[Snapshots(window=2)],
                num_sanity_val_steps=2, **trainer_options()).fit(model, train, val)
    assert_trace_matches(mlflow_flux.load_traces(run.info.run_id), expected)
    assert mlflow.get_run(run.info.run_id).data.metrics["loss/train"] > 0  # logged by the callback: no logger


def test_bf16_mixed_precision_fit_records_finite_statistics(store):
    torch.manual_seed(0)
    train, val = loaders()
    with mlflow.start_run() as run:
        Trainer(logger=False, precision="bf16-mixed", callbacks=[FluxCallback(window=2)],
                **trainer_options()).fit(AutoEncoder(), train, val)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(trace.epoch.unique()) == [0, 1, 2, 3]
    assert np.isfinite(trace[["act_mean", "act_std", "grad_norm"]].to_numpy()).all()


def test_every_n_steps_snapshots_at_global_steps(store):
    train, val = loaders()
    with mlflow.start_run() as run:
        Trainer(logger=False, callbacks=[FluxCallback(every_n_steps=2, window=2)],
                **trainer_options()).fit(AutoEncoder(), train, val)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(trace.epoch.unique()) == list(range(2, 17, 2))  # 4 epochs x 4 steps


def test_bad_every_n_steps_is_refused_at_construction():
    with pytest.raises(mlflow_flux.FluxError, match="every_n_steps"):
        FluxCallback(every_n_steps=0)


@pytest.mark.slow
def test_two_process_ddp_fit_leaves_one_trace(store):
    result = subprocess.run([*PYTHON, "tests/scripts/lightning_ddp.py"], cwd=ROOT, env=subprocess_env(store),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    (run,) = _runs(store)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(trace.epoch.unique()) == [0, 1, 2, 3]
    assert (trace.groupby("epoch").size() == 16 + 8).all()
    assert np.isfinite(trace.act_mean).all()
