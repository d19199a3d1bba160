"""Recycling dormant neurons, against references written here: ReDo's masks and reset as google/dopamine's
weight_recyclers.py makes them, continual backprop's utility and choice from its formulas, a dead neuron that fires
again, the output unchanged by a reset whose outgoing weights are zero, resets recorded equal resets made, a dry run
that changes nothing, and the summaries read the reset table live and offline alike."""

import copy
import math

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

import mlflow_flux
from mlflow_flux import reshape
from mlflow_flux.errors import FluxError
from mlflow_flux.outputs.recycling import ContinualBackprop, LayerView
from mlflow_flux.recycling import ContributionUtility

STEPS, BATCH = 4, 16
DEAD = [2, 5]  # units of the first layer held dead by a large negative bias


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias[DEAD] = -100.0
    return model


def _train(model, epochs: int, optimizer=None, probe=None, **options):
    """Train ``model`` watched; ``probe(epoch, model, optimizer)`` runs before each end_epoch."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.randn(epochs, STEPS, BATCH, 4, generator=torch.Generator().manual_seed(7))
    with mlflow.start_run() as run, mlflow_flux.watch(model, optimizer=optimizer, window=2, summary_every=1,
                                                      log_figures=False, explorer=False, **options) as flux:
        for epoch in range(epochs):
            for x in data[epoch]:
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                optimizer.step()
            if probe is not None:
                probe(epoch, model, optimizer)
            flux.end_epoch(epoch)
    return run.info.run_id, optimizer


def _dopamine_masks(activations: list[torch.Tensor], tau: float) -> np.ndarray:
    """estimate_neuron_score and _score2mask: mean |h| over the samples, over its layer's mean + 1e-9, <= tau."""
    h = torch.cat(activations).double()
    score = h.abs().mean(0)
    score = score / (score.mean() + 1e-9)
    return (score <= tau).numpy()


def test_redo_resets_what_dopamine_resets_and_as_it_resets_it(store):
    model = _mlp()
    seen = []
    hook = model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()) if m.training else None)
    state = {}

    def probe(epoch, model, optimizer):
        state[epoch] = {"w0": model[0].weight.detach().clone(), "b0": model[0].bias.detach().clone(),
                        "w2": model[2].weight.detach().clone(), "mask": _dopamine_masks(seen, 0.1),
                        "b0_moment": optimizer.state[model[0].bias]["exp_avg"].clone(),
                        "step": optimizer.state[model[0].weight]["step"].clone()}
        seen.clear()

    run_id, optimizer = _train(model, 1, probe=probe, recycle="redo", recycle_period=1, recycle_tau=0.1)
    hook.remove()
    before, after = state[0], model
    expected = np.flatnonzero(before["mask"])
    assert set(DEAD) <= set(expected.tolist())  # the check can fail: the dead units are among them
    resets = mlflow_flux.load_resets(run_id)
    layer0 = resets[resets.layer == "0"]
    assert layer0.neuron.tolist() == expected.tolist() and set(resets.policy) == {"redo"}
    # Incoming weights: new, drawn from xavier_uniform's U(-b, b), b = sqrt(6 / (fan_in + fan_out)); the others kept.
    w0 = after[0].weight.detach()
    keep = np.setdiff1d(np.arange(8), expected)
    assert torch.equal(w0[keep], before["w0"][keep]) and not torch.equal(w0[expected], before["w0"][expected])
    bound = math.sqrt(6 / (4 + 8))
    assert w0[expected].abs().max() <= bound and w0[expected].std() > 0.1 * bound
    assert (after[0].bias.detach()[expected] == 0).all() and torch.equal(after[0].bias.detach()[keep],
                                                                         before["b0"][keep])
    # Outgoing weights zeroed in the next layer; the moments of both zeroed; the bias's moments and the step kept.
    assert (after[2].weight.detach()[:, expected] == 0).all()
    state0, state2 = optimizer.state[after[0].weight], optimizer.state[after[2].weight]
    for name in ("exp_avg", "exp_avg_sq"):
        assert (state0[name][expected] == 0).all() and (state0[name][keep] != 0).any()
        assert (state2[name][:, expected] == 0).all()
    assert torch.equal(optimizer.state[after[0].bias]["exp_avg"], before["b0_moment"])
    assert torch.equal(state0["step"], before["step"])
    assert (resets[resets.layer == "2"].neuron >= 0).all()  # the next hidden layer may reset too; the output never
    assert "4" not in set(resets.layer)


