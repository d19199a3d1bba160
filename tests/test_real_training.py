"""watch() on the models and loops people train: transformers, GPT-2's Conv1D, weight sharing, large offsets, mixed
precision with a GradScaler, gradient accumulation, torch.compile, a change of dtype, and CUDA where there is one.
Every test compares every trace column with tests/reference.py: plain torch hooks, float64 arithmetic."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mlflow_flux
from mlflow_flux.recording.layers import select_layers
from mlflow_flux.statistics import CHAINED
from tests.reference import Reference, TinyGPT, assert_trace_matches

pytestmark = pytest.mark.usefixtures("store")


def _watched_layers(model, layers=None) -> dict[str, nn.Module]:
    return {layer.name: layer.module for layer in select_layers(model, layers)}


def _train_tokens(model, epochs, steps, vocab, optimizer, flux, reference, context=16, batch=4):
    generator = torch.Generator().manual_seed(0)
    expected = {}
    for epoch in range(epochs):
        for _ in range(steps):
            idx = torch.randint(0, vocab, (batch, context), generator=generator)
            logits = model(idx)
            logits = getattr(logits, "logits", logits)
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), idx[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        expected[epoch] = reference.snapshot()
        flux.end_epoch(epoch)
    return expected


@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_a_transformer_block_stack_records_every_column(monkeypatch, fastpath):
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", fastpath)
    torch.manual_seed(0)
    model = TinyGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reference = Reference(_watched_layers(model))
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            expected = _train_tokens(model, 3, 3, 64, optimizer, flux, reference)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert set(trace.layer.astype(str)) == {"blocks.0.qkv", "blocks.0.proj", "blocks.0.fc", "blocks.0.out",
                                            "blocks.1.qkv", "blocks.1.proj", "blocks.1.fc", "blocks.1.out", "head"}
    assert_trace_matches(trace, expected)


@pytest.mark.docstrings
def test_gpt2_conv1d_neurons_are_columns_and_every_linear_map_is_watched():
    import transformers
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)  # built from a config: nothing is downloaded
    model.train()
    layers = _watched_layers(model)
    assert [name for name in layers if "h.0." in name] == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                                          "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    assert type(layers["transformer.h.0.attn.c_attn"]).__name__ == "Conv1D"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reference = Reference(layers)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            expected = _train_tokens(model, 2, 3, 50, optimizer, flux, reference)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert (trace[trace.layer == "transformer.h.0.attn.c_attn"].neuron.max() + 1) == 96  # 3 x n_embd columns
    assert_trace_matches(trace, expected)


def test_a_module_called_twice_per_step_adds_every_call():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 8)
            self.tied = nn.Linear(8, 8)  # applied twice per forward
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(torch.relu(self.tied(torch.relu(self.tied(torch.relu(self.inp(x)))))))

    torch.manual_seed(0)
    model = Shared()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference = Reference(_watched_layers(model))
    expected = {}
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(2):
                for x in torch.randn(4, 5, 6):
                    optimizer.zero_grad()
                    model(x).pow(2).mean().backward()
                    optimizer.step()
                expected[epoch] = reference.snapshot()
                flux.end_epoch(epoch)
    assert len(reference.outputs["tied"]) == 0  # cleared by each snapshot; 2 calls x 4 steps were counted
    assert_trace_matches(mlflow_flux.load_traces(run.info.run_id), expected)


@pytest.mark.parametrize("fastpath", ["1", "0"])
def test_outputs_with_a_large_common_offset_are_recorded_exactly(monkeypatch, fastpath):
    # E[x^2] - E[x]^2 over float32 sums recorded act_std 0.0 or 0.23 here, for a spread of 0.005.
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", fastpath)
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.mul_(1e-3)
        layer.bias.fill_(1000.0)
    reference = Reference({"Linear": layer})
    expected = {}
    with mlflow.start_run() as run:
        with mlflow_flux.watch(layer, window=2, log_figures=False) as flux:
            for epoch in range(3):
                for x in torch.randn(20, 64, 4):
                    layer(x).sum().backward()
                expected[epoch] = reference.snapshot()
                flux.end_epoch(epoch)
    trace = mlflow_flux.load_traces(run.info.run_id)
    spread = trace.act_std.to_numpy()
    assert (spread > 1e-4).all() and (spread < 1e-2).all()  # ~1e-3 around 1000: a few float32 steps apart
    assert_trace_matches(trace, expected, rtol=1e-4, atol=0, columns=["act_mean", "act_std", "act_rate"])


def test_amp_with_a_grad_scaler_records_unscaled_gradients_once_per_applied_step():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    reference = Reference(_watched_layers(model), gradients="manual")
    data = torch.randn(3, 4, 2, 16, 8)  # epochs x optimizer steps x micro-batches x batch x features
    applied = skipped = 0
    expected = {}
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, optimizer=optimizer, window=2, log_figures=False) as flux:
            for epoch, steps in enumerate(data):
                for step, micro_batches in enumerate(steps):
                    optimizer.zero_grad()
                    for x in micro_batches:  # gradient accumulation: two backward passes per optimizer step
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            loss = model(x).float().pow(2).mean()
                        scaler.scale(loss).backward()
                    if epoch == 1 and step == 2:
                        model[0].weight.grad[0, 0] = float("inf")  # this step the scaler must skip
                    scaler.unscale_(optimizer)
                    if all(torch.isfinite(p.grad).all() for p in model.parameters()):
                        reference.take_gradients()  # what the optimizer applies: unscaled, accumulated
                        applied += 1
                    else:
                        skipped += 1
                    scaler.step(optimizer)
                    scaler.update()
                expected[epoch] = reference.snapshot()
                flux.end_epoch(epoch)
    assert (applied, skipped) == (11, 1)
    # bfloat16 outputs are reduced exactly; the reference reads the same bfloat16 tensors in float64.
    assert_trace_matches(mlflow_flux.load_traces(run.info.run_id), expected, rtol=1e-4, atol=1e-6)


def test_long_training_shows_no_drift_between_the_fast_and_torch_paths(monkeypatch):
    traces = {}
    for fastpath in ("1", "0"):
        monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", fastpath)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16))
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        data = torch.randn(20, 20, 32, 16)
        with mlflow.start_run() as run:
            with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
                for epoch, steps in enumerate(data):  # 400 optimizer steps in 20 snapshots
                    for x in steps:
                        optimizer.zero_grad()
                        F.mse_loss(model(x), x).backward()
                        optimizer.step()
                    flux.end_epoch(epoch)
            traces[fastpath] = (mlflow_flux.load_traces(run.info.run_id), mlflow.get_run(run.info.run_id))
    (fast, fast_run), (plain, plain_run) = traces["1"], traces["0"]
    assert fast_run.data.params["flux.fastpath"] == "c" and plain_run.data.params["flux.fastpath"] == "torch"
    for column in fast.columns[3:]:
        np.testing.assert_allclose(fast[column], plain[column], rtol=2e-5, atol=1e-6, err_msg=column)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8))


def _train_mlp(model, steps_model, epochs=3, steps=4):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    data = torch.randn(epochs, steps, 16, 8, generator=torch.Generator().manual_seed(1))
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(epochs):
                for x in data[epoch]:
                    optimizer.zero_grad()
                    F.mse_loss(steps_model(x), x).backward()
                    optimizer.step()
                flux.end_epoch(epoch)
    return mlflow_flux.load_traces(run.info.run_id)


@pytest.mark.slow
def test_a_compiled_model_records_what_the_eager_one_does_without_recompiling():
    from torch._dynamo.utils import counters

    eager_model = _mlp()
    eager = _train_mlp(eager_model, eager_model)
    torch._dynamo.reset()
    counters.clear()
    model = _mlp()
    compiled = torch.compile(model)  # watch() is entered inside _train_mlp, before the first call compiles
    graphs = []

    def steps_model(x):
        out = compiled(x)
        graphs.append(counters["stats"]["unique_graphs"])
        return out

    trace = _train_mlp(model, steps_model, epochs=3, steps=4)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert graphs[2] == graphs[-1], graphs  # compiled once (and once more as the first window's shift is set)
    for column in eager.columns[3:]:
        if column in CHAINED:  # the chains are seen in an eager pass only; the compiled one has none to check
            assert trace[column].isna().all()
            continue
        np.testing.assert_allclose(trace[column], eager[column], rtol=1e-4, atol=1e-6, err_msg=column)


@pytest.mark.slow
def test_watch_after_the_model_was_compiled_and_run_also_records():
    torch._dynamo.reset()
    model = _mlp()
    compiled = torch.compile(model)
    compiled(torch.randn(4, 8)).sum().backward()  # compiled and run before watch()
    trace = _train_mlp(model, compiled, epochs=2, steps=3)
    assert np.isfinite(trace.act_mean).all() and (trace.groupby("epoch").size() == 40).all()


def test_a_model_changed_to_float64_after_watch_keeps_being_recorded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    reference = Reference(_watched_layers(model))
    expected = {}
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(3):
                if epoch == 1:
                    model.double()  # the C taps take float32 only: the torch path carries on
                x = torch.randn(16, 4, dtype=next(model.parameters()).dtype)
                model(x).sum().backward()
                expected[epoch] = reference.snapshot()
                flux.end_epoch(epoch)
    assert_trace_matches(mlflow_flux.load_traces(run.info.run_id), expected)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_on_cuda_a_step_never_waits_for_the_device_and_the_trace_matches():
    torch.manual_seed(0)
    model = TinyGPT().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    reference = Reference(_watched_layers(model))
    generator = torch.Generator(device="cuda").manual_seed(0)
    expected = {}
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(2):
                reference.remove() if epoch == 1 else None  # the reference's own clones sync; measure without
                torch.cuda.set_sync_debug_mode("error")  # any host synchronisation in a step raises
                try:
                    for _ in range(3):
                        idx = torch.randint(0, 64, (4, 16), device="cuda", generator=generator)
                        loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
                if epoch == 0:
                    expected[epoch] = reference.snapshot()
                flux.end_epoch(epoch)
    assert_trace_matches(mlflow_flux.load_traces(run.info.run_id), expected, rtol=1e-4, atol=1e-5)


@cuda
def test_a_model_moved_to_cuda_after_watch_keeps_being_recorded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
            for epoch in range(3):
                if epoch == 1:
                    model.cuda()
                device = next(model.parameters()).device
                model(torch.randn(16, 4, device=device)).sum().backward()
                flux.end_epoch(epoch)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert np.isfinite(trace.act_std).all() and set(trace.epoch) == {0, 1, 2}
