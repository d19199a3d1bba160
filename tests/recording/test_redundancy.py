"""Redundant units against references written here: planted duplicates and a zero fan-out in a ReLU MLP, found by
the recorder and by brute-force numpy cosines alike, and merging what it reports keeps the network's output; a
negated tanh pair is redundant and a proportional one is not; chains found from the modules and the training pass."""

import mlflow
import numpy as np
import torch
from torch import nn

import mlflow_flux
from mlflow_flux.recording.redundancy import unit_redundancy
from mlflow_flux.reducibility import reduced_widths


def _planted_relu_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        first, second = model[0], model[2]
        first.weight[5] = 2.5 * first.weight[1]  # unit 5 = 2.5 x unit 1: relu(2.5 z) = 2.5 relu(z)
        first.bias[5] = 2.5 * first.bias[1]
        second.weight[:, 3] = 0.0  # unit 3 reaches nothing
    return model


def _brute_force_partners(weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.concatenate([weight, bias[:, None]], axis=1).astype(np.float64)
    cos = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    np.fill_diagonal(cos, -np.inf)
    partner = cos.argmax(axis=1)
    return partner, 1 - cos[np.arange(len(v)), partner]


def test_planted_duplicates_and_a_zero_fan_out_are_found_and_merging_keeps_the_output(store):
    model = _planted_relu_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay as planted
    x = torch.randn(32, 6)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False, explorer=False, redundancy=True) as flux:
            for epoch in range(2):
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                optimizer.step()
                flux.end_epoch(epoch)
    trace = mlflow_flux.load_traces(run.info.run_id)
    hidden = trace[(trace.epoch == 1) & (trace.layer == "0")].sort_values("neuron")
    partner = hidden["partner"].to_numpy()
    distance = hidden["partner_distance"].to_numpy()
    fanout = hidden["fanout_rel"].to_numpy()
    assert {int(partner[5]), int(partner[1])} == {1, 5} and distance[1] <= 1e-7 and distance[5] <= 1e-7
    assert fanout[3] == 0.0 and (np.delete(fanout, 3) > 0).all()
    weight, bias = model[0].weight.detach().numpy(), model[0].bias.detach().numpy()
    expected_partner, expected_distance = _brute_force_partners(weight, bias)
    np.testing.assert_allclose(distance, expected_distance, atol=1e-6)
    # Units 1 and 5 point the same way: any unit is as close to one as to the other, and either is its partner.
    same = {1: 5, 5: 1}
    assert all(p == e or same.get(p) == e for p, e in zip(partner.astype(int), expected_partner))
    assert (trace[trace.layer == "2"]["partner"].isna()).all()  # the output layer: no activation known after it
    # eps = 0: the duplicate merges, the zero fan-out unit goes: 8 - 1 - 1 units left.
    (widths,) = reduced_widths(partner[None], distance[None], fanout[None], hidden["w_norm"].to_numpy()[None], [8],
                               [0.0])
    assert widths[0].tolist() == [6.0]
    # Merging the reported partner (its outgoing weights scaled in) and dropping the dead-end unit keeps the output.
    with torch.no_grad():
        w1, b1, w2, b2 = (t.clone() for t in (model[0].weight, model[0].bias, model[2].weight, model[2].bias))
        keep = [i for i in range(8) if i not in (3, 5)]
        w2[:, 1] += 2.5 * w2[:, 5]
        reduced = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
        reduced[0].weight.copy_(w1[keep])
        reduced[0].bias.copy_(b1[keep])
        reduced[2].weight.copy_(w2[:, keep])
        reduced[2].bias.copy_(b2)
        np.testing.assert_allclose(reduced(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_tanh_merges_equal_or_opposite_units_and_not_proportional_ones():
    torch.manual_seed(1)
    weight = torch.randn(5, 4)
    bias = torch.randn(5)
    weight[3], bias[3] = -weight[0], -bias[0]  # tanh(-z) = -tanh(z): one unit, its outgoing weight negated
    weight[4], bias[4] = 2 * weight[1], 2 * bias[1]  # tanh(2z) != 2 tanh(z): not redundant
    partner, distance, _ = unit_redundancy(weight, bias, "tanh", None).numpy()
    assert int(partner[3]) == 0 and distance[3] <= 1e-7
    assert distance[4] > 0.1
    relu_partner, relu_distance, _ = unit_redundancy(weight, bias, "relu", None).numpy()
    assert int(relu_partner[4]) == 1 and relu_distance[4] <= 1e-7  # under ReLU the proportional pair merges
    assert relu_distance[3] > 0.01  # and the opposite pair is no pair (cos = -1 between them)


def test_redundancy_is_computed_in_blocks_equal_to_one_block():
    torch.manual_seed(2)
    weight, bias, outgoing = torch.randn(300, 17), torch.randn(300), torch.randn(300, 4)
    whole = unit_redundancy(weight, bias, "relu", outgoing, chunk_elements=1 << 30)
    blocks = unit_redundancy(weight, bias, "relu", outgoing, chunk_elements=1000)
    np.testing.assert_array_equal(whole.numpy(), blocks.numpy())


def test_chains_are_found_across_modules_and_checked_by_the_training_pass(store):
    from mlflow_flux.study.model import Autoencoder

    model = Autoencoder(16, (8, 4, 2), activation="tanh")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with mlflow.start_run() as run:
        with mlflow_flux.watch(model, window=2, log_figures=False, explorer=False, redundancy=True) as flux:
            optimizer.zero_grad()
            x = torch.rand(4, 16)
            (model(x) - x).pow(2).mean().backward()
            optimizer.step()
            flux.end_epoch(0)
            assert flux.recorder.activations == ("tanh",) * 5 + ("sigmoid",)
            assert flux.recorder.link("encoder.fc3").next == "decoder.fc1"  # across the two Sequentials
    assert mlflow.get_run(run.info.run_id).data.params["flux.activations"] == "tanh*5,sigmoid"


def test_a_module_order_the_forward_pass_contradicts_is_dropped(store, caplog):
    class Skipping(nn.Module):  # fc1, act, fc2 registered in order, but fc2 reads x, not act(fc1(x))
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)

        def forward(self, x):
            return self.fc2(x) + self.act(self.fc1(x))

    model = Skipping()
    with mlflow.start_run():
        with mlflow_flux.watch(model, window=2, log_figures=False, explorer=False, redundancy=True) as flux:
            model(torch.randn(2, 3)).sum().backward()
            flux.end_epoch(0)
            assert flux.recorder.link("fc1") is None and flux.recorder.activations == (None, None)
    assert "does not hold" in caplog.text
