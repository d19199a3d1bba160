"""The literature's dormant-neuron measures (docs/metrics.md) against plain-torch implementations of their reference
formulas, on the same tensors: ReDo's tau-dormant fraction (Sokar et al. 2023, dopamine's ``estimate_neuron_score``)
on the post-activation outputs a forward hook sees, and GraMa's gradient-magnitude fraction (Liu et al. 2025) on the
incoming weights' gradients after each backward. Our metrics, the per-layer metrics and the report must all give
the fractions the references give.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

import mlflow_flux

EPOCHS, STEPS, BATCH = 4, 3, 32
TAU = 0.1


def redo_fraction(outputs: list[torch.Tensor], tau: float) -> tuple[int, int]:
    """Dopamine's score over the given post-activation tensors (all samples since the previous snapshot): mean
    |h| over the batch (and a conv's positions), divided by the layer's mean score + 1e-9; dormant iff <= tau."""
    h = torch.cat([o.double() for o in outputs])
    axes = [0, *range(2, h.ndim)]  # every axis but the neuron's (a conv's channel)
    score = h.abs().mean(dim=axes)
    score = score / (score.mean() + 1e-9)
    return int((score <= tau).sum()), score.numel()


def grama_fraction(gradients: list[torch.Tensor], tau: float) -> tuple[int, int]:
    """GraMa's score: each neuron's mean |dL/dW| over its incoming weights, here averaged over the backward passes
    since the previous snapshot; divided by the layer's mean + 1e-9; dormant iff <= tau."""
    per_pass = torch.stack([g.double().abs().flatten(1).mean(dim=1) for g in gradients])
    score = per_pass.mean(dim=0)
    score = score / (score.mean() + 1e-9)
    return int((score <= tau).sum()), score.numel()


class Probe:
    """Plain torch hooks: each activation's outputs and each watched layer's weight gradients, per snapshot.

    ``activations``: name -> (module, what of its output is h): a ReLU module's output as it is; relu of the output
    layer's own output, as ReDo's PyTorch reference hooks every Linear and Conv.
    """

    def __init__(self, activations: dict[str, tuple[nn.Module, object]], layers: dict[str, nn.Module]) -> None:
        self.outputs = {name: [] for name in activations}
        self.gradients = {name: [] for name in layers}
        for name, (module, h) in activations.items():
            module.register_forward_hook(
                lambda m, i, o, name=name, h=h: self.outputs[name].append(h(o.detach()).clone()))
        for name, module in layers.items():
            module.weight.register_hook(lambda g, name=name: self.gradients[name].append(g.detach().clone()))

    def take(self) -> tuple[dict, dict]:
        outputs, gradients = self.outputs, self.gradients
        self.outputs = {name: [] for name in outputs}
        self.gradients = {name: [] for name in gradients}
        return outputs, gradients


def _train(model: nn.Module, probe: Probe, x_shape: tuple[int, ...], **options) -> tuple[str, list[dict]]:
    """Train ``model`` in a new run, watched; per epoch, the references' fractions per layer."""
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    with mlflow.start_run() as run, mlflow_flux.watch(model, window=2, summary_every=1, layer_metrics=True,
                                                      log_figures=False, explorer=False, dormant_tau=TAU,
                                                      **options) as flux:
        for epoch in range(EPOCHS):
            for _ in range(STEPS):
                optimizer.zero_grad()
                model(torch.randn(BATCH, *x_shape)).pow(2).mean().backward()
                optimizer.step()
            expected.append(probe.take())
            flux.end_epoch(epoch)
    return run.info.run_id, expected


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def _check(run_id: str, expected: list, activation_of: dict[str, str], output_layer: str, killed: int) -> None:
    client = MlflowClient()
    for epoch in range(1, EPOCHS):  # summaries from the first full window (2 snapshots) on
        outputs, gradients = expected[epoch]
        totals = {"redo_dormant_frac": [0, 0], "redo_dormant0_frac": [0, 0], "grama_dormant_frac": [0, 0]}
        for layer, activation in activation_of.items():
            per_layer = {"redo_dormant_frac": redo_fraction(outputs[activation], TAU),
                         "redo_dormant0_frac": redo_fraction(outputs[activation], 0.0),
                         "grama_dormant_frac": grama_fraction(gradients[layer], TAU)}
            for key, (dormant, neurons) in per_layer.items():
                logged = _history(client, run_id, f"flux/{layer}/{key}")[epoch]
                assert logged == pytest.approx(dormant / neurons, abs=1e-12), (layer, key, epoch)
                if layer != output_layer:  # ReDo leaves the output layer out of the network's fraction
                    totals[key][0] += dormant
                    totals[key][1] += neurons
        # the check can fail
        assert totals["redo_dormant0_frac"][0] >= killed and totals["grama_dormant_frac"][0] >= killed
        for key, (dormant, neurons) in totals.items():
            assert _history(client, run_id, f"flux/{key}")[epoch] == pytest.approx(dormant / neurons, abs=1e-12)
    report = mlflow_flux.compare(experiment=client.get_run(run_id).info.experiment_id, log_run=False, explorer=False)
    (row,) = report.runs.to_dict("records")
    for key in ("redo_dormant_frac", "redo_dormant0_frac", "grama_dormant_frac"):
        assert row[f"all/{key}"] == _history(client, run_id, f"flux/{key}")[EPOCHS - 1], key


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _kill(linear: nn.Module, neurons: list[int]) -> None:
    """Neurons whose pre-activation is always negative: dormant at tau = 0, no gradient into their weights."""
    with torch.no_grad():
        linear.bias[neurons] = -100.0


def test_a_relu_mlp_has_the_reference_dormant_fractions(store):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    _kill(model[0], [1, 5, 9])
    _kill(model[2], [0])
    probe = Probe({"act1": (model[1], _same), "act3": (model[3], _same), "out": (model[4], torch.relu)},
                  {"0": model[0], "2": model[2], "4": model[4]})
    run_id, expected = _train(model, probe, (6,))
    _check(run_id, expected, {"0": "act1", "2": "act3", "4": "out"}, output_layer="4", killed=4)


def test_a_relu_cnn_counts_each_channel_as_one_neuron(store):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 4))
    _kill(model[0], [2, 3])
    probe = Probe({"act1": (model[1], _same), "act3": (model[3], _same), "out": (model[5], torch.relu)},
                  {"0": model[0], "2": model[2], "5": model[5]})
    run_id, expected = _train(model, probe, (1, 8, 8))
    _check(run_id, expected, {"0": "act1", "2": "act3", "5": "out"}, output_layer="5", killed=2)


