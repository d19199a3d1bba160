"""The explorer's pooling and encoding are pure functions: checked here against numpy and the fluctuation module's
own definitions, fed the way a trace is read (chunks of snapshots) and all at once."""

from __future__ import annotations

import numpy as np
import pytest

from mlflow_flux import fluctuation
from mlflow_flux.explorer.encoding import RELATIVE_RESOLUTION, Blob, from_bfloat16, read_page, to_bfloat16
from mlflow_flux.explorer.pooling import (
    BANDS,
    DEAD,
    FROZEN,
    NEVER,
    PARTICIPATING,
    TracePooler,
    bin_width,
    pooled_means,
    states_of,
)

COLUMNS = ("w_std", "bias", "act_rate", "w_step", "w_norm", "w_dist0", "act_std")


def _trace(epochs: int, widths: dict[str, int], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A synthetic trace: per layer (epochs, neurons) columns with dead, frozen and participating neurons."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, width in widths.items():
        arrays = {c: rng.normal(1.0, 0.3, (epochs, width)).astype(np.float32) for c in COLUMNS}
        arrays["w_std"] = np.abs(arrays["w_std"]) + 0.1
        arrays["act_rate"] = rng.uniform(0, 1, (epochs, width)).astype(np.float32)
        arrays["act_rate"][:, 0] = 0.0  # neuron 0 is dead throughout
        arrays["act_rate"][epochs // 2:, 1] = 0.0  # neuron 1 dies half-way
        arrays["w_std"][:, 2] = 0.5  # neuron 2 fires but never moves: frozen
        arrays["w_std"][epochs // 3:, 3] = 0.7  # neuron 3 stops moving a third of the way in
        arrays["w_step"][0] = np.nan  # the first snapshot has no step
        out[name] = arrays
    return out


def _pool(trace, epochs, window=4, tau=1e-3, chunk=None, **options) -> TracePooler:
    layers = [(name, np.arange(arrays["w_std"].shape[1])) for name, arrays in trace.items()]
    pooler = TracePooler(layers, epochs, COLUMNS, window, tau, **options)
    steps = list(range(0, epochs, chunk or epochs)) + [epochs]
    for a, b in zip(steps[:-1], steps[1:]):
        chunk_arrays = {name: {c: v[a:b] for c, v in arrays.items()} for name, arrays in trace.items()}
        pooler.add(np.arange(a, b) * 2, chunk_arrays)
    return pooler


def test_bins_are_means_of_the_finite_values_of_their_snapshots():
    values = np.random.default_rng(1).normal(size=(23, 5))
    values[3, 2] = np.nan
    sums, counts = pooled_means(values, 4)
    for b in range(6):
        block = values[b * 4:(b + 1) * 4]
        np.testing.assert_allclose(sums[b] / counts[b], np.nanmean(block, axis=0))
    assert bin_width(23, 6) == 4 and bin_width(5, 10) == 1


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_pooled_values_states_and_fractions_equal_numpy_and_the_fluctuation_module(chunk):
    epochs, window, tau = 40, 4, 1e-3
    trace = _trace(epochs, {"a": 6, "b": 9})
    result = _pool(trace, epochs, window, tau, chunk=chunk, max_bins=10).result()
    for name, arrays in trace.items():
        layer = result[name]
        for column in COLUMNS:
            expected = np.stack([np.nanmean(arrays[column][b * 4:(b + 1) * 4].astype(np.float64), axis=0)
                                 for b in range(10)])
            np.testing.assert_allclose(layer.values[column], expected, rtol=1e-6, equal_nan=True)
        windows = {c: fluctuation.windows_of(arrays[c], window) for c in fluctuation.WINDOW_COLUMNS}
        stats = fluctuation.window_stats(windows["w_std"], windows["bias"], windows["act_rate"], tau)
        states = states_of(stats)  # the state of the window ending at each snapshot from window-1 on
        last_of_bin = [b * 4 + 3 for b in range(10)]
        np.testing.assert_array_equal(layer.states, states[np.array(last_of_bin) - (window - 1)])
        for k, state in enumerate((PARTICIPATING, FROZEN, DEAD)):
            np.testing.assert_allclose(layer.fractions[window - 1:, k], (states == state).mean(axis=1), rtol=1e-6)
        assert np.isnan(layer.fractions[: window - 1]).all()  # no full window yet
        assert states[:, 0].tolist() == [DEAD] * len(states)
        assert states[-1, 2] == FROZEN and states[-1, 1] == DEAD
        # neuron 1 dies at the first snapshot whose window is all zeros; neuron 0 was dead from the first window
        first_dead = int(np.flatnonzero(states[:, 1] == DEAD)[0]) + window - 1
        assert layer.dies[1] == first_dead * 2 and layer.dies[0] == (window - 1) * 2
        assert layer.stops_participating[0] == -1  # never participated
        assert layer.dies[2] == NEVER


def test_chunked_and_whole_feeding_give_the_same_picture():
    trace = _trace(33, {"a": 5})
    whole = _pool(trace, 33, max_bins=8).result()["a"]
    chunked = _pool(trace, 33, chunk=5, max_bins=8).result()["a"]
    for column in COLUMNS:
        np.testing.assert_array_equal(whole.values[column], chunked.values[column])
    np.testing.assert_array_equal(whole.states, chunked.states)
    np.testing.assert_array_equal(whole.stops_participating, chunked.stops_participating)


@pytest.mark.parametrize("chunk", [1, 3, 10])
def test_a_run_pooled_as_it_is_written_draws_what_its_file_draws(chunk):
    # The total unknown, bins double as snapshots arrive (37 snapshots in at most 5 bins: width 1, 2, 4, then 8):
    # the end is what a pooler told the total from the start gives, bands and states included.
    trace = _trace(37, {"a": 6, "wide": 30})
    known = _pool(trace, 37, max_bins=5, max_rows=16, extremes=2).result()
    layers = [(name, np.arange(arrays["w_std"].shape[1])) for name, arrays in trace.items()]
    growing = TracePooler(layers, None, COLUMNS, 4, 1e-3, max_bins=5, max_rows=16, extremes=2)
    for a in range(0, 37, chunk):
        growing.add(np.arange(a, min(37, a + chunk)) * 2,
                    {name: {c: v[a:a + chunk] for c, v in arrays.items()} for name, arrays in trace.items()})
    assert growing.width == 8 and growing.bins == 5
    grown = growing.result()
    for name, layer in known.items():
        for column in COLUMNS:
            empty = np.zeros(0)
            np.testing.assert_allclose(grown[name].values.get(column, empty), layer.values.get(column, empty),
                                       rtol=1e-12, equal_nan=True)
            if layer.banded:
                np.testing.assert_allclose(grown[name].bands[column], layer.bands[column], rtol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(grown[name].states, layer.states)
        np.testing.assert_array_equal(grown[name].fractions, layer.fractions)
        np.testing.assert_array_equal(grown[name].dies, layer.dies)
        np.testing.assert_array_equal(grown[name].stops_participating, layer.stops_participating)


def test_a_layer_over_the_neuron_budget_gets_quantile_bands_and_its_extremes():
    trace = _trace(12, {"wide": 40})
    pooler = _pool(trace, 12, max_bins=3, max_rows=16, extremes=2)
    layer = pooler.result()["wide"]
    assert layer.banded and not layer.values
    first_bin = trace["wide"]["w_norm"][:4].astype(np.float64)  # each snapshot's quantiles, averaged over the bin
    expected_bands = np.mean([np.quantile(row, BANDS) for row in first_bin], axis=0)
    np.testing.assert_allclose(layer.bands["w_norm"][0], expected_bands, rtol=1e-6)
    last = trace["wide"]["w_norm"][-1]
    expected = set(np.argsort(last)[:2]) | set(np.argsort(last)[-2:])
    assert set(layer.extremes["w_norm"].tolist()) == expected
    assert set(pooler.extreme_rows()["wide"].tolist()) >= expected


def test_bfloat16_values_are_within_the_stated_resolution():
    values = np.concatenate([np.random.default_rng(2).lognormal(0, 8, 10_000), [0.0, -3.5, np.inf, -np.inf, np.nan]])
    values = values.astype(np.float32)
    back = from_bfloat16(to_bfloat16(values))
    finite = np.isfinite(values) & (values != 0)
    assert (np.abs(back[finite] - values[finite]) <= RELATIVE_RESOLUTION * np.abs(values[finite])).all()
    assert back[-5] == 0.0 and back[-4] == -3.5 and np.isinf(back[-3]) and np.isinf(back[-2]) and np.isnan(back[-1])


def test_a_page_blob_decodes_to_what_was_stored():
    blob = Blob()
    floats = np.random.default_rng(3).normal(size=(7, 3)).astype(np.float32)
    blob.add("f", floats, "bf16")
    blob.add("s", np.array([0, 3, 1], dtype=np.uint8), "u8")
    blob.add("e", np.array([5, -1, 2**31 - 1]), "i32")
    page = ('<script type="application/json" id="flux-meta">{"manifest": %s}</script>'
            '<script type="application/octet-stream" id="flux-data">%s</script>')
    import json

    _, arrays = read_page(page % (json.dumps(blob.manifest), blob.encode()))
    np.testing.assert_array_equal(arrays["f"], from_bfloat16(to_bfloat16(floats)))
    assert arrays["s"].tolist() == [0, 3, 1] and arrays["e"].tolist() == [5, -1, 2**31 - 1]