def test_a_dead_neuron_fires_again_after_its_reset(store):
    model = _mlp()
    probe = None
    run_id, _ = _train(model, 2, probe=probe, recycle="redo", recycle_period=1, recycle_tau=0.0)
    assert set(DEAD) <= set(mlflow_flux.load_resets(run_id).query("epoch == 0").neuron)
    trace = mlflow_flux.load_traces(run_id)
    rate = trace[(trace.layer == "0") & trace.neuron.isin(DEAD)].pivot(index="epoch", columns="neuron",
                                                                       values="act_rate")
    assert (rate.loc[0] == 0).all() and (rate.loc[1] > 0).all()  # dead before the reset, firing in the epoch after


def test_the_reset_leaves_the_output_as_it_was_at_the_reset_step(store):
    model = _mlp()
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(3))
    before = {}

    def probe(epoch, model, optimizer):
        before[epoch] = model(x).detach().clone()

    run_id, _ = _train(model, 1, probe=probe, recycle="redo", recycle_period=1, recycle_tau=0.0)
    assert set(mlflow_flux.load_resets(run_id).neuron) >= set(DEAD)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before[0], rtol=0, atol=1e-6)  # float32 rounding at most


def test_a_dry_run_records_the_same_choice_and_changes_nothing(store):
    plain = _mlp()
    _train(plain, 3)
    dry = _mlp()
    run_id, _ = _train(dry, 3, recycle="redo", recycle_period=1, recycle_tau=0.1, recycle_dry_run=True)
    for a, b in zip(plain.parameters(), dry.parameters()):
        assert torch.equal(a, b)  # bit for bit
    resets = mlflow_flux.load_resets(run_id)
    assert len(resets) and resets.dry_run.all() and set(DEAD) <= set(resets[resets.layer == "0"].neuron)


def test_resets_recorded_are_resets_made_and_summaries_read_them_live_and_offline(store):
    model = _mlp()
    weights = {}

    def probe(epoch, model, optimizer):
        weights[epoch] = model[0].weight.detach().clone()

    run_id, _ = _train(model, 4, probe=probe, recycle="redo", recycle_period=2, recycle_tau=0.1,
                       layer_metrics=["participating_frac", "dead_frac"])
    resets = mlflow_flux.load_resets(run_id)
    trace = mlflow_flux.load_traces(run_id)
    # The decision at epoch 1 changed exactly the recorded rows (seen in the trace's w_mean at epoch 2 vs 1 and the
    # weights before the next decision).
    # Training moves a weight by at most ~lr a step (Adam): a row redrawn from U(-0.7, 0.7) moves far more.
    made = set(np.flatnonzero((weights[2] - weights[1]).abs().amax(1).numpy() > 0.05).tolist())
    recorded = set(resets[(resets.layer == "0") & (resets.epoch == 1)].neuron.tolist())
    assert recorded and recorded == made
    assert set(mlflow_flux.load_resets(run_id).epoch) <= {1, 3}
    offline = reshape.summaries_over_epochs(trace, window=2, resets=resets)
    client = mlflow.MlflowClient()
    for key in ("participating_frac", "dead_frac"):
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"flux/0/{key}")}
        expected = offline[f"0/{key}"].dropna().to_dict()
        assert history == expected, key
    history = {m.step: m.value for m in client.get_metric_history(run_id, "flux/recycle/reset")}
    assert history[1] == len(resets[resets.epoch == 1])


