"""The recorder alone (no MLflow): snapshots against float64 arithmetic, unbatched convs, copies and detaching."""

import copy
import io

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

import mlflow_flux
from mlflow_flux.recording.recorder import NeuronRecorder
from mlflow_flux.traces.schema import STAT_COLUMNS


@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_a_snapshot_equals_float64_arithmetic_on_the_same_tensors(monkeypatch, fastpath):
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", fastpath)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    batches = [torch.randn(4, 6) for _ in range(3)]
    outputs, grads = [], []
    with NeuronRecorder(model) as recorder:
        first = recorder.snapshot(0)  # nothing seen yet: activity and steps undefined
        for x in batches:
            hidden = model[0](x)
            outputs.append(hidden.detach().double())
            model[2](torch.relu(hidden)).pow(2).sum().backward()
            grads.append(model[0].weight.grad.detach().double().clone())
            model.zero_grad()
        snap = recorder.snapshot(1)
    rows = snap.layer_slice("0")
    out = torch.cat(outputs)
    w = model[0].weight.detach().double()
    expected = {"act_mean": out.mean(0), "act_std": out.std(0, unbiased=False), "act_rate": (out > 0).double().mean(0),
                "w_mean": w.mean(1), "w_std": w.std(1, unbiased=False), "w_norm": w.norm(dim=1),
                "w_step": torch.zeros(5, dtype=torch.float64), "bias": model[0].bias.detach().double(),
                "grad_norm": torch.stack([g.norm(dim=1) for g in grads]).pow(2).mean(0).sqrt()}
    for column, values in expected.items():
        np.testing.assert_allclose(snap.column(column)[rows], values.numpy(), rtol=2e-5, atol=1e-7, err_msg=column)
    assert np.isnan(first.column("act_mean")).all() and np.isnan(first.column("w_step")).all()
    assert first.nonfinite == 0 and snap.nonfinite == 0
    assert list(snap.layers) == ["0", "2"] and snap.stats.shape == (len(STAT_COLUMNS), 8)


@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_an_unbatched_conv_input_counts_as_one_sample(store, monkeypatch, fastpath):
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", fastpath)
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 6, 3)  # unbatched (1, 8, 8) -> (6, 6, 6): its second dimension equals the channel count
    x = torch.randn(1, 8, 8)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(conv, window=2, log_figures=False) as flux:
            conv(x).sum().backward()
            flux.end_epoch(0)
    trace = mlflow_flux.load_traces(run.info.run_id)
    expected = conv(x).detach().reshape(6, -1).double()
    np.testing.assert_allclose(trace.act_mean, expected.mean(1).numpy(), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(trace.act_rate, (expected > 0).double().mean(1).numpy(), rtol=2e-5)




@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_a_copy_of_a_watched_model_is_a_plain_model_and_detach_restores_it(store, monkeypatch, fastpath):
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", fastpath)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    own_forward = model[2].forward  # a forward set on the instance before watching, as some wrappers do
    model[2].forward = own_forward
    x = torch.randn(5, 4)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            model(x).sum().backward()
            twin = copy.deepcopy(model)  # e.g. keeping the best model for early stopping
            buffer = io.BytesIO()
            torch.save(model, buffer)
            for copied in (twin, torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
                copied[2].weight.data.zero_()
                copied[2].bias.data.zero_()
                assert torch.equal(copied(x), torch.zeros(5, 2))  # its own weights, not the watched model's
                copied(x).sum().backward()
            flux.end_epoch(0)
    trace = mlflow_flux.load_traces(run.info.run_id)
    act_mean = trace[trace.layer == "0"].act_mean.to_numpy()
    np.testing.assert_allclose(act_mean, model[0](x).detach().mean(0).numpy(), rtol=2e-5, atol=1e-6)
    assert "forward" not in model[0].__dict__ and model[2].__dict__["forward"] is own_forward
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks
