"""The C fast path against float64 arithmetic done here, and against the torch path on the same training."""

import hashlib
import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

import mlflow_flux
from mlflow_flux.recording import fastpath as kernels

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
    assert fast.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest(), (
        "mlflow_flux._fastpath is stale: rebuild it (make install, or pip install -e .)"
    )


def _tap(kind: int, channels: int, sums: torch.Tensor, ndim: int = 0):
    """A tap writing into ``sums`` whose fallback fails the test: every call here must be taken in C."""
    def fallback(*args):
        raise AssertionError(f"the tap handed {len(args)} arguments to its fallback")
    return fast.Tap(kind, channels, sums.data_ptr(), fallback, ndim)


TRAINING_MODULE = nn.Identity()  # in training mode: a forward tap counts its outputs


def _expected_activations(y: np.ndarray) -> np.ndarray:
    """(3, channels): sum, sum of squares, and how many are above zero."""
    y = y.astype(np.float64)
    return np.stack([y.sum(0), (y * y).sum(0), (y > 0).sum(0)])


@pytest.mark.parametrize("rows, channels", [(1, 1), (3, 7), (64, 1024), (70, 515), (5000, 9)])
def test_activation_rows_match_float64(rows, channels):
    y = torch.randn(rows, channels) * 3
    y[0, 0] = 0.0  # exactly zero does not fire
    sums = torch.full((3, channels), 0.5, dtype=torch.float64)  # adds into what is there
    tap = _tap(kernels.TAP_ROWS, channels, sums)
    tap(TRAINING_MODULE, (), y)
    assert tap.count == rows
    np.testing.assert_allclose(sums.numpy() - 0.5, _expected_activations(y.numpy()), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (4, 16, 8, 8), (1, 2, 3), (3, 5, 2, 3, 4)])
def test_activation_channel_planes_match_float64(shape):
    y = torch.randn(shape)
    sums = torch.zeros(3, shape[1], dtype=torch.float64)
    tap = _tap(kernels.TAP_PLANES, shape[1], sums, ndim=len(shape))
    tap(TRAINING_MODULE, (), y)
    assert tap.count == shape[0] * int(np.prod(shape[2:]))
    per_channel = y.transpose(0, 1).reshape(shape[1], -1).T.numpy()
    np.testing.assert_allclose(sums.numpy(), _expected_activations(per_channel), rtol=1e-5, atol=1e-4)


def test_nan_and_inf_follow_the_torch_path():
    y = torch.tensor([[1.0, float("nan"), float("inf"), -float("inf"), -2.0]] * 9)
    sums = torch.zeros(3, 5, dtype=torch.float64)
    _tap(kernels.TAP_ROWS, 5, sums)(TRAINING_MODULE, (), y)
    torch_path = torch.stack([y.sum(0), (y * y).sum(0), torch.relu(y).sign_().sum(0)]).double()
    np.testing.assert_array_equal(sums.numpy(), torch_path.numpy())


@pytest.mark.parametrize("rows, cols", [(1, 1), (256, 1024), (33, 17), (7, 8)])
def test_row_sums_of_squares_match_float64(rows, cols):
    g = torch.randn(rows, cols)
    out = torch.ones(rows, dtype=torch.float64)
    tap = _tap(kernels.TAP_GRADIENT, rows, out)
    tap(g)
    assert tap.count == 1
    np.testing.assert_allclose(out.numpy() - 1, (g.double() ** 2).sum(1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("rows, cols", [(1, 1), (64, 256), (5, 13)])
def test_layer_statistics_match_float64_copy_the_weights_and_zero_the_sums(rows, cols):
    w, previous, bias = torch.randn(rows, cols) + 0.3, torch.randn(rows, cols), torch.randn(rows)
    before = previous.double().clone()
    sums = torch.rand(4, rows, dtype=torch.float64) * 10
    expected_sums = sums.clone()
    positions = (8, 7, 6, 5, 4, 3, 2, 1, 0)  # written in reverse, to check they are honoured
    out = np.empty((rows, 9), dtype=np.float32)
    nonfinite = fast.layer_statistics(w.data_ptr(), previous.data_ptr(), rows, cols, True, bias.data_ptr(),
                                      sums.data_ptr(), 5, 2, out.ctypes.data, positions)
    wd, (s, q, p, g) = w.double(), expected_sums
    expected = [wd.mean(1), wd.std(1, unbiased=False), wd.norm(dim=1), (wd - before).norm(dim=1), bias.double(),
                s / 5, (q / 5 - (s / 5) ** 2).clamp_min(0).sqrt(), p / 5, (g / 2).sqrt()]
    np.testing.assert_allclose(out[:, ::-1].T, torch.stack(expected).numpy(), rtol=1e-5, atol=1e-6)
    assert nonfinite == 0 and torch.equal(previous, w) and not sums.any()
    # Nothing to compare with, no bias, no samples, no passes: NaN, and not counted as non-finite.
    nonfinite = fast.layer_statistics(w.data_ptr(), previous.data_ptr(), rows, cols, False, 0, sums.data_ptr(), 0, 0,
                                      out.ctypes.data, tuple(range(9)))
    assert nonfinite == 0 and np.isnan(out[:, 3:]).all() and np.isfinite(out[:, :3]).all()


def test_layer_statistics_count_defined_values_that_are_not_finite():
    w, previous = torch.tensor([[1.0, float("inf")], [1.0, 2.0]]), torch.zeros(2, 2)
    sums = torch.tensor([[1.0, float("nan")], [1.0, 1.0], [1.0, 1.0], [4.0, 4.0]], dtype=torch.float64)
    out = np.empty((2, 9), dtype=np.float32)
    nonfinite = fast.layer_statistics(w.data_ptr(), previous.data_ptr(), 2, 2, True, 0, sums.data_ptr(), 1, 1,
                                      out.ctypes.data, tuple(range(9)))
    # Row 0: mean, std (inf - inf), norm, step of the inf weight; row 1: act_mean and act_std of the NaN sum.
    assert nonfinite == int((~np.isfinite(out[:, [0, 1, 2, 3, 5, 6, 7, 8]])).sum()) == 6


def _train(store_run_name: str, model_factory, steps_per_epoch: int = 3, epochs: int = 3):
    torch.manual_seed(0)
    model = model_factory()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.randn(steps_per_epoch * 8, 2, 6, 6)
    with mlflow.start_run(run_name=store_run_name) as run:
        with mlflow_flux.watch(model, window=2, log_figures=False) as flux:
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

