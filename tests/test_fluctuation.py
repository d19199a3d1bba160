"""Every summary against numbers worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from mlflow_flux import fluctuation as F
from mlflow_flux import reshape


def test_spread_of_the_spread_by_hand():
    # neuron 0: spreads 1, 2, 3 -> mean 2, population std sqrt(2/3); neuron 1: constant 4 -> 0
    spread = np.array([[1.0, 4.0], [2.0, 4.0], [3.0, 4.0]])
    np.testing.assert_allclose(F.window_std(spread), [np.sqrt(2 / 3), 0.0])
    np.testing.assert_allclose(F.relative_fluctuation(spread), [np.sqrt(2 / 3) / 2, 0.0])


def test_participation_needs_firing_and_enough_relative_fluctuation():
    spread = np.array([[[1.0, 1.0, 1.0, 0.0]], [[1.2, 1.2, 1.0, 0.0]]]).transpose(1, 0, 2)  # (1, W=2, N=4)
    act = np.array([[[0.5, 0.0, 0.5, 0.1]], [[0.0, 0.0, 0.5, 0.1]]]).transpose(1, 0, 2)
    stats = F.window_stats(spread, np.zeros_like(spread), act, tau=0.05)
    # rel of neuron 0 and 1: std(1, 1.2) / mean = 0.1 / 1.1 = 0.0909 >= 0.05
    np.testing.assert_allclose(stats["rel"][0], [0.1 / 1.1, 0.1 / 1.1, 0.0, 0.0])
    assert stats["fires"][0].tolist() == [True, False, True, True]
    assert stats["dead"][0].tolist() == [False, True, False, False]
    assert stats["participating"][0].tolist() == [True, False, False, False]


def test_bias_fluctuation_is_the_std_of_the_bias():
    bias = np.array([[[0.0, 1.0]], [[2.0, 1.0]]]).transpose(1, 0, 2)
    stats = F.window_stats(np.ones_like(bias), bias, np.ones_like(bias))
    np.testing.assert_allclose(stats["bias_fluct"][0], [1.0, 0.0])


def test_summary_pools_layers_for_all():
    def layer(spread_pair, rate, n):
        s = np.array([[spread_pair] * n]).transpose(0, 2, 1)  # (1, 2, n)
        return {"w_std": s, "bias": np.zeros_like(s), "act_rate": np.full_like(s, rate), "w_step": np.full((1, n), 0.5)}

    layers = {"a": layer((1.0, 2.0), 0.3, 2), "b": layer((1.0, 1.0), 0.0, 6)}
    out = F.summarize(layers, tau=0.1, layout=F.Layout(("a", "b"), network_units="all"))
    assert out["a/participating"][0] == 2 and out["b/participating"][0] == 0
    assert out["all/participating"][0] == 2 and out["all/participating_frac"][0] == 2 / 8
    assert out["b/dead_frac"][0] == 1.0 and out["all/dead_frac"][0] == 6 / 8
    assert out["a/sos_median"][0] == 0.5 and out["all/sos_median"][0] == 0.0
    assert out["all/w_step_median"][0] == 0.5
    # By default the network's readings count the hidden units: every layer but the last (the output layer).
    hidden = F.summarize(layers, tau=0.1)
    assert hidden["all/participating_frac"][0] == 1.0 and hidden["all/dead_frac"][0] == 0.0
    assert hidden["all/sos_median"][0] == 0.5 and hidden["b/dead_frac"][0] == 1.0


def test_every_network_reading_counts_the_same_units():
    # Three layers: the last is the output. Every network-level fraction counts the first two (8 units), whichever
    # reading: participation in both tau modes, dead, ReDo at 0 and tau, GraMa.
    rng = np.random.default_rng(3)
    layers = {}
    for name, n in (("h1", 5), ("h2", 3), ("out", 7)):
        s = rng.random((1, 4, n)) + 0.5
        layers[name] = {"w_std": s, "bias": np.zeros_like(s), "act_rate": (rng.random((1, 4, n)) > 0.4) * 1.0,
                        "act_relu_mean": rng.random((1, n)) * (rng.random((1, n)) > 0.3),
                        "grad_abs_mean": rng.random((1, n)), "grad_abs_last": rng.random((1, n))}
    hidden = {k: {c: v[..., :] for c, v in layers[k].items()} for k in ("h1", "h2")}
    out = F.summarize(layers, tau=0.05)
    alone = F.summarize(hidden, tau=0.05, layout=F.Layout(("h1", "h2"), network_units="all"))
    for key in ("participating_frac", "dead_frac", "redo_dormant_frac", "redo_dormant0_frac", "grama_dormant_frac"):
        assert out[f"all/{key}"][0] == alone[f"all/{key}"][0], key
    relative = F.Thresholds(tau_mode="relative", tau_relative=0.5)
    curve = F.participation_curve(layers, [relative])
    assert curve[0, 0] == F.summarize(hidden, relative, F.Layout(("h1", "h2"), network_units="all"))[
        "all/participating_frac"][0]
    # The output layer keeps its own line.
    alone_out = F.summarize({"out": layers["out"]}, tau=0.05)
    assert out["out/participating_frac"][0] == alone_out["out/participating_frac"][0]


def test_readings_on_relu_output_are_not_published_under_tanh():
    s = np.array([[[1.0, 1.0], [3.0, 1.0]]])
    layer = {"w_std": s, "bias": np.zeros_like(s), "act_rate": np.ones_like(s), "act_relu_mean": np.ones((1, 2)),
             "grad_abs_mean": np.array([[1.0, 0.0]])}
    out = F.summarize({"h": layer, "o": layer}, tau=0.1, layout=F.Layout(("h", "o"), ("tanh", None)))
    for key in ("participating_frac", "dead_frac", "redo_dormant_frac", "redo_dormant0_frac"):
        assert np.isnan(out[f"h/{key}"][0]) and np.isnan(out[f"all/{key}"][0]), key
    assert out["all/grama_dormant_frac"][0] == 0.5 and out["o/participating_frac"][0] == 0.5


def test_grama_as_its_authors_count_it():
    # GradientReDo._get_redo_masks: every layer, the output included, the last pass's |gradient|, a layer without a
    # gradient counted as not dormant; here layer "b" has no gradient.
    s = np.ones((1, 2, 3))
    last = {"a": np.array([[0.0, 1.0, 2.0]]), "b": np.full((1, 3), np.nan), "o": np.array([[0.05, 1.0, 1.0]])}
    layers = {k: {"w_std": s, "bias": s * 0, "act_rate": s, "grad_abs_last": v} for k, v in last.items()}
    out = F.summarize(layers)
    # a: scores 0, 1, 2 over their mean 1: one at or under 0.1; o: 0.05 / 0.683 = 0.073: one; b: none. 2 of 9.
    assert out["all/grama_ref_dormant_frac"][0] == 2 / 9 and out["b/grama_ref_dormant_frac"][0] == 0.0


def test_medians_skip_non_finite_values():
    s = np.array([[[1.0, np.nan, 1.0], [3.0, np.nan, 1.0]]])
    out = F.summarize({"x": {"w_std": s, "bias": np.full_like(s, np.nan), "act_rate": np.ones_like(s),
                             "w_step": np.array([[np.inf, 1.0, 3.0]])}})
    assert out["x/sos_median"][0] == 0.5
    assert np.isnan(out["x/bias_fluct_median"][0])
    assert out["x/w_step_median"][0] == 2.0


def test_one_window_equals_the_same_window_inside_a_stack():
    rng = np.random.default_rng(0)
    values = rng.random((40, 33)).astype(np.float32)
    stacked = F.window_std(F.windows_of(values, 10))
    for i in range(0, 31, 7):
        alone = F.window_std(values[i : i + 10][None])
        assert np.array_equal(stacked[i], alone[0])


def test_summaries_over_epochs_matches_summarize_on_each_window():
    rng = np.random.default_rng(1)
    epochs, n = 6, 4
    rows = []
    for e in range(epochs):
        for i in range(n):
            rows.append({"epoch": e, "layer": "fc", "neuron": i, "act_rate": float(i > 0),
                         **{c: rng.random() for c in F.INPUT_COLUMNS if c != "act_rate"}})
    trace = pd.DataFrame(rows).astype(dict.fromkeys(F.INPUT_COLUMNS, np.float32))
    table = reshape.summaries_over_epochs(trace, window=3, tau=0.01)
    assert table.index.tolist() == [2, 3, 4, 5]
    last = trace[trace.epoch >= 3]
    layer = {c: last.pivot(index="epoch", columns="neuron", values=c).to_numpy(np.float32)[None]
             for c in F.WINDOW_COLUMNS}
    layer.update({c: last[last.epoch == 5][c].to_numpy(np.float32)[None] for c in F.LAST_SNAPSHOT_COLUMNS})
    expected = F.summarize({"fc": layer}, tau=0.01)
    assert set(expected) == {f"{scope}/{key}" for scope in ("fc", "all") for key in F.SUMMARY_KEYS}
    for key, value in expected.items():
        assert table.loc[5, key] == value[0] and np.isfinite(value[0]), key
    # A trace written before the newer columns existed: their summaries are NaN, the others unchanged.
    old = reshape.summaries_over_epochs(trace[["epoch", "layer", "neuron", "w_std", "bias", "act_rate", "w_step"]], 3,
                                        0.01)
    assert np.isnan(old.loc[5, "all/participation_ratio"])
    assert old.loc[5, "all/sos_median"] == table.loc[5, "all/sos_median"]


def test_new_dynamics_summaries_equal_their_definitions():
    # Two neurons: act_std 2 and 1 give a participation ratio (4 + 1)^2 / (16 + 1); the relative update is the
    # median of w_step / w_norm; w_dist0 its median.
    layer = {c: np.ones((1, 2, 2)) for c in F.WINDOW_COLUMNS}
    layer |= {"w_step": np.array([[0.2, 0.3]]), "w_norm": np.array([[2.0, 1.0]]), "w_dist0": np.array([[1.0, 3.0]]),
              "act_std": np.array([[2.0, 1.0]])}
    out = F.summarize({"fc": layer})
    assert out["fc/participation_ratio"][0] == pytest.approx(25 / 17)
    assert out["fc/w_rel_step_median"][0] == pytest.approx((0.1 + 0.3) / 2)
    assert out["fc/w_dist0_median"][0] == pytest.approx(2.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="tau"):
        F.window_stats(np.ones((1, 2, 2)), np.ones((1, 2, 2)), np.ones((1, 2, 2)), tau=0)
    with pytest.raises(ValueError, match="window"):
        reshape.summaries_over_epochs(pd.DataFrame(), window=1)


def test_layer_arrays_fast_path_equals_the_sorting_path():
    rng = np.random.default_rng(2)
    rows = [{"epoch": e, "layer": layer, "neuron": i, "w_std": rng.random(), "bias": rng.random(),
             "act_rate": rng.random(), "w_step": rng.random()}
            for e in (0, 2, 4) for layer, n in (("b", 3), ("a", 2)) for i in range(n)]
    trace = pd.DataFrame(rows).astype(dict.fromkeys(("w_std", "bias", "act_rate", "w_step"), np.float32))
    fast_epochs, fast = reshape.layer_arrays(trace)
    slow_epochs, slow = reshape.layer_arrays(trace.sample(frac=1.0, random_state=0))  # shuffled: no fast path
    assert list(fast) == ["b", "a"] and fast_epochs.tolist() == slow_epochs.tolist() == [0, 2, 4]
    for name in fast:
        for column in fast[name]:
            np.testing.assert_array_equal(fast[name][column], slow[name][column])
    assert fast["b"]["w_std"].shape == (3, 3)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_window_stats_over_many_windows_in_blocks_equal_one_pass_bit_for_bit(monkeypatch, mode):
    # A whole trace's windows are worked in blocks of WINDOW_BLOCK values: each window's arithmetic is unchanged.
    rng = np.random.default_rng(7)
    spread = F.windows_of(np.abs(rng.normal(1, 0.2, (60, 9))).astype(np.float32), 5)
    bias = F.windows_of(rng.normal(0, 1, (60, 9)).astype(np.float32), 5)
    act = F.windows_of((rng.random((60, 9)) > 0.3).astype(np.float32) * rng.random((60, 9)), 5)
    thresholds = F.Thresholds(tau_mode=mode, tau_relative=1.0)
    whole = F.window_stats(spread, bias, act, thresholds, sizes=[4, 5])
    monkeypatch.setattr(F, "WINDOW_BLOCK", 5 * 9 * 7)  # 7 windows a block, the last one short
    blocks = F.window_stats(spread, bias, act, thresholds, sizes=[4, 5])
    assert whole.keys() == blocks.keys()
    for key in whole:
        np.testing.assert_array_equal(whole[key], blocks[key], err_msg=key)


@pytest.mark.parametrize("neurons", [1, 2, 7, 256])
def test_median_of_float32_values_equals_the_median_of_the_same_values_in_float64(neurons):
    # float32 is sorted and its middle pair averaged in float64; float64 partitioned once: both as numpy's median.
    rng = np.random.default_rng(neurons)
    values = rng.standard_normal((40, neurons)).astype(np.float32)
    values[3, 0] = values[3, -1]  # ties
    reference = np.median(values.astype(np.float64), axis=-1)
    for given in (values, values.astype(np.float64)):
        got = F.median(given)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, reference)
    with_nan = values.copy()
    with_nan[5, 0] = np.nan  # the slow path: the same numbers, NaN left out
    expected = np.nanmedian(with_nan.astype(np.float64), axis=-1)
    np.testing.assert_array_equal(F.median(with_nan), expected)


@pytest.mark.parametrize("mode", ["absolute", "relative"])
def test_participation_curve_is_summarize_under_each_threshold(mode):
    rng = np.random.default_rng(3)
    layers = {}
    for name, n in (("a", 5), ("b", 8)):
        spread = np.abs(rng.normal(1, 0.05, (4, 6, n))).astype(np.float32)  # 4 windows of 6 snapshots
        act = (rng.random((4, 6, n)) > 0.4).astype(np.float32)
        layers[name] = {"w_std": spread, "bias": np.zeros_like(spread), "act_rate": act}
    thresholds = [F.Thresholds(tau=t, tau_relative=r, tau_mode=mode) for t, r in ((1e-3, 0.3), (0.02, 1.0), (0.05, 2))]
    curve = F.participation_curve(layers, thresholds)
    assert curve.shape == (3, 4)
    for row, threshold in zip(curve, thresholds):
        np.testing.assert_array_equal(row, F.summarize(layers, threshold)["all/participating_frac"])
    assert len(set(curve[:, 0])) > 1  # the thresholds tell the neurons apart
