"""The C fast path against float64 arithmetic done here, and against the torch path on the same training."""

import hashlib
import os
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import mlflow_flux
from mlflow_flux.recording import fastpath as kernels
from mlflow_flux.statistics import COMPUTED, STAT_NAMES, SUMS, c_layout, sum_row

if kernels.fastpath() is None:
    if os.environ.get("MLFLOW_FLUX_REQUIRE_FASTPATH") == "1":
        pytest.fail("mlflow_flux._fastpath is not built (make test requires it): reinstall with a C compiler")
    pytest.skip("the optional C extension is not built", allow_module_level=True)

fast = kernels.fastpath()


def test_the_loaded_extension_was_built_from_the_current_source():
    # An editable install builds the .so in place; after a failed rebuild the old one would still load and pass.
    source = Path(mlflow_flux.__file__).parent / "recording" / "_fastpath.c"
    if not source.exists():
        pytest.skip("installed from a wheel: no source beside the package to compare with")
    assert fast.source_sha256 == hashlib.sha256(source.read_bytes() + c_layout().encode()).hexdigest(), (
        "mlflow_flux._fastpath is stale: rebuild it (make install, or pip install -e .)"
    )


ROWS = len(SUMS)
COUNT, SHIFTED_SUM, SHIFTED_SUMSQ, POSITIVE, RELU_SUM, GRAD_SUMSQ, GRAD_ABS, PASSES = (
    sum_row(n) for n in ("count", "shifted_sum", "shifted_sumsq", "positive", "relu_sum", "grad_sumsq", "grad_abs",
                         "grad_passes"))
AT = {name: STAT_NAMES.index(name) for name in COMPUTED}  # where layer_statistics writes each: the trace's row

def _buffers(channels: int):
    return torch.zeros(ROWS, channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float32)


def _tap(kind: int, channels: int, sums: torch.Tensor, shift: torch.Tensor, ndim: int = 0):
    """A tap writing into ``sums``/``shift`` whose fallback fails the test: every call here must be taken in C."""
    def fallback(*args):
        raise AssertionError(f"the tap handed {len(args)} arguments to its fallback")
    return fast.Tap(kind, channels, sums.data_ptr(), shift.data_ptr(), fallback, ndim)


def _activity(sums: torch.Tensor, shift: torch.Tensor) -> np.ndarray:
    """(count, mean, std, positives, sum of relu) per neuron, the way layer_statistics reads the sums."""
    n = sums[COUNT]
    centred = sums[SHIFTED_SUM] / n
    return torch.stack([n, shift.double() + centred, (sums[SHIFTED_SUMSQ] / n - centred**2).clamp_min(0).sqrt(),
                        sums[POSITIVE], sums[RELU_SUM]]).numpy()


