"""Metric names MLflow would refuse: mapped once, the same way every time, and never onto each other."""

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

import mlflow_flux
from mlflow_flux.errors import FluxError
from mlflow_flux.traces.metrics import LOST_METRICS_TAG
from mlflow_flux.traces.names import MetricNames, is_valid_key, sanitize_key


@pytest.mark.parametrize("name, key", [
    ("loss/train", "loss/train"),                       # valid names are kept as they are
    ("flux/block[0]/sos_median", "flux/block_0_/sos_median"),
    ("val acc%", "val acc_"),
    ("a//b/./c/../d/", "a/b/_/c/__/d"),
    ("/leading", "leading"),
    ("é/ü:ok", "é/ü:ok"),                                # MLflow takes any letter, and colons
])
def test_the_documented_mapping(name, key):
    assert sanitize_key(name) == key and is_valid_key(key)
    assert sanitize_key(key) == key  # stable: a mapped key maps to itself


def test_long_names_are_cut_with_a_hash_that_keeps_them_apart():
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(sanitize_key(a)) == 250 and is_valid_key(sanitize_key(a)) and sanitize_key(a) != sanitize_key(b)


def test_two_names_that_would_share_a_key_are_refused_naming_both():
    names = MetricNames()
    assert names.key("acc%") == "acc_"
    assert names.key("acc%") == "acc_"  # the same name again is fine
    with pytest.raises(FluxError, match=r"'acc%' and 'acc_' would both be logged as 'acc_'"):
        names.key("acc_")


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleDict({"[0]": nn.Linear(4, 8), "q k": nn.Linear(8, 2)})

    def forward(self, x):
        return self.block["q k"](torch.relu(self.block["[0]"](x)))


def test_odd_layer_and_metric_names_lose_no_metric(store):
    torch.manual_seed(0)
    model = Blocks()
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, summary_every=1, log_figures=False,
                               layer_metrics=True) as flux:
            for epoch in range(30):
                model(torch.randn(8, 4)).sum().backward()
                flux.end_epoch(epoch, {"loss/train": float(epoch), "val acc%": 0.5})
    client = MlflowClient()
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss/train")] == list(map(float, range(30)))
    assert len(client.get_metric_history(run.info.run_id, "val acc_")) == 30
    assert len(client.get_metric_history(run.info.run_id, "flux/block._0_/sos_median")) == 29
    assert len(client.get_metric_history(run.info.run_id, "flux/block.q k/participating")) == 29
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED" and LOST_METRICS_TAG not in finished.data.tags
    assert set(mlflow_flux.load_traces(run.info.run_id).layer.astype(str)) == {"block.[0]", "block.q k"}


def test_layers_whose_names_collide_as_keys_are_refused_at_watch(store):
    model = nn.ModuleDict({"a[0]": nn.Linear(2, 2), "a_0_": nn.Linear(2, 2)})
    with mlflow.start_run():
        with pytest.raises(FluxError, match="would both be logged as 'flux/a_0_/"):
            mlflow_flux.watch(model, layer_metrics=["sos_median"]).start()
        assert not model["a[0]"]._forward_hooks and "forward" not in model["a[0]"].__dict__  # nothing left attached
