"""The recorder on models other than the autoencoder, checked against the test's own hooks and arithmetic."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

import mlflow_flux
from mlflow_flux import reshape
from mlflow_flux.errors import FluxError
from mlflow_flux.traces.reader import read_trace_files
from tests.helpers import default_sigint, subprocess_env, train_mlp

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
            "bias": (module.bias.detach().double().clone() if module.bias is not None
                     else torch.full((w.shape[0],), np.nan)),
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
                model.eval()  # an eval-mode pass with gradients (a saliency map): neither its outputs nor its
                optimizer.zero_grad()  # backward pass count
                model(data).pow(2).mean().backward()
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




@pytest.mark.parametrize("summary_every, logged", [(1, list(range(3, 12))), (3, [3, 6, 9])])
def test_live_metrics_equal_the_offline_recomputation_to_the_last_digit(store, summary_every, logged):
    run_id, _ = train_mlp(12, window=4, tau=0.02, flush_every=5, summary_every=summary_every, layer_metrics=True)
    offline = reshape.summaries_over_epochs(mlflow_flux.load_traces(run_id), window=4, tau=0.02)
    assert offline.index.tolist() == list(range(3, 12))
    client = MlflowClient()
    for column in offline.columns:
        key = "flux/" + column.removeprefix("all/")  # the whole network is flux/<summary>, a layer flux/<layer>/...
        history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        expected = offline[column].loc[logged].dropna().to_dict()  # what is not defined is not logged
        assert history == expected, column


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


def test_after_tanh_the_relu_readings_are_not_published_and_the_others_are(store):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with mlflow.start_run() as run, mlflow_flux.watch(model, optimizer=optimizer, window=2, summary_every=1,
                                                      log_figures=False, explorer=False, redundancy=True) as flux:
        for epoch in range(3):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
            flux.end_epoch(epoch)
    logged = set(MlflowClient().get_run(run.info.run_id).data.metrics)
    assert {"flux/grama_dormant_frac", "flux/sos_median", "flux/reduced_width_0"} <= logged
    assert not logged & {"flux/participating_frac", "flux/dead_frac", "flux/redo_dormant_frac"}, logged
    assert MlflowClient().get_run(run.info.run_id).data.params["flux.activations"] == "tanh*2,-"


def test_bad_input_gives_one_clear_error_each(store):
    with pytest.raises(FluxError, match="no active MLflow run"):
        mlflow_flux.watch(nn.Linear(2, 2)).start()
    with mlflow.start_run() as run:
        with pytest.raises(FluxError, match="has no layer to watch: mlflow-flux records Linear, Conv1d"):
            mlflow_flux.watch(nn.Sequential(nn.ReLU())).start()
        with pytest.raises(FluxError, match=r"matches no watchable layer.*watchable: 0, 1"):
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


def _start_loop(store, tmp_path, flush_every, epochs=10_000, *options: str):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path / "spool"), str(flush_every), str(epochs), *options],
        env=subprocess_env(store), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        preexec_fn=default_sigint,
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


@pytest.mark.slow
def test_sigkill_leaves_every_epoch_but_the_last_flush_every_readable(store, tmp_path):
    flush_every = 3
    process = _start_loop(store, tmp_path, flush_every)
    run_id, last = _wait_for_epoch(process, 13)
    promised = set(range(last - flush_every + 1))
    # Wait for the event, not for a guess at its time: the run lists the segments that hold the promised epochs.
    segments = -(-len(promised) // flush_every)
    deadline = time.monotonic() + 60
    while len(MlflowClient().list_artifacts(run_id, "traces/parts")) < segments and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    local = read_trace_files(sorted((tmp_path / "spool" / "parts").glob("*.parquet"))).to_pandas()
    assert promised <= set(local.epoch)
    remote = mlflow_flux.load_traces(run_id)
    assert promised <= set(remote.epoch)
    assert len(remote) == len(set(remote.epoch)) * (16 + 4)


@pytest.mark.slow
def test_sigkill_after_two_live_pages_leaves_the_page_its_tag_names(store, tmp_path):
    """The explorer page is refreshed while the run trains; a tag names the last snapshot of the page the store
    confirmed. Killed with no chance to close, the run still has that page."""
    from mlflow_flux.explorer.encoding import read_page
    from mlflow_flux.outputs.explorer import PAGE_SNAPSHOT_TAG

    process = _start_loop(store, tmp_path, 2, 10_000, "2")  # a page every 2 s, at a segment's end
    run_id, _ = _wait_for_epoch(process, 1)
    client = MlflowClient()
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while len(seen) < 2 and time.monotonic() < deadline:  # two confirmed refreshes, then at once the kill
        tag = client.get_run(run_id).data.tags.get(PAGE_SNAPSHOT_TAG)
        if tag is not None and (not seen or tag != seen[-1]):
            seen.append(tag)
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert len(seen) == 2, seen
    tag = client.get_run(run_id).data.tags[PAGE_SNAPSHOT_TAG]
    page = Path(client.download_artifacts(run_id, "explorer.html", str(tmp_path / "downloaded")))
    meta, _ = read_page(page.read_text(encoding="utf-8"))
    assert meta["live"]["snapshot"] == int(tag) >= int(seen[1]) > int(seen[0])
    assert meta["live"]["snapshots"] == int(tag) + 1  # every snapshot up to it, one per epoch
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing could end it: the page says how far it got


@pytest.mark.slow
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


@pytest.mark.slow
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




@pytest.mark.parametrize("options, message", [
    ({"layers": "enc"}, r"invalid value for 'layers': 'enc' \(expected a list, e\.g\. layers=\['enc'\]\)"),
    ({"layers": nn.Linear}, r"expected a list, e\.g\. layers=\[Linear\]"),
    ({"layers": []}, r"'layers': \[\] \(expected at least one name"),
    ({"layers": [3]}, r"'layers': 3 \(expected a name, a glob pattern or a module type\)"),
    ({"tau": "abc"}, r"'tau': 'abc' \(expected a positive number\)"),
    ({"tau": float("nan")}, r"'tau': nan"),
    ({"window": 1}, r"'window': 1 \(expected an integer >= 2\)"),
    ({"window": 2.5}, r"'window': 2\.5"),
    ({"flush_every": True}, r"'flush_every': True"),
    ({"log_figures": "no"}, r"'log_figures': 'no' \(expected True or False\)"),
    ({"upload_timeout": -1}, r"'upload_timeout': -1"),
])
def test_watch_options_are_type_checked_with_one_line_errors(options, message):
    with pytest.raises(FluxError, match=message) as raised:
        mlflow_flux.watch(nn.Linear(2, 2), **options)
    assert "\n" not in str(raised.value)


def test_a_model_that_is_not_a_module_and_bad_metrics_are_one_line_errors(store):
    with pytest.raises(FluxError, match=r"'model': 'str' \(expected a torch.nn.Module\)"):
        mlflow_flux.watch("model")
    with mlflow.start_run():
        with mlflow_flux.watch(nn.Linear(2, 2), log_figures=False) as flux:
            with pytest.raises(FluxError, match="metric 'acc' must be a number, got 'high'"):
                flux.end_epoch(0, {"acc": "high"})
            with pytest.raises(FluxError, match="takes metrics as a mapping"):
                flux.end_epoch(1, [("acc", 1.0)])
            flux.end_epoch(2, {"acc": np.float32(0.5), "n": torch.tensor(3)})  # numpy and torch scalars are numbers


def test_load_traces_arguments_are_type_checked(store):
    for options, message in (({"layers": "fc"}, "layers=\\['fc'\\]"), ({"columns": []}, "non-empty list"),
                             ({"epochs": "last"}, "slice, a range or a list")):
        with pytest.raises(FluxError, match=message):
            mlflow_flux.load_traces("0123456789abcdef", **options)
    with pytest.raises(FluxError, match="'run_id': None"):
        mlflow_flux.load_traces(None)


def test_a_watcher_closed_before_its_first_snapshot_keeps_nothing_and_warns_nothing(store, tmp_path, caplog):
    with mlflow.start_run() as run, mlflow_flux.watch(nn.Linear(3, 2), trace_dir=tmp_path / "spool") as flux:
        pass
    assert flux.result is not None and flux.result.kept_trace is None and not flux.result.offline
    assert not (tmp_path / "spool").exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "mlflow_flux" in r.name]
    assert MlflowClient().list_artifacts(run.info.run_id, "traces") == []


def test_watch_without_figures_never_imports_matplotlib(store):
    # matplotlib costs ~0.3 s of imports: a run that draws no figure must not pay them (a fresh interpreter, as
    # this test session has matplotlib loaded already).
    script = (
        "import sys, mlflow, torch, mlflow_flux\n"
        "with mlflow.start_run():\n"
        "    with mlflow_flux.watch(torch.nn.Linear(3, 2), log_figures=False) as flux:\n"
        "        flux.end_epoch(0, {'loss/train': 1.0})\n"
        "print('matplotlib' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=subprocess_env(store),
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"