def _expected(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    return np.stack([np.full(y.shape[1], len(y)), y.mean(0), y.std(0), (y > 0).sum(0), np.maximum(y, 0).sum(0)])


@pytest.mark.parametrize("rows, channels", [(1, 1), (3, 7), (64, 1024), (70, 515), (5000, 9)])
def test_activation_rows_match_float64(rows, channels):
    y = torch.randn(rows, channels) * 3
    y[0, 0] = 0.0  # exactly zero does not fire
    sums, shift = _buffers(channels)
    _tap(kernels.TAP_ROWS, channels, sums, shift)(y)
    np.testing.assert_allclose(_activity(sums, shift), _expected(y.numpy()), rtol=1e-5, atol=1e-5)


def test_a_large_common_offset_loses_nothing():
    # E[x^2] - E[x]^2 over float32 sums gave 0.0 or 0.23 here; the shifted sums give the spread.
    torch.manual_seed(0)
    y = (1000.0 + 1e-3 * torch.randn(2000, 5)).float()
    sums, shift = _buffers(5)
    tap = _tap(kernels.TAP_ROWS, 5, sums, shift)
    for block in y.split(64):  # many steps: the first one sets the shift
        tap(block)
    np.testing.assert_allclose(_activity(sums, shift)[2], y.double().std(0, unbiased=False).numpy(), rtol=1e-4)
    np.testing.assert_allclose(_activity(sums, shift)[1], y.double().mean(0).numpy(), rtol=1e-7)


def test_bfloat16_outputs_are_reduced_in_float32():
    y = torch.randn(33, 40).bfloat16()
    sums, shift = _buffers(40)
    _tap(kernels.TAP_ROWS, 40, sums, shift)(y)
    np.testing.assert_allclose(_activity(sums, shift), _expected(y.float().numpy()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (4, 16, 8, 8), (1, 2, 3), (3, 5, 2, 3, 4)])
def test_activation_channel_planes_match_float64(shape):
    y = torch.randn(shape)
    sums, shift = _buffers(shape[1])
    _tap(kernels.TAP_PLANES, shape[1], sums, shift, ndim=len(shape))(y)
    per_channel = y.transpose(0, 1).reshape(shape[1], -1).T.numpy()
    np.testing.assert_allclose(_activity(sums, shift), _expected(per_channel), rtol=1e-5, atol=1e-5)


def test_nan_and_inf_follow_the_torch_path():
    y = torch.tensor([[1.0, float("nan"), float("inf"), -float("inf"), -2.0]] * 9)
    sums, shift = _buffers(5)
    _tap(kernels.TAP_ROWS, 5, sums, shift)(y)
    activity = _activity(sums, shift)
    assert activity[3].tolist() == [9.0, 0.0, 9.0, 0.0, 0.0]  # NaN does not fire
    assert activity[4].tolist()[:2] == [9.0, 0.0]  # nor does it add to the sum of relu(output)
    assert np.isfinite(activity[1, [0, 4]]).all() and not np.isfinite(activity[1, 1:4]).any()


@pytest.mark.parametrize("rows, cols", [(1, 1), (256, 1024), (33, 17), (7, 8), (9, 50)])  # 50: lanes and a tail
def test_gradient_rows_and_columns_match_float64(rows, cols):
    g = torch.randn(rows, cols)
    by_row, shift = _buffers(rows)
    _tap(kernels.TAP_GRADIENT_ROWS, rows, by_row, shift)(g)
    np.testing.assert_allclose(by_row[GRAD_SUMSQ].numpy(), (g.double() ** 2).sum(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(by_row[GRAD_ABS].numpy(), g.double().abs().mean(1).numpy(), rtol=1e-5)
    assert by_row[PASSES].tolist() == [1.0] * rows
    by_column, shift = _buffers(cols)  # transformers' Conv1D: a neuron per column of its (in, out) weight
    _tap(kernels.TAP_GRADIENT_COLUMNS, cols, by_column, shift)(g)
    np.testing.assert_allclose(by_column[GRAD_SUMSQ].numpy(), (g.double() ** 2).sum(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(by_column[GRAD_ABS].numpy(), g.double().abs().mean(0).numpy(), rtol=1e-5)


def test_a_gradient_tap_drops_the_one_gradient_it_was_told_to_skip():
    g = torch.randn(3, 4)
    sums, shift = _buffers(3)
    tap = _tap(kernels.TAP_GRADIENT_ROWS, 3, sums, shift)
    tap.skip = 1
    tap(g)  # the backward pass of an evaluation forward: dropped
    assert not sums.any() and tap.skip == 0
    tap(g)
    assert sums[PASSES].tolist() == [1.0] * 3


def _native(tensor: torch.Tensor, columns: bool) -> torch.Tensor:
    """A (neurons, fan_in) block as the C pass takes it: as it is, or a column per neuron (transformers' Conv1D)."""
    return tensor.t().contiguous() if columns else tensor


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("rows, cols", [(1, 1), (64, 256), (5, 13)])
def test_layer_statistics_match_float64_copy_the_weights_and_zero_the_sums(rows, cols, columns):
    w, previous, bias = torch.randn(rows, cols) + 0.3, torch.randn(rows, cols), torch.randn(rows)
    initial = torch.randn(rows, cols)
    before, start = previous.double().clone(), initial.double().clone()
    w_in, previous_in, initial_in = (_native(t, columns) for t in (w, previous, initial))
    sums = torch.rand(ROWS, rows, dtype=torch.float64) * 10
    sums[COUNT], sums[PASSES] = 5.0, 2.0
    shift = torch.randn(rows)
    expected_sums = sums.clone()
    out = np.empty((len(STAT_NAMES), rows), dtype=np.float32)  # column-major: statistic k of row r at out[k, r]
    means = torch.randn(rows, dtype=torch.float64)  # last snapshot's row means: only where the sums are centred
    nonfinite = fast.layer_statistics(w_in.data_ptr(), previous_in.data_ptr(), initial_in.data_ptr(), rows, cols,
                                      True, True, True, means.data_ptr(), bias.data_ptr(), sums.data_ptr(),
                                      shift.data_ptr(), out.ctypes.data, rows, columns)
    wd, e = w.double(), expected_sums
    n, s1 = e[COUNT], e[SHIFTED_SUM]
    expected = {"w_mean": wd.mean(1), "w_std": wd.std(1, unbiased=False), "w_norm": wd.norm(dim=1),
                "w_step": (wd - before).norm(dim=1), "bias": bias.double(), "act_mean": shift.double() + s1 / n,
                "act_std": (e[SHIFTED_SUMSQ] / n - (s1 / n) ** 2).clamp_min(0).sqrt(), "act_rate": e[POSITIVE] / n,
                "act_relu_mean": e[RELU_SUM] / n, "grad_norm": (e[GRAD_SUMSQ] / e[PASSES]).sqrt(),
                "grad_abs_mean": e[GRAD_ABS] / e[PASSES], "w_dist0": (wd - start).norm(dim=1)}
    for name, values in expected.items():
        np.testing.assert_allclose(out[AT[name]], values.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert nonfinite == 0 and torch.equal(previous_in, w_in) and not sums.any()
    assert torch.equal(initial_in.double(), _native(start, columns))
    # Summed in float32 lanes, as torch sums float32: within a float32 sum's error bound, (n + 1) u mean|w| (u = 2^-24),
    # not a relative tolerance (a row whose mean is near 0 has none to offer: 1e-6 failed ~5% of random draws).
    bound = (cols + 1) * 2.0**-24 * wd.abs().mean(1)
    assert ((means - wd.mean(1)).abs() <= bound).all(), ((means - wd.mean(1)).abs() / bound).max()
    # Nothing to compare with, no bias, no samples, no passes: NaN, and not counted as non-finite. No start yet:
    # these weights become it, at distance 0.
    nonfinite = fast.layer_statistics(w_in.data_ptr(), previous_in.data_ptr(), initial_in.data_ptr(), rows, cols,
                                      False, False, False, means.data_ptr(), 0, sums.data_ptr(), shift.data_ptr(),
                                      out.ctypes.data, rows, columns)
    undefined = [AT[c] for c in ("w_step", "bias", "act_mean", "act_std", "act_rate", "act_relu_mean", "grad_norm",
                                 "grad_abs_mean")]
    assert nonfinite == 0 and np.isnan(out[undefined]).all()
    assert np.isfinite(out[[AT["w_mean"], AT["w_std"], AT["w_norm"]]]).all()
    assert torch.equal(initial_in, w_in) and (out[AT["w_dist0"]] == 0).all()
    # The copies switched off (address 0): w_step and w_dist0 are NaN, and nothing is counted.
    nonfinite = fast.layer_statistics(w_in.data_ptr(), 0, 0, rows, cols, True, True, True, means.data_ptr(), 0,
                                      sums.data_ptr(), shift.data_ptr(), out.ctypes.data, rows, columns)
    assert nonfinite == 0 and np.isnan(out[[AT["w_step"], AT["w_dist0"]]]).all()


@pytest.mark.parametrize("columns", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("offset, spread, moved", [(0.0, 1.0, 0.0), (1000.0, 1e-3, 0.0), (5.0, 1e-2, 3.0)])
def test_weight_statistics_are_exact_whatever_the_offset_and_however_far_the_mean_moved(offset, spread, moved,
                                                                                       columns):
    torch.manual_seed(0)
    first = (offset + spread * torch.randn(8, 300)).float()
    then = (first + moved + spread * 0.01 * torch.randn(8, 300)).float()  # the next snapshot: moved, or not
    previous, initial = _native(torch.empty(8, 300), columns), _native(torch.empty(8, 300), columns)
    means = torch.empty(8, dtype=torch.float64)
    sums, shift = torch.zeros(ROWS, 8, dtype=torch.float64), torch.zeros(8)
    out = np.empty((len(STAT_NAMES), 8), np.float32)
    for weights, has_previous in ((first, False), (then, True)):
        native = _native(weights, columns)
        fast.layer_statistics(native.data_ptr(), previous.data_ptr(), initial.data_ptr(), 8, 300, has_previous,
                              has_previous, has_previous, means.data_ptr(), 0, sums.data_ptr(), shift.data_ptr(),
                              out.ctypes.data, 8, columns)
    reference = then.double()
    np.testing.assert_allclose(out[AT["w_mean"]], reference.mean(1).numpy(), rtol=1e-6, atol=1e-6 * spread)
    np.testing.assert_allclose(out[AT["w_std"]], reference.std(1, unbiased=False).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out[AT["w_norm"]], reference.norm(dim=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(out[AT["w_step"]], (reference - first.double()).norm(dim=1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out[AT["w_dist0"]], (reference - first.double()).norm(dim=1).numpy(), rtol=1e-5)


def test_layer_statistics_count_defined_values_that_are_not_finite():
    w, previous, initial = torch.tensor([[1.0, float("inf")], [1.0, 2.0]]), torch.zeros(2, 2), torch.zeros(2, 2)
    sums = torch.ones(ROWS, 2, dtype=torch.float64)
    sums[SHIFTED_SUM, 1] = float("nan")
    sums[GRAD_SUMSQ] = 4.0
    shift = torch.zeros(2)
    out = np.empty((len(STAT_NAMES), 2), dtype=np.float32)
    means = torch.zeros(2, dtype=torch.float64)
    nonfinite = fast.layer_statistics(w.data_ptr(), previous.data_ptr(), initial.data_ptr(), 2, 2, True, True, True,
                                      means.data_ptr(), 0, sums.data_ptr(), shift.data_ptr(), out.ctypes.data, 2,
                                      False)
    # Row 0: mean, std (inf - inf), norm, step and distance of the inf weight; row 1: act_mean, act_std of the NaN sum.
    defined = [k for name, k in AT.items() if name != "bias"]
    assert nonfinite == int((~np.isfinite(out[defined])).sum()) == 7


def _train(store_run_name: str, model_factory, steps_per_epoch: int = 3, epochs: int = 3, applied: bool = False):
    torch.manual_seed(0)
    model = model_factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(steps_per_epoch * 8, 2, 6, 6)
    with mlflow.start_run(run_name=store_run_name) as run:
        # applied: the gradients are read from the optimizer's steps, not from hooks on the weights
        with mlflow_flux.watch(model, window=2, log_figures=False, optimizer=optimizer if applied else None) as flux:
            for epoch in range(epochs):
                for batch in data.split(8):
                    optimizer.zero_grad()
                    model(batch).pow(2).mean().backward()
                    optimizer.step()
                flux.end_epoch(epoch)
    return mlflow_flux.load_traces(run.info.run_id), mlflow.get_run(run.info.run_id).data.params


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7), nn.ReLU(),
                         nn.Linear(7, 3))


def _channels_last_cnn():
    # A channels-last conv output is not contiguous: that layer takes the torch path, the Linears the fast one.
    return _cnn().to(memory_format=torch.channels_last)


@pytest.mark.parametrize("factory", [_cnn, _channels_last_cnn])
def test_fast_and_torch_paths_record_the_same_trace(store, monkeypatch, factory):
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", "1")
    with_c, params_c = _train("fast", factory)
    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", "0")
    with_torch, params_torch = _train("torch", factory)
    assert params_c["flux.fastpath"] == "c" and params_torch["flux.fastpath"] == "torch"
    assert with_c[["epoch", "layer", "neuron"]].equals(with_torch[["epoch", "layer", "neuron"]])
    for column in with_c.columns[3:]:
        np.testing.assert_allclose(with_c[column], with_torch[column], rtol=2e-5, atol=1e-6, err_msg=column)



@pytest.mark.parametrize("factory", [_cnn, _channels_last_cnn])
def test_layers_snapshot_on_two_threads_record_what_one_thread_records(store, monkeypatch, factory):
    # Big models split the C passes (snapshots, and the gradients an optimizer step applies) over two threads: each
    # layer must land at its own rows, the torch path's too.
    from mlflow_flux.recording import recorder

    monkeypatch.setenv("MLFLOW_FLUX_FASTPATH", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(recorder, "PARALLEL_ELEMENTS", 0)
        split, _ = _train("two threads", factory, applied=True)
        monkeypatch.setattr(recorder, "PARALLEL_ELEMENTS", 1 << 62)
        single, _ = _train("one thread", factory, applied=True)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(split, single)


@pytest.mark.parametrize("columns", [1, 7, 300, 1000])  # under and over the quarter where zeroing multiplies
def test_a_reset_writes_zeroes_and_copies_exactly_the_chosen_columns(columns):
    from mlflow_flux.recording.accumulators import copy_columns, write_along, zero_along

    generator = torch.Generator().manual_seed(columns)
    index = torch.randperm(1200, generator=generator)[:columns].sort().values
    weight, values = torch.randn(33, 1200, generator=generator), torch.randn(33, columns, generator=generator)
    expected = weight.clone()
    expected[:, index] = values
    write_along(weight, 1, index, values)
    assert torch.equal(weight, expected)
    zeroed = expected.clone()
    zeroed[:, index] = 0
    zero_along(expected, 1, index)
    assert torch.equal(expected, zeroed)
    copies = (torch.randn(33, 1200, generator=generator), torch.randn(33, 1200, generator=generator))
    wanted = [copy.clone() for copy in copies]
    for copy in wanted:
        copy[:, index] = weight[:, index]
    copy_columns(copies, weight, index)
    assert all(torch.equal(copy, want) for copy, want in zip(copies, wanted))


def test_set_columns_refuses_a_column_out_of_range_before_writing():
    block = torch.ones(4, 5)
    index = torch.tensor([1, 5])
    with pytest.raises(IndexError, match="out of range"):
        fast.set_columns((block.data_ptr(),), 0, 0, index.data_ptr(), 2, 4, 5)
    assert (block == 1).all()


@pytest.mark.parametrize("shape", [(40, 7), (12, 3, 2, 2)])  # a Conv1D's (in, out) rows; a conv's output channels
def test_zeroing_whole_rows_in_c_zeroes_exactly_what_index_fill_zeroes(shape):
    from mlflow_flux.recording.accumulators import zero_along

    generator = torch.Generator().manual_seed(len(shape))
    tensor = torch.randn(*shape, generator=generator)
    tensor.view(-1)[::5] = float("nan")  # a diverged entry in a zeroed row ends 0, as index_fill_ leaves it
    index = torch.randperm(shape[0], generator=generator)[: shape[0] // 2].sort().values
    expected = tensor.clone().index_fill_(0, index, 0)
    zero_along(tensor, 0, index)
    assert torch.equal(tensor.isnan(), expected.isnan())
    assert torch.equal(tensor.nan_to_num(), expected.nan_to_num())
    strided = torch.randn(shape[0], 6, generator=generator)[:, ::2]  # not a block: index_fill_ takes it
    expected = strided.clone().index_fill_(0, index, 0)
    zero_along(strided, 0, index)
    assert torch.equal(strided, expected)


def test_zero_rows_refuses_a_row_out_of_range_before_writing():
    block = torch.ones(4, 5)
    index = torch.tensor([1, 4])
    with pytest.raises(IndexError, match="out of range"):
        fast.zero_rows((block.data_ptr(),), index.data_ptr(), 2, 4, 5)
    assert (block == 1).all()
