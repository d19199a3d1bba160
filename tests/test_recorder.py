"""The recorder on models other than the autoencoder, checked against the test's own hooks and arithmetic."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

import mlflow_flux
from mlflow_flux import fluctuation
from mlflow_flux.errors import FluxError
from mlflow_flux.traces import read_trace_files

from .conftest import subprocess_env

SCRIPT = Path(__file__).parent / "scripts" / "watched_loop.py"


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = nn.Linear(4 * 6 * 6, 5, bias=False)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _expected_rows(model, outputs, grads, previous):
    """What the trace must hold for one epoch, computed independently of the recorder."""
    rows = {}
    for name, module in (("conv", model.conv), ("head", model.head)):
        w = module.weight.detach().reshape(module.weight.shape[0], -1).double()
        out = torch.cat(outputs[name]).double()
        out = out.transpose(0, 1).reshape(out.shape[1], -1) if out.dim() == 4 else out.T
        g = torch.stack([gr.reshape(gr.shape[0], -1).double().norm(dim=1) for gr in grads[name]])
        rows[name] = {
            "w_mean": w.mean(1), "w_std": w.std(1, unbiased=False), "w_norm": w.norm(dim=1),
            "w_step": (w - previous[name]).norm(dim=1) if name in previous else torch.full((w.shape[0],), np.nan),
            "bias": module.bias.detach().double().clone() if module.bias is not None else torch.full((w.shape[0],), np.nan),
            "act_mean": out.mean(1), "act_std": out.std(1, unbiased=False), "act_rate": (out > 0).double().mean(1),
            "grad_norm": g.pow(2).mean(0).sqrt(),
        }
        previous[name] = w.clone()
    return rows


# float32 runs on the C fast path where it is built; float64 and eval-mode passes go through its fallbacks.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_trace_values_equal_an_independent_computation(store, dtype):
    torch.manual_seed(0)
    model = SmallCNN().to(dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(24, 1, 8, 8, dtype=dtype)
    outputs, grads, previous, expected = {}, {}, {}, {}

    def keep(name):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():  # training passes only, as the recorder promises
                outputs.setdefault(name, []).append(output.detach().clone())
        return hook

    model.conv.register_forward_hook(keep("conv"))
    model.head.register_forward_hook(keep("head"))
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, flush_every=2) as flux:
            for epoch in range(3):
                outputs.clear()
                grads.clear()
                for batch in data.split(8):
                    optimizer.zero_grad()
                    model(batch).pow(2).mean().backward()
                    grads.setdefault("conv", []).append(model.conv.weight.grad.clone())
                    grads.setdefault("head", []).append(model.head.weight.grad.clone())
                    optimizer.step()
                with torch.no_grad():
                    model(data)  # an evaluation pass must not count as training activity
                model.eval()  # an eval-mode pass with gradients: its outputs do not count, its backward pass does
                optimizer.zero_grad()
                model(data).pow(2).mean().backward()
                grads["conv"].append(model.conv.weight.grad.clone())
                grads["head"].append(model.head.weight.grad.clone())
                model.train()
                expected[epoch] = _expected_rows(model, outputs, grads, previous)
                flux.end_epoch(epoch)
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert len(trace) == 3 * (4 + 5)
    for epoch, layers in expected.items():
        for name, columns in layers.items():
            rows = trace[(trace.epoch == epoch) & (trace.layer == name)].sort_values("neuron")
            for column, values in columns.items():
                np.testing.assert_allclose(rows[column].to_numpy(), values.numpy(), rtol=2e-5, atol=1e-6,
                                           err_msg=f"{column} of {name} at epoch {epoch}")


def _train_mlp(epochs, **watch_options):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    x = torch.randn(64, 10)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, **watch_options) as flux:
            for epoch in range(epochs):
                for batch in x.split(16):
                    optimizer.zero_grad()
                    nn.functional.mse_loss(model(batch), batch).backward()
                    optimizer.step()
                flux.end_epoch(epoch, {"loss/train": 0.0})
    return run.info.run_id, model


@pytest.mark.parametrize("summary_every, logged", [(1, list(range(3, 12))), (3, [3, 6, 9])])
def test_live_metrics_equal_the_offline_recomputation_to_the_last_digit(store, summary_every, logged):
    run_id, _ = _train_mlp(12, window=4, tau=0.02, flush_every=5, summary_every=summary_every)
    offline = fluctuation.summaries_over_epochs(mlflow_flux.load_traces(run_id), window=4, tau=0.02)
    assert offline.index.tolist() == list(range(3, 12))
    client = MlflowClient()
    for column in offline.columns:
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"flux/{column}")}
        assert history == offline[column].loc[logged].to_dict(), column


def test_load_traces_options(store):
    run_id, _ = _train_mlp(6, window=2, snapshot_every=2)
    full = mlflow_flux.load_traces(run_id)
    assert sorted(full.epoch.unique()) == [0, 2, 4]
    assert list(full.columns) == ["epoch", "layer", "neuron", "w_std", "bias", "act_rate", "w_step", "w_mean",
                                  "w_norm", "act_mean", "act_std", "grad_norm"]
    part = mlflow_flux.load_traces(run_id, layers=["2"], columns=["w_std"], epochs=slice(2, None))
    assert list(part.columns) == ["epoch", "layer", "neuron", "w_std"]
    assert set(part.layer.astype(str)) == {"2"} and sorted(part.epoch.unique()) == [2, 4] and len(part) == 2 * 16
    table = mlflow_flux.load_traces(run_id, epochs=[4], as_arrow=True)
    assert table.num_rows == 32 + 16 + 10 and table.schema.field("w_std").type == "float"
    params = MlflowClient().get_run(run_id).data.params
    assert params["flux.layers"] == "0,2,4" and params["flux.snapshot_every"] == "2"


def test_layer_selection_by_pattern_and_type(store):
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4))
    with mlflow.start_run():
        with mlflow_flux.watch(model, layers=[nn.Conv1d]) as flux:
            assert flux.recorder.layer_names == ["0"]
        with pytest.raises(FluxError, match="already holds a watcher's traces"):
            mlflow_flux.watch(model).start()
    with mlflow.start_run():
        with mlflow_flux.watch(model, layers=["[02]"]) as flux:
            assert flux.recorder.layer_names == ["0", "2"]


def test_bad_input_gives_one_clear_error_each(store):
    with pytest.raises(FluxError, match="no active MLflow run"):
        mlflow_flux.watch(nn.Linear(2, 2)).start()
    with mlflow.start_run() as run:
        with pytest.raises(FluxError, match="no Linear or Conv layer"):
            mlflow_flux.watch(nn.Sequential(nn.ReLU())).start()
        with pytest.raises(FluxError, match="matches no watchable layer.*watchable: 0, 1"):
            mlflow_flux.watch(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), layers=["decoder.*"]).start()
        with mlflow_flux.watch(nn.Linear(2, 2)) as flux:
            flux.end_epoch(3)
            with pytest.raises(FluxError, match=r"end_epoch\(3\) after end_epoch\(3\)"):
                flux.end_epoch(3)
            with pytest.raises(FluxError, match="epochs must increase"):
                flux.end_epoch(1)
    with pytest.raises(FluxError, match="no run with id 'nope'"):
        mlflow_flux.load_traces("nope")
    with mlflow.start_run() as empty:
        pass
    with pytest.raises(FluxError, match="has no traces"):
        mlflow_flux.load_traces(empty.info.run_id)
    with pytest.raises(FluxError, match="unknown trace column"):
        mlflow_flux.load_traces(run.info.run_id, columns=["loss"])


def test_non_finite_values_are_recorded_and_counted_not_raised(store):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 3)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, summary_every=1) as flux:
            for epoch in range(3):
                if epoch == 1:
                    with torch.no_grad():
                        model[0].weight[2, 0] = float("nan")
                model(x).sum().backward()
                flux.end_epoch(epoch)
    trace = mlflow_flux.load_traces(run.info.run_id)
    row = trace[(trace.epoch == 1) & (trace.layer == "0") & (trace.neuron == 2)]
    assert np.isnan(row.w_std.item())
    history = {m.step: m.value for m in MlflowClient().get_metric_history(run.info.run_id, "flux/nonfinite")}
    assert 0 not in history and history[1] > 0  # a clean snapshot before the first full window logs nothing


def test_duckdb_and_polars_read_the_trace_file(store, tmp_path):
    run_id, _ = _train_mlp(3, window=2)
    path = MlflowClient().download_artifacts(run_id, "traces/traces.parquet", str(tmp_path))
    expected = pd.read_parquet(path)
    duckdb = pytest.importorskip("duckdb")
    ((count, epochs),) = duckdb.sql(f"select count(*), count(distinct epoch) from read_parquet('{path}')").fetchall()
    assert (count, epochs) == (len(expected), 3)
    polars = pytest.importorskip("polars")
    frame = polars.read_parquet(path)
    assert frame.height == len(expected)
    np.testing.assert_array_equal(frame["w_std"].to_numpy(), expected["w_std"].to_numpy())


def _start_loop(store, tmp_path, flush_every, epochs=10_000):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path / "spool"), str(flush_every), str(epochs)],
        env=subprocess_env(store), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )


def _wait_for_epoch(process, epoch, timeout=120):
    deadline = time.monotonic() + timeout
    run_id, last = None, -1
    while last < epoch and time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("run "):
            run_id = line.split()[1]
        elif line.startswith("epoch "):
            last = int(line.split()[1])
    assert last >= epoch, "the training loop did not get that far"
    return run_id, last


def test_sigkill_leaves_every_epoch_but_the_last_flush_every_readable(store, tmp_path):
    flush_every = 3
    process = _start_loop(store, tmp_path, flush_every)
    run_id, last = _wait_for_epoch(process, 13)
    time.sleep(0.3)  # the background upload of the latest closed segment
    process.kill()
    process.wait()
    promised = set(range(last - flush_every + 1))
    local = read_trace_files(sorted((tmp_path / "spool" / "parts").glob("*.parquet"))).to_pandas()
    assert promised <= set(local.epoch)
    remote = mlflow_flux.load_traces(run_id)
    assert promised <= set(remote.epoch)
    assert len(remote) == len(set(remote.epoch)) * (16 + 4)


def test_ctrl_c_ends_the_run_killed_with_the_whole_trace(store, tmp_path):
    process = _start_loop(store, tmp_path, flush_every=50)
    run_id, last = _wait_for_epoch(process, 5)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    finished = max([last] + [int(line.split()[1]) for line in rest.splitlines() if line.startswith("epoch ")])
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    artifacts = {f.path for f in MlflowClient().list_artifacts(run_id, "traces")}
    assert "traces/traces.parquet" in artifacts
    assert set(mlflow_flux.load_traces(run_id).epoch) == set(range(finished + 1))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_does_not_grow_with_epochs(store):
    """800 more epochs of 1024 neurons would hold ~39 MB if snapshots were kept; the sink must stream them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 512), nn.ReLU(), nn.Linear(512, 512))
    x = torch.randn(8, 16)
    with mlflow.start_run():
        with mlflow_flux.watch(model, flush_every=10, log_figures=False) as flux:
            for epoch in range(900):
                model(x).sum().backward()
                flux.end_epoch(epoch)
                if epoch == 99:
                    early = _rss_bytes()
            late = _rss_bytes()
    assert late - early < 12 * 2**20, f"grew {(late - early) / 2**20:.1f} MiB over 800 epochs"


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
    import copy
    import io

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