def test_continual_backprops_utility_and_choice_from_its_formulas():
    # Two steps of u <- 0.5 u + 0.5 |h| mean|w_out| with |h| = (1, 2, 0, 4) and mean|w_out| = 0.5: u = 0.75 of it.
    utility = ContributionUtility.of(4)
    contribution = np.array([1.0, 2.0, 0.0, 4.0]) * 0.5
    utility.update(contribution, np.array([1.0, 2.0, 0.0, 4.0]), steps=2, decay=0.5)
    np.testing.assert_allclose(utility.util, 0.75 * contribution)
    np.testing.assert_allclose(utility.corrected(0.5), contribution)  # bias-corrected by 1 - 0.5^2
    assert utility.ages.tolist() == [2, 2, 2, 2]
    # rate 0.25 per unit and step, 4 eligible units, 2 steps: 2 replaced, the two of least utility
    assert utility.select(rate=0.25, maturity=1, steps=2, decay=0.5).tolist() == [0, 2]
    utility.restart(np.array([0, 2]))
    assert utility.ages.tolist() == [0, 2, 0, 2] and utility.util[[0, 2]].tolist() == [0.0, 0.0]
    # The policy on a layer: utility from act_relu_mean x the next layer's mean |w|, the next bias compensated by
    # the chosen units' mean activation times their outgoing weights.
    following = nn.Linear(4, 3)
    with torch.no_grad():
        following.weight.copy_(torch.tensor([[0.5, -0.5, 0.5, 0.5]] * 3))
    policy = ContinualBackprop(rate=0.25, maturity=0, decay=0.0)
    view = LayerView("h", {"act_relu_mean": np.array([1.0, 2.0, 0.0, 4.0])}, nn.Linear(2, 4), 0, following, 0,
                     steps=1, snapshot=1)
    choice = policy.choose(view)
    assert choice.units.tolist() == [2] and choice.scores.tolist() == [0.0]
    np.testing.assert_allclose(choice.compensation, [0.0, 0.0, 0.0])  # the chosen unit's mean activation is 0