def test_under_gelu_the_score_is_relu_of_the_pre_activation_as_documented(store):
    """docs/metrics.md: h is relu(output) of the watched layer whatever follows it, so a GELU neuron whose
    pre-activation stays negative is dormant at tau = 0, though |gelu| of it is small and not zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.GELU(), nn.Linear(10, 10), nn.GELU(), nn.Linear(10, 2))
    with torch.no_grad():
        model[0].bias[[0, 1]] = -3.0  # gelu(-3 +- a little) ~ -0.004: never exactly 0
    pre = {"0": [], "2": []}
    post = {"0": [], "2": []}
    for name in pre:
        model[int(name)].register_forward_hook(lambda m, i, o, name=name: pre[name].append(o.detach().clone()))
        model[int(name) + 1].register_forward_hook(lambda m, i, o, name=name: post[name].append(o.detach().clone()))
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with mlflow.start_run() as run, mlflow_flux.watch(model, window=2, summary_every=1, layer_metrics=True,
                                                      log_figures=False, explorer=False) as flux:
        for epoch in range(2):
            for name in pre:
                pre[name].clear()
                post[name].clear()
            for _ in range(STEPS):
                optimizer.zero_grad()
                model(torch.randn(BATCH, 6) * 0.1).pow(2).mean().backward()
                optimizer.step()
            flux.end_epoch(epoch)
    logged = _history(MlflowClient(), run.info.run_id, "flux/0/redo_dormant0_frac")[1]
    ours, neurons = redo_fraction([torch.relu(o) for o in pre["0"]], 0.0)
    on_gelu, _ = redo_fraction(post["0"], 0.0)
    assert ours >= 2 and logged == ours / neurons  # the two negative neurons are dormant at tau = 0 ...
    assert on_gelu == 0  # ... where |gelu(output)| would call none of them dormant
    assert np.isfinite(_history(MlflowClient(), run.info.run_id, "flux/grama_dormant_frac")[1])
