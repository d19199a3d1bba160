"""What big models need (issue "Big models"): activation checkpointing counts each sample once, a neuron budget
records a fixed subset whose rows equal the whole trace's, the recorder's own memory is per-neuron on the device
and the weight copies (host memory) go away with the quantities that need them; on a GPU (skipped without one),
torch.cuda.memory_allocated grows by the per-neuron state only.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import mlflow_flux
from mlflow_flux import reshape
from mlflow_flux.recording.recorder import neuron_subset
from mlflow_flux.statistics import CHAINED

EPOCHS, STEPS, BATCH = 4, 3, 16
PER_NEURON_DEVICE_BYTES = 9 * 8 + 4  # the float64 sums (statistics.SUMS) and the float32 shift


class Checkpointed(nn.Module):
    """Two Linear layers inside torch.utils.checkpoint (non-reentrant), with a dropout before them whose mask the
    recomputation draws again (``preserve_rng_state=False``): counted twice, the activity would change."""

    def __init__(self, use_checkpoint: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.drop = nn.Dropout(0.5)
        self.hidden = nn.Linear(12, 10)
        self.out = nn.Linear(10, 3)
        self.use_checkpoint = use_checkpoint

    def block(self, x):
        return torch.relu(self.hidden(self.drop(torch.relu(x))))

    def forward(self, x):
        x = self.inp(x)
        if self.use_checkpoint:
            x = checkpoint(self.block, x, use_reentrant=False, preserve_rng_state=False)
        else:
            x = self.block(x)
        return self.out(x)


def test_a_checkpointed_forward_is_counted_once_with_the_forward_pass_values(store):
    torch.manual_seed(0)
    model = Checkpointed(use_checkpoint=True)
    seen = []  # the hidden layer's outputs in each step's forward pass (the recomputation comes second)
    calls = []
    model.hidden.register_forward_hook(lambda m, i, o: calls.append(o.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with mlflow.start_run() as run, mlflow_flux.watch(model, window=2, log_figures=False, explorer=False) as flux:
        for epoch in range(EPOCHS):
            outputs = []
            for _ in range(STEPS):
                calls.clear()
                optimizer.zero_grad()
                model(torch.randn(BATCH, 6)).pow(2).mean().backward()
                optimizer.step()
                assert len(calls) == 2  # the forward and its recomputation in backward
                outputs.append(calls[0])
            assert flux.recorder.samples_since_snapshot()["hidden"] == STEPS * BATCH
            seen.append(torch.cat(outputs).double())
            flux.end_epoch(epoch)
    trace = mlflow_flux.load_traces(run.info.run_id, layers=["hidden"])
    for epoch, outputs in enumerate(seen):
        rows = trace[trace.epoch == epoch].sort_values("neuron")
        np.testing.assert_allclose(rows.act_mean, outputs.mean(0).numpy(), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(rows.act_std, outputs.std(0, unbiased=False).numpy(), rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(rows.act_relu_mean, outputs.clamp(min=0).mean(0).numpy(), rtol=2e-6, atol=1e-7)


@pytest.mark.docstrings  # transformers builds its model classes from their docstrings
def test_transformers_gradient_checkpointing_counts_each_sample_once(store):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    plain = transformers.GPT2LMHeadModel(config)
    checkpointed = transformers.GPT2LMHeadModel(config)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tokens = torch.randint(0, 64, (EPOCHS, 4, 16), generator=torch.Generator().manual_seed(1))
    traces = []
    for model in (plain, checkpointed):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        with mlflow.start_run() as run:
            with mlflow_flux.watch(model, optimizer=optimizer, window=2, log_figures=False, explorer=False) as flux:
                for epoch in range(EPOCHS):
                    optimizer.zero_grad()
                    model(input_ids=tokens[epoch], labels=tokens[epoch]).loss.backward()
                    optimizer.step()
                    counted = flux.recorder.samples_since_snapshot()
                    assert counted["transformer.h.0.mlp.c_fc"] == 4 * 16, counted  # each token once
                    flux.end_epoch(epoch)
        traces.append(mlflow_flux.load_traces(run.info.run_id))
    columns = ["act_rate", "act_mean", "act_std", "act_relu_mean", "w_std", "grad_norm"]
    pd.testing.assert_frame_equal(traces[0][columns], traces[1][columns], rtol=1e-5, atol=1e-6)


def _train(seed: int, **options) -> str:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 3))
    data = torch.randn(EPOCHS, STEPS, BATCH, 5, generator=torch.Generator().manual_seed(seed + 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, summary_every=1, log_figures=False, explorer=False,
                               **options) as flux:
            for epoch in range(EPOCHS):
                for x in data[epoch]:
                    optimizer.zero_grad()
                    model(x).pow(2).mean().backward()
                    optimizer.step()
                flux.end_epoch(epoch)
    return run.info.run_id


def test_a_neuron_budget_records_a_fixed_subset_equal_to_the_whole_trace(store):
    whole = mlflow_flux.load_traces(_train(3))
    budgeted_id = _train(3, neuron_budget=10)
    budgeted = mlflow_flux.load_traces(budgeted_id)
    subset = neuron_subset("0", 40, 10)
    assert sorted(set(budgeted[budgeted.layer == "0"].neuron)) == subset.tolist()  # the true indices
    assert sorted(set(budgeted[budgeted.layer == "2"].neuron)) == [0, 1, 2]  # under the budget: whole
    kept = whole[(whole.layer == "2") | whole.neuron.isin(subset)].reset_index(drop=True)
    # Every column but the redundant-unit ones, which a layer under a budget does not get (a unit's partner may be
    # one the trace does not hold)
    columns = [c for c in kept.columns if c not in CHAINED]
    pd.testing.assert_frame_equal(budgeted.reset_index(drop=True)[columns], kept[columns])
    assert budgeted[budgeted.layer == "0"]["partner"].isna().all()
    # the summaries are over the recorded neurons: the logged metrics equal those of the budgeted trace
    expected = reshape.summaries_over_epochs(budgeted, window=2).iloc[-1]
    history = {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(budgeted_id, "flux/dead_frac")}
    assert history[EPOCHS - 1] == expected["all/dead_frac"]
    assert mlflow.get_run(budgeted_id).data.params["neuron_budget"] == "10"


def test_the_recorders_memory_is_per_neuron_on_the_device_and_the_copies_can_go(store):
    neurons, weights = 40 + 3, (40 * 5 + 3 * 40) * 4
    for options, host in (({}, 2 * weights), ({"w_step": False}, weights), ({"w_step": False, "w_dist0": False}, 0)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 3))
        with mlflow.start_run() as run:
            with mlflow_flux.watch(model, window=2, log_figures=False, explorer=False, **options) as flux:
                for epoch in range(3):
                    model(torch.randn(8, 5)).sum().backward()
                    flux.end_epoch(epoch)
                memory = flux.recorder.memory
        assert memory == {"device": PER_NEURON_DEVICE_BYTES * neurons, "host": host}, (options, memory)
        trace = mlflow_flux.load_traces(run.info.run_id)
        for column in ("w_step", "w_dist0"):
            assert trace[column].isna().all() == (options.get(column) is False), (options, column)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_watching_adds_per_neuron_state_only(store):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                          nn.Linear(2048, 512)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=False)
        model(torch.randn(64, 512, device="cuda")).pow(2).mean().backward()
        optimizer.step()

    step()  # gradients allocated: the baseline is a model in training
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    neurons = 2048 + 2048 + 512
    with mlflow.start_run(), mlflow_flux.watch(model, window=2, log_figures=False, explorer=False) as flux:
        for epoch in range(4):
            for _ in range(3):
                step()
            flux.end_epoch(epoch)
            torch.cuda.synchronize()
            extra = torch.cuda.memory_allocated() - baseline
            # the sums and shifts, and a snapshot's small per-neuron outputs; never a copy of a weight
            assert extra <= PER_NEURON_DEVICE_BYTES * neurons + 64 * neurons, (epoch, extra)
        assert flux.recorder.memory["device"] == PER_NEURON_DEVICE_BYTES * neurons