def test_a_policy_without_a_next_layer_or_an_optimizer_is_refused_in_one_line(store):
    class Alone(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.b(self.a(x))

    model = Alone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with mlflow.start_run():
        with pytest.raises(FluxError, match=r"none is known after a; pass watch\(\.\.\., next_layers="):
            mlflow_flux.watch(model, optimizer=optimizer, recycle="redo").start()
        with pytest.raises(FluxError, match=r"recycle needs watch\(model, optimizer=optimizer\)"):
            mlflow_flux.watch(model, recycle="redo", next_layers={"a": "b"}).start()
        lbfgs = torch.optim.LBFGS(model.parameters())
        with pytest.raises(FluxError, match="for LBFGS pass watch"):
            mlflow_flux.watch(model, optimizer=lbfgs, recycle="cbp", next_layers={"a": "b"}).start()


def test_a_reset_does_not_recompile_a_compiled_model(store):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _mlp()
    compiled = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.randn(4, STEPS, BATCH, 4, generator=torch.Generator().manual_seed(7))
    graphs = []
    # The chains are declared: a compiled first pass cannot show them.
    links = {"activations": {"0": "relu", "2": "relu"}, "next_layers": {"0": "2", "2": "4"}}
    with mlflow.start_run(), mlflow_flux.watch(model, optimizer=optimizer, window=2, log_figures=False,
                                               explorer=False, recycle="redo", recycle_period=1, recycle_tau=0.1,
                                               **links) as flux:
        for epoch in range(4):
            for x in data[epoch]:
                optimizer.zero_grad()
                compiled(x).pow(2).mean().backward()
                optimizer.step()
                graphs.append(counters["stats"]["unique_graphs"])
            flux.end_epoch(epoch)
    assert graphs[STEPS * 2] == graphs[-1], graphs  # resets at every snapshot, no new graph after the first ones


def _amp_steps(model, optimizer, scaler, data, device, flux) -> list[float]:
    losses = []
    for epoch, batches in enumerate(data):
        for x in batches:
            optimizer.zero_grad()
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                loss = model(x.to(device)).float().pow(2).mean()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
        flux.end_epoch(epoch)
    return losses


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here (run where one is lent)"))])
def test_redo_under_amp_with_a_grad_scaler_resets_the_dead_and_trains_on(store, device):
    """Mixed precision (bfloat16 autocast) with a GradScaler: the reset finds the dead units from the unscaled
    statistics, the moments it zeroes are the optimizer's own, and training goes on with finite losses."""
    model = _mlp().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    data = torch.randn(3, STEPS, BATCH, 4, generator=torch.Generator().manual_seed(7))
    with mlflow.start_run() as run, mlflow_flux.watch(model, optimizer=optimizer, window=2, log_figures=False,
                                                      explorer=False, recycle="redo", recycle_period=1,
                                                      recycle_tau=0.0) as flux:
        losses = _amp_steps(model, optimizer, scaler, data, device, flux)
    resets = mlflow_flux.load_resets(run.info.run_id)
    assert set(DEAD) <= set(resets[(resets.layer == "0") & (resets.epoch == 0)].neuron)
    trace = mlflow_flux.load_traces(run.info.run_id)
    rate = trace[(trace.layer == "0") & trace.neuron.isin(DEAD)].pivot(index="epoch", columns="neuron",
                                                                       values="act_rate")
    assert (rate.loc[0] == 0).all() and (rate.loc[1] > 0).all()
    assert all(math.isfinite(v) for v in losses) and scaler.get_scale() > 0
    gradients = trace[trace.layer == "0"].grad_abs_mean.to_numpy()
    assert np.isfinite(gradients).all() and gradients.max() < 10  # unscaled: the scale (1024) divided out


def test_the_documented_custom_policy_runs_and_resets_what_it_chose(store):
    """docs/recycling.md's own policy: its block runs as written, and used on a network with dead units it resets
    them (their gradient is 0) and records its score."""
    import re

    from tests.helpers import ROOT

    text = (ROOT / "docs" / "recycling.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class GradientDormant" in b]
    model = _mlp()
    namespace = {"mlflow": mlflow, "mlflow_flux": mlflow_flux, "model": model,
                 "optimizer": torch.optim.Adam(model.parameters(), lr=1e-2)}
    exec(compile(block, "docs/recycling.md", "exec"), namespace)  # the docs' own example, run as written
    from mlflow_flux.outputs.recycling import Recycling

    model = _mlp()
    policy = namespace["GradientDormant"]()
    policy.period = 1
    run_id, _ = _train(model, 2, outputs=[Recycling(policy, seed=0)])
    resets = mlflow_flux.load_resets(run_id)
    first = resets[(resets.epoch == 0) & (resets.layer == "0")]
    assert set(DEAD) <= set(first.neuron) and (first.policy == "grad_dormant").all() and (first.score <= 0.01).all()


def test_only_layers_whose_next_layer_is_known_are_reset_and_a_warning_names_the_others(store, caplog):
    """As in a transformer: the MLP's input layer is given its next layer; a layer whose output feeds a residual sum
    has none, and is not reset (one warning line names it)."""

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(torch.relu(self.b(h)) + h)

    torch.manual_seed(0)
    model = Residual()
    with torch.no_grad():
        model.a.bias[DEAD] = -100.0
    with caplog.at_level("WARNING", logger="mlflow_flux"):
        run_id, _ = _train(model, 1, recycle="redo", recycle_period=1, recycle_tau=0.0,
                           activations={"a": "relu"}, next_layers={"a": "b"})
    assert [r.getMessage() for r in caplog.records if "recycle resets" in r.getMessage()] == [
        f"run {run_id}: recycle resets 1 layer; not b (no next layer known: watch(next_layers=...) names one)"]
    resets = mlflow_flux.load_resets(run_id)
    assert set(resets.layer) == {"a"} and set(DEAD) <= set(resets.neuron)


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_shrink_and_perturb_scales_every_layer_and_adds_a_draw_of_its_initialisation(store, noise):
    """Ash & Adams's theta <- shrink theta + noise eps, on every watched layer (the output too), eps drawn as the
    layer's reset_parameters draws (U(-b, b), b = 1/sqrt(fan_in)); one row per layer in the reset table."""
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = torch.randn(BATCH, 4, generator=torch.Generator().manual_seed(1))
    layers = {"0": model[0], "2": model[2], "4": model[4]}
    with mlflow.start_run() as run, mlflow_flux.watch(model, optimizer=optimizer, window=2, summary_every=1,
                                                      log_figures=False, explorer=False, recycle="shrink_perturb",
                                                      recycle_period=1, recycle_shrink=0.5,
                                                      recycle_noise=noise) as flux:
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        before = {name: (m.weight.detach().clone(), m.bias.detach().clone()) for name, m in layers.items()}
        flux.end_epoch(0)
    for name, module in layers.items():
        bound = 1 / math.sqrt(module.weight.shape[1])
        for after, old in zip((module.weight, module.bias), before[name]):
            if noise == 0:
                assert torch.equal(after.detach(), old * 0.5)  # bit for bit: nothing added
            else:
                eps = (after.detach() - old * 0.5) / noise
                assert eps.abs().max() <= bound * (1 + 1e-4) and (eps != 0).all()  # a draw of U(-b, b)
        if noise:
            eps = (module.weight.detach() - before[name][0] * 0.5) / noise
            assert eps.std() > bound / 4  # U(-b, b) has std b/sqrt(3); not a constant or a tiny draw
    resets = mlflow_flux.load_resets(run.info.run_id)
    assert sorted(resets.layer) == ["0", "2", "4"] and (resets.neuron == -1).all()
    assert np.allclose(resets.score, 0.5) and (resets.policy == "shrink_perturb").all()


def _conv1d(nf: int, nx: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(nf, nx)  # transformers' layout: weight (nx, nf), a unit per column


@pytest.mark.parametrize("optimizer_kind", ["adam", "sgd"])
@pytest.mark.parametrize("init", ["xavier_uniform", "default"])
@pytest.mark.parametrize("layer", ["conv1d", "linear", "conv2d"])
def test_the_one_sweep_reset_writes_exactly_what_the_separate_writes_write(layer, init, optimizer_kind):
    """reset_incoming_in_c against new_incoming + reset_incoming + the copies taken from the weight as it ends:
    the same draws, bit for bit, in the weight, the bias, the moments and the recorder's copies; the other units,
    and the step count, untouched."""
    from mlflow_flux.recording import fastpath as kernels
    from mlflow_flux.recording.resets import new_incoming, reset_draws, reset_incoming, reset_incoming_in_c

    if kernels.fastpath() is None:
        pytest.skip("the C extension is not built")
    torch.manual_seed(0)
    # Five inputs and three units: an odd number of 32-bit draws for the Linear and the Conv1D (the last 64 bits'
    # high half left unused), an even one for the Conv2d.
    module = {"conv1d": lambda: _conv1d(12, 5), "linear": lambda: nn.Linear(5, 12),
              "conv2d": lambda: nn.Conv2d(3, 12, 2)}[layer]()
    axis = 1 if layer == "conv1d" else 0
    optimizer = (torch.optim.Adam(module.parameters(), lr=1e-2) if optimizer_kind == "adam" else
                 torch.optim.SGD(module.parameters(), lr=1e-2, momentum=0.9))
    x = torch.randn(5, 3, 4, 4) if layer == "conv2d" else torch.randn(5, 5)
    module(x).pow(2).mean().backward()
    optimizer.step()
    units = torch.tensor([0, 4, 11])
    copies = (module.weight.detach().clone() + 1, module.weight.detach().clone() - 1)

    def snapshot():
        state = optimizer.state[module.weight]
        return {"weight": module.weight.detach().clone(), "bias": module.bias.detach().clone(),
                **{name: value.clone() for name, value in state.items()}}

    by_unit = (lambda t: t.t()) if axis == 1 else (lambda t: t.reshape(t.shape[0], -1))
    before = snapshot()
    twin = copy.deepcopy(module)
    twin_optimizer = type(optimizer)(twin.parameters(), **optimizer.defaults)
    twin_optimizer.load_state_dict(optimizer.state_dict())
    twin_draws, draws = reset_draws(3, 1, 2), reset_draws(3, 1, 2)
    rows, bias = new_incoming(twin, axis, len(units), init, twin_draws)
    reset_incoming(twin, axis, units, rows, bias, twin_optimizer, reset_bias_moments=False)
    twin_copies = tuple(c.clone() for c in copies)
    for twin_copy in twin_copies:  # restart_units: the copies take the reset units' weights as they end
        by_unit(twin_copy)[units] = by_unit(twin.weight.detach())[units]

    assert reset_incoming_in_c(module, axis, units, init, draws, optimizer, copies, reset_bias_moments=False)
    after = snapshot()
    assert draws.state == twin_draws.state  # the sweep drew what new_incoming drew, from the same stream
    assert torch.equal(after["weight"], twin.weight) and torch.equal(after["bias"], twin.bias)
    for got, expected in zip(copies, twin_copies):
        assert torch.equal(got, expected)
    twin_state = twin_optimizer.state[twin.weight]
    for name, value in optimizer.state[module.weight].items():
        assert torch.equal(value, twin_state[name]), name
    # What the sweep wrote, on its own terms: the reset units' entries new, zero moments; every other entry kept.
    kept = torch.ones(12, dtype=torch.bool)
    kept[units] = False
    assert torch.equal(by_unit(after["weight"])[kept], by_unit(before["weight"])[kept])
    assert not torch.equal(by_unit(after["weight"])[units], by_unit(before["weight"])[units])
    for name in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        if name in after:
            assert (by_unit(after[name])[units] == 0).all() and torch.equal(by_unit(after[name])[kept],
                                                                            by_unit(before[name])[kept])
    if "step" in after:
        assert torch.equal(after["step"], before["step"])


@pytest.mark.parametrize("kept", [("w_step", "w_dist0"), ("w_step",), ("w_dist0",)])
def test_a_reset_units_distances_count_from_its_new_weights(store, kept):
    """GPT-2's MLP as transformers builds it (Conv1D maps, units in columns; c_fc given c_proj as its next layer): a
    reset writes the initial copy in its own sweep and the next snapshot reads the step from it, so w_dist0 and
    w_step at the next snapshot are a reset unit's distances from its new weights, and every other unit's from its
    old ones (float64 reference). With one of the two recorded, its copy alone takes the new weights."""
    torch.manual_seed(0)

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc, self.c_proj = _conv1d(16, 6), _conv1d(6, 16)

        def forward(self, x):
            return self.c_proj(torch.relu(self.c_fc(x)))

    model = Mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.randn(3, STEPS, BATCH, 6, generator=torch.Generator().manual_seed(7))
    starts = []  # c_fc's weights as each epoch begins: after the previous epoch's reset
    with mlflow.start_run() as run, mlflow_flux.watch(model, optimizer=optimizer, window=2, summary_every=1,
                                                      log_figures=False, explorer=False, recycle="redo",
                                                      recycle_period=1, recycle_tau=1.0,
                                                      next_layers={"c_fc": "c_proj"}, w_step="w_step" in kept,
                                                      w_dist0="w_dist0" in kept) as flux:
        for epoch in range(3):
            starts.append(model.c_fc.weight.detach().double().t().clone())  # a row per unit
            for x in data[epoch]:
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                optimizer.step()
            ends = model.c_fc.weight.detach().double().t().clone()  # what the snapshot reads (then it resets)
            flux.end_epoch(epoch)
    resets = mlflow_flux.load_resets(run.info.run_id)
    reset_at_1 = resets[(resets.layer == "c_fc") & (resets.epoch == 1)].neuron.to_numpy()
    assert 0 < len(reset_at_1) < 16  # tau 1.0: the units below their layer's mean activity, not all
    trace = mlflow_flux.load_traces(run.info.run_id)
    last = trace[(trace.layer == "c_fc") & (trace.epoch == 2)].sort_values("neuron")
    # w_step at epoch 2: from the weights epoch 2 began with (the reset's for reset units; the snapshot's for the
    # others: the same, as nothing moves them between the snapshot and the next step).
    if "w_step" in kept:
        np.testing.assert_allclose(last.w_step.to_numpy(), (ends - starts[2]).norm(dim=1).numpy(), rtol=1e-5,
                                   atol=1e-7)
    else:
        assert last.w_step.isna().all()
    if "w_dist0" not in kept:
        assert last.w_dist0.isna().all()
        return
    reset_first = set(resets[(resets.layer == "c_fc") & (resets.epoch == 0)].neuron)
    untouched = [u for u in range(16) if u not in reset_first and u not in set(reset_at_1)]
    from_reset = (ends - starts[2]).norm(dim=1).numpy()
    from_start = (ends - starts[0]).norm(dim=1).numpy()
    dist0 = last.w_dist0.to_numpy()
    np.testing.assert_allclose(dist0[reset_at_1], from_reset[reset_at_1], rtol=1e-5, atol=1e-7)
    if untouched:
        np.testing.assert_allclose(dist0[untouched], from_start[untouched], rtol=1e-5, atol=1e-7)
