"""Fluctuation summaries: pure functions from per-neuron traces to numbers.

No torch, no MLflow, no I/O. The recorder calls these live on a window of the latest snapshots, and the
comparison report calls them offline on traces read back from Parquet, so the two can never disagree: both pass
float32 trace values arranged as ``(windows, window, neurons)`` arrays through the same code.

Definitions (our reading of arXiv 2511.10435, which publishes no formula) are in :data:`DEFINITIONS` and
docs/metrics.md.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "median",
    "DEFINITIONS",
    "INPUT_COLUMNS",
    "DEFAULT_WINDOW",
    "DEFAULT_TAU",
    "SUMMARY_KEYS",
    "window_std",
    "relative_fluctuation",
    "window_stats",
    "summarize",
    "windows_of",
    "layer_arrays",
    "window_summaries",
    "summaries_from_arrays",
    "summaries_over_epochs",
    "DIVERGENCE_FACTOR",
    "Divergence",
    "divergence",
    "frozen_fraction",
    "relative_update",
    "participation_ratio",
    "WINDOW_COLUMNS",
    "LAST_SNAPSHOT_COLUMNS",
    "lyapunov",
    "early_index",
]

# What each quantity means, as the report prints it: our reading of the paper, which publishes no formula.
DEFINITIONS = (
    ("spread", "s[t, i] = w_std[t, i]: the population std of neuron i's incoming weights at snapshot t"),
    ("spread of the spread", "sos[i] = std over the window of s[t, i]"),
    ("relative fluctuation", "rel[i] = sos[i] / mean over the window of s[t, i] (0 where that mean is 0)"),
    ("bias fluctuation", "std over the window of bias[t, i]"),
    ("fires", "act_rate[t, i] > 0 at some snapshot t of the window"),
    ("dead", "act_rate[t, i] == 0 at every snapshot t of the window"),
    ("participates", "fires and rel[i] >= tau"),
    ("frozen", "fires but rel[i] < tau: still active, its weights no longer move (inactive, not dead)"),
    ("diverged", "the loss rose above DIVERGENCE_FACTOR (2) times its own minimum after reaching it and ended there"),
    ("distance from start", "w_dist0[t, i] = ||w_i(t) - w_i(first snapshot)||: how far the incoming weights moved"),
    ("relative update", "w_step[t, i] / w_norm[t, i]: the last step's size against the weights' size"),
    ("twin distance", "d(t) = ||theta(t) - theta_twin(t)||: a twin trained on the same batches from weights that "
                      "differed by a relative 1e-6"),
    ("Lyapunov estimate", "lambda(t) = ln(d(t) / d(0)) / t, t in epochs: the finite-time rate at which the two "
                          "trajectories separate (> 0) or close in (< 0); -inf when they coincide"),
    ("participation ratio", "PR = (sum_i act_std[i]^2)^2 / sum_i act_std[i]^4 at a snapshot: the effective number "
                            "of neurons that carry the layer's activation variance (N when all carry it equally, "
                            "1 when one does)"),
)
# Per-neuron columns taken over the whole window, and those taken at the window's last snapshot.
WINDOW_COLUMNS = ("w_std", "bias", "act_rate")
LAST_SNAPSHOT_COLUMNS = ("w_step", "w_norm", "w_dist0", "act_std")
# The per-neuron trace columns every summary here is computed from (the trace stores them first).
INPUT_COLUMNS = (*WINDOW_COLUMNS, *LAST_SNAPSHOT_COLUMNS)
DEFAULT_WINDOW = 10
DEFAULT_TAU = 1e-4
# Per-layer summary keys, logged as ``flux/<layer>/<key>`` and ``flux/all/<key>``.
SUMMARY_KEYS = (
    "participating",
    "participating_frac",
    "dead_frac",
    "sos_median",
    "bias_fluct_median",
    "w_step_median",
    "w_rel_step_median",
    "w_dist0_median",
    "participation_ratio",
)


def window_std(x: np.ndarray) -> np.ndarray:
    """Population standard deviation over the window axis (``axis=-2``) of ``(..., W, N)`` values.

    Written out as two passes so that the summation order depends only on the window, never on how many
    windows are stacked: the live (one window) and offline (many windows) results are bit-identical.

    Args:
        x: values with the window on the second-to-last axis.

    Returns:
        ``(..., N)`` float64 standard deviations: ``sqrt(mean_t((x_t - mean_t x)^2))``.

    >>> window_std(np.array([[1.0, 0.0], [3.0, 0.0]]))
    array([1., 0.])
    """
    x = np.asarray(x, dtype=np.float64)
    width = x.shape[-2]
    mean = x.sum(axis=-2) / width
    dev = x - mean[..., None, :]
    return np.sqrt((dev * dev).sum(axis=-2) / width)


def relative_fluctuation(spread: np.ndarray) -> np.ndarray:
    """Spread of the spread over the mean spread, per neuron: ``std_t(s) / mean_t(s)``, 0 where the mean is 0.

    Args:
        spread: ``(..., W, N)`` per-neuron spreads (``w_std``) over a window of snapshots.

    Returns:
        ``(..., N)`` float64 relative fluctuations.

    >>> relative_fluctuation(np.array([[1.0, 2.0], [3.0, 2.0]]))
    array([0.5, 0. ])
    """
    spread = np.asarray(spread, dtype=np.float64)
    mean = spread.sum(axis=-2) / spread.shape[-2]
    sos = window_std(spread)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean != 0, sos / mean, 0.0)


def window_stats(
    spread: np.ndarray, bias: np.ndarray, act_rate: np.ndarray, tau: float = DEFAULT_TAU
) -> dict[str, np.ndarray]:
    """Per-neuron statistics of one layer over windows of snapshots.

    Args:
        spread: ``(B, W, N)`` ``w_std`` values: ``B`` windows of ``W`` snapshots of ``N`` neurons.
        bias: ``(B, W, N)`` biases (NaN for a layer without bias).
        act_rate: ``(B, W, N)`` fractions of positive outputs.
        tau: participation threshold on the relative fluctuation.

    Returns:
        ``(B, N)`` arrays: ``sos``, ``rel``, ``bias_fluct`` (float64), ``fires``, ``dead``, ``participating`` (bool).

    >>> s = np.array([[[1.0, 1.0], [3.0, 1.0]]])     # neuron 0's spread moves, neuron 1's does not
    >>> r = np.array([[[0.5, 0.2], [0.0, 0.0]]])     # both fire in the first snapshot
    >>> stats = window_stats(s, np.zeros_like(s), r, tau=0.1)
    >>> stats["participating"].tolist(), stats["dead"].tolist()
    ([[True, False]], [[False, False]])
    """
    if tau <= 0 or not np.isfinite(tau):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    act_rate = np.asarray(act_rate)
    spread = np.asarray(spread, dtype=np.float64)
    mean = spread.sum(axis=-2) / spread.shape[-2]
    sos = window_std(spread)  # relative_fluctuation's arithmetic, with the spread's std taken once
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(mean != 0, sos / mean, 0.0)
    fires = (act_rate > 0).any(axis=-2)
    return {
        "sos": sos,
        "rel": rel,
        "bias_fluct": window_std(bias),
        "fires": fires,
        "dead": (act_rate == 0).all(axis=-2),
        "participating": fires & (rel >= tau),
    }


def median(x: np.ndarray) -> np.ndarray:
    """Median over the last axis, ignoring non-finite values (NaN where none is finite).

    One ``np.partition``: ``np.median``'s general machinery costs ~80 us a call, which adds up over every layer of
    every snapshot. A NaN (a diverged neuron, a layer without bias) must not turn a layer's median into NaN.

    >>> float(median(np.array([3.0, 1.0, np.nan, 2.0]))), median(np.array([[4.0, 1.0, 2.0, 3.0]])).tolist()
    (2.0, [2.5])
    """
    x = np.asarray(x)
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], np.nan)
    finite_mask = np.isfinite(x)
    if not finite_mask.all():
        if x.ndim == 1:
            x = x[finite_mask]
            if x.size == 0:
                return np.float64(np.nan)
        else:
            finite = np.where(finite_mask, x, np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": the NaN result is the answer
                return np.nanmedian(finite, axis=-1)
    n = x.shape[-1]
    middle = n // 2
    if n % 2:
        return np.partition(x, middle, axis=-1)[..., middle][()]  # [()]: a scalar, not a 0-d array, for 1-d input
    part = np.partition(x, (middle - 1, middle), axis=-1)
    return ((part[..., middle - 1] + part[..., middle]) / 2)[()]


def summarize(
    layers: Mapping[str, Mapping[str, np.ndarray]], tau: float = DEFAULT_TAU
) -> dict[str, np.ndarray]:
    """Summaries per layer and over all layers, for ``B`` windows at once.

    Args:
        layers: per layer name, ``(B, W, N)`` arrays ``w_std``, ``bias``, ``act_rate`` and ``(B, N)`` arrays
            ``w_step``, ``w_norm``, ``w_dist0``, ``act_std`` (at each window's last snapshot; one missing gives NaN
            summaries for what needs it).
        tau: participation threshold.

    Returns:
        ``(B,)`` float64 arrays keyed ``"<layer>/<key>"`` and ``"all/<key>"`` for each key of
        :data:`SUMMARY_KEYS`. Medians ignore non-finite values.

    >>> s = np.array([[[1.0, 1.0], [3.0, 1.0]]])
    >>> layer = {"w_std": s, "bias": np.zeros_like(s), "act_rate": np.ones_like(s), "w_step": np.ones((1, 2))}
    >>> out = summarize({"fc": layer}, tau=0.1)
    >>> out["fc/participating"].tolist(), out["all/participating_frac"].tolist(), out["fc/sos_median"].tolist()
    ([1.0], [0.5], [0.5])
    """
    if not layers:
        raise ValueError("summarize needs at least one layer")
    names = list(layers)
    joined = {key: np.concatenate([np.asarray(layers[name][key]) for name in names], axis=-1)
              for key in WINDOW_COLUMNS}
    last_shape = np.shape(joined["w_std"])[:-2] + np.shape(joined["w_std"])[-1:]
    for key in LAST_SNAPSHOT_COLUMNS:  # a trace written before a column existed: its summaries are NaN
        parts = [layers[name].get(key) for name in names]
        joined[key] = (np.concatenate([np.asarray(part) for part in parts], axis=-1)
                       if all(part is not None for part in parts) else np.full(last_shape, np.nan))
    return _summarize_joined(names, [np.shape(layers[name]["w_std"])[-1] for name in names], joined, tau)


def _summarize_joined(names: list[str], sizes: list[int], joined: Mapping[str, np.ndarray],
                      tau: float) -> dict[str, np.ndarray]:
    """:func:`summarize` on every layer's neurons side by side (``sizes`` neurons each, in ``names`` order).

    Every per-neuron quantity is computed once for all layers (they are elementwise along the window), then summed
    or reduced to medians per layer: the same numbers as layer by layer, in a tenth of the numpy calls.
    """
    stats = window_stats(joined["w_std"], joined["bias"], joined["act_rate"], tau)
    w_step = np.asarray(joined["w_step"], dtype=np.float64)
    rel_step = relative_update(w_step, joined["w_norm"])
    w_dist0 = np.asarray(joined["w_dist0"], dtype=np.float64)
    act_std = np.asarray(joined["act_std"], dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    scopes = [(name, slice(start, stop)) for name, start, stop in zip(names, bounds[:-1], bounds[1:])]
    for name, rows in [*scopes, ("all", slice(0, int(bounds[-1])))]:
        n = rows.stop - rows.start
        participating = stats["participating"][..., rows].sum(axis=-1).astype(np.float64)
        out[f"{name}/participating"] = participating
        out[f"{name}/participating_frac"] = participating / n
        out[f"{name}/dead_frac"] = stats["dead"][..., rows].sum(axis=-1) / n
        out[f"{name}/sos_median"] = median(stats["sos"][..., rows])
        out[f"{name}/bias_fluct_median"] = median(stats["bias_fluct"][..., rows])
        out[f"{name}/w_step_median"] = median(w_step[..., rows])
        out[f"{name}/w_rel_step_median"] = median(rel_step[..., rows])
        out[f"{name}/w_dist0_median"] = median(w_dist0[..., rows])
        out[f"{name}/participation_ratio"] = participation_ratio(act_std[..., rows])
    return out


def windows_of(values: np.ndarray, window: int) -> np.ndarray:
    """Every run of ``window`` consecutive snapshots of an ``(E, N)`` array, as a contiguous ``(E-W+1, W, N)`` array.

    >>> windows_of(np.arange(6.0).reshape(3, 2), 2).tolist()
    [[[0.0, 1.0], [2.0, 3.0]], [[2.0, 3.0], [4.0, 5.0]]]
    """
    values = np.asarray(values)
    if values.shape[0] < window:
        return np.empty((0, window, values.shape[1]), dtype=values.dtype)
    if values.shape[0] == window:  # the live case: exactly one window
        return values[None]
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)  # (E-W+1, N, W)
    return np.ascontiguousarray(np.moveaxis(view, -1, 1))


def layer_arrays(trace: pd.DataFrame, columns: tuple[str, ...] = INPUT_COLUMNS):
    """A long trace as ``(epochs, {layer: {column: (E, N) float32 array}})``, layers in order of appearance; of
    ``columns``, those the trace holds.

    Raises:
        ValueError: a layer misses neurons at some epoch, or layers were snapshot at different epochs.
    """
    columns = tuple(c for c in columns if c in trace.columns)  # a trace written before a column existed lacks it
    layer = trace["layer"]
    codes, names = pd.factorize(layer.astype(str) if not isinstance(layer.dtype, pd.CategoricalDtype) else layer)
    epoch = trace["epoch"].to_numpy()
    neuron = trace["neuron"].to_numpy()
    fast = _epoch_major_layout(codes, epoch, neuron)
    if fast is not None:
        return _split_epoch_major(trace, names, fast, columns)
    order = np.lexsort((neuron, epoch, codes))
    codes, epoch = codes[order], epoch[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    epochs: np.ndarray | None = None
    out: dict[str, dict[str, np.ndarray]] = {}
    for rows in np.split(np.arange(len(order)), bounds):
        if rows.size == 0:
            continue
        name = str(names[codes[rows[0]]])
        layer_epochs = np.unique(epoch[rows])
        if rows.size % layer_epochs.size:
            raise ValueError(f"layer {name!r} does not have the same neurons at every epoch")
        if epochs is None:
            epochs = layer_epochs
        elif not np.array_equal(epochs, layer_epochs):
            raise ValueError(f"layer {name!r} has snapshots at other epochs than the first layer")
        shape = (layer_epochs.size, rows.size // layer_epochs.size)
        out[name] = {c: trace[c].to_numpy(dtype=np.float32)[order[rows]].reshape(shape) for c in columns}
    return (epochs if epochs is not None else np.array([], dtype=np.int64)), out


def _epoch_major_layout(codes: np.ndarray, epoch: np.ndarray, neuron: np.ndarray):
    """``(epochs, codes of one epoch, neurons of one epoch)`` when every epoch repeats one row layout, as the
    recorder writes it; None otherwise. Checking is one vectorised comparison; sorting would be a lexsort."""
    if len(epoch) == 0:
        return None
    per_epoch = int(np.searchsorted(epoch, epoch[0], side="right"))
    if per_epoch == 0 or len(epoch) % per_epoch:
        return None
    shape = (len(epoch) // per_epoch, per_epoch)
    epochs_2d, codes_2d, neuron_2d = epoch.reshape(shape), codes.reshape(shape), neuron.reshape(shape)
    epochs = epochs_2d[:, 0]
    if (
        (epochs_2d != epochs[:, None]).any()
        or (np.diff(epochs) <= 0).any()
        or (codes_2d != codes_2d[0]).any()
        or (neuron_2d != neuron_2d[0]).any()
    ):
        return None
    first_codes, first_neurons = codes_2d[0], neuron_2d[0]
    # each layer must be one contiguous block of neurons 0..N-1 within the epoch
    starts = np.flatnonzero(np.r_[True, np.diff(first_codes) != 0])
    if len(np.unique(first_codes)) != len(starts):
        return None
    return epochs, first_codes, first_neurons, starts, shape


def _split_epoch_major(trace, names, layout, columns):
    epochs, first_codes, first_neurons, starts, shape = layout
    bounds = list(starts) + [shape[1]]
    out: dict[str, dict[str, np.ndarray]] = {}
    wide = {c: trace[c].to_numpy(dtype=np.float32).reshape(shape) for c in columns}
    for begin, end in zip(bounds[:-1], bounds[1:]):
        block = first_neurons[begin:end]
        order = np.argsort(block, kind="stable")
        columns_of_layer = slice(begin, end) if (order == np.arange(len(order))).all() else begin + order
        out[str(names[first_codes[begin]])] = {
            c: np.ascontiguousarray(wide[c][:, columns_of_layer]) for c in columns
        }
    return epochs, out


def _column(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """One layer's ``(E, N)`` column, or NaN for a column the trace does not hold (written before it existed)."""
    if key in arrays:
        return np.asarray(arrays[key])
    return np.full(np.shape(arrays["w_std"]), np.nan, dtype=np.float32)


def window_summaries(layers: dict, window: int, tau: float) -> dict[str, np.ndarray]:
    """:func:`summarize` over every run of ``window`` consecutive snapshots of :func:`layer_arrays`' output.

    The recorder calls it live on exactly ``window`` snapshots (one window, no pandas in the training loop); the
    report calls it through :func:`summaries_from_arrays` on whole runs. The layers are put side by side before the
    windows are cut, so each window array is built once.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 snapshots, got {window}")
    if not layers:
        raise ValueError("summarize needs at least one layer")
    names = list(layers)
    side_by_side = {key: np.concatenate([_column(layers[name], key) for name in names], axis=-1)
                    for key in INPUT_COLUMNS}
    joined = {key: windows_of(side_by_side[key], window) for key in WINDOW_COLUMNS}
    joined.update({key: side_by_side[key][window - 1 :] for key in LAST_SNAPSHOT_COLUMNS})
    return _summarize_joined(names, [np.shape(layers[name]["w_std"])[-1] for name in names], joined, tau)


def summaries_from_arrays(epochs: np.ndarray, layers: dict, window: int, tau: float) -> pd.DataFrame:
    """:func:`summaries_over_epochs` on what :func:`layer_arrays` returned."""
    if window < 2:
        raise ValueError(f"window must be >= 2 snapshots, got {window}")
    if len(epochs) < window:
        return pd.DataFrame(index=pd.Index([], name="epoch"))
    return pd.DataFrame(window_summaries(layers, window, tau), index=pd.Index(epochs[window - 1 :], name="epoch"))


def summaries_over_epochs(trace: pd.DataFrame, window: int = DEFAULT_WINDOW, tau: float = DEFAULT_TAU) -> pd.DataFrame:
    """Recompute the live summaries at every snapshot of a trace whose window is full.

    Args:
        trace: a long trace with columns ``epoch``, ``layer``, ``neuron``, ``w_std``, ``bias``, ``act_rate``,
            ``w_step`` (as :func:`mlflow_flux.load_traces` returns it).
        window: snapshots per window.
        tau: participation threshold.

    Returns:
        One row per epoch (index ``epoch``) and one column per summary key (``"<layer>/<key>"``, ``"all/<key>"``),
        equal to the ``flux/...`` metrics the recorder logged for the same settings.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 snapshots, got {window}")
    epochs, layers = layer_arrays(trace)
    return summaries_from_arrays(epochs, layers, window, tau)


# A run "diverged" when its loss rose above this multiple of its own minimum and ended there.
DIVERGENCE_FACTOR = 2.0


class Divergence(NamedTuple):
    """Where a loss history diverged: its minimum, the first step after it above ``factor`` x the minimum, the last
    value."""

    best_step: int
    best: float
    step: int
    final: float


def divergence(steps: Sequence[int], losses: Sequence[float], factor: float = DIVERGENCE_FACTOR) -> Divergence | None:
    """The divergence of a loss history, or None when its last value is within ``factor`` of its minimum.

    A history that became NaN or infinite diverged at the first such step.

    >>> divergence([0, 1, 2, 3, 4], [0.5, 0.1, 0.12, 0.3, 0.4])
    Divergence(best_step=1, best=0.1, step=3, final=0.4)
    >>> divergence([0, 1, 2], [0.5, 0.1, 0.15]) is None, divergence([], []) is None
    (True, True)
    >>> divergence([0, 1, 2], [0.5, float("nan"), 0.1]).step
    1
    """
    values = np.asarray(losses, dtype=float)
    steps = np.asarray(steps)
    if len(values) == 0:
        return None
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        best = int(np.argmin(values[:first])) if first else 0
        return Divergence(int(steps[best]), float(values[best]) if first else math.nan, int(steps[first]),
                          float(values[-1]))
    best = int(np.argmin(values))
    if not values[-1] > factor * values[best]:
        return None
    after = np.flatnonzero(values[best:] > factor * values[best])
    return Divergence(int(steps[best]), float(values[best]), int(steps[best + after[0]]), float(values[-1]))


def relative_update(w_step: np.ndarray, w_norm: np.ndarray) -> np.ndarray:
    """The relative update of each neuron, ``w_step / w_norm``: its last step against the size of its weights.

    NaN where it is not defined: no step yet (``w_step`` NaN) or weights of norm 0.

    >>> relative_update(np.array([0.1, 0.5, np.nan, 1.0]), np.array([2.0, 0.5, 1.0, 0.0])).tolist()
    [0.05, 1.0, nan, nan]
    """
    w_step = np.asarray(w_step, dtype=np.float64)
    w_norm = np.asarray(w_norm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(w_norm > 0, w_step / w_norm, np.nan)


def participation_ratio(act_std: np.ndarray) -> np.ndarray:
    """The participation ratio of activation variance over the last axis, ``(sum s^2)^2 / sum s^4``: how many
    neurons effectively carry the variance (``N`` when all carry it equally, 1 when one does, 0 when none varies).

    Neurons whose ``act_std`` is not finite (not seen since the last snapshot) are left out; NaN when none is
    finite.

    >>> participation_ratio(np.array([1.0, 1.0, 1.0, 1.0])).item(), participation_ratio(np.array([3.0, 0.0, 0.0])).item()
    (4.0, 1.0)
    >>> round(participation_ratio(np.array([2.0, 1.0])).item(), 4), participation_ratio(np.array([0.0, 0.0])).item()
    (1.4706, 0.0)
    >>> participation_ratio(np.array([[np.nan, np.nan], [1.0, np.nan]])).tolist()
    [nan, 1.0]
    """
    variance = np.square(np.asarray(act_std, dtype=np.float64))
    finite = np.isfinite(variance)
    variance = np.where(finite, variance, 0.0)
    total = variance.sum(axis=-1)
    squares = (variance * variance).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(squares > 0, total * total / squares, 0.0)
    return np.where(finite.any(axis=-1), ratio, np.nan)


def lyapunov(distance, initial, t):
    """The finite-time Lyapunov estimate ``ln(d(t) / d(0)) / t`` of two trajectories ``distance`` apart after ``t``
    epochs that started ``initial`` apart (arrays broadcast).

    Where the twins coincide (``d(t) = 0``, e.g. from identical weights) it is ``-inf``, never NaN; where they
    started identical but differ now it is ``+inf``. ``t`` must be positive.

    >>> float(lyapunov(np.e ** 2, 1.0, 2)), bool(lyapunov(0.5, 1.0, 1) == -np.log(2))
    (1.0, True)
    >>> lyapunov(np.array([0.0, 0.0, 1e-3]), np.array([0.0, 1e-6, 0.0]), 5).tolist()
    [-inf, -inf, inf]
    """
    distance = np.asarray(distance, dtype=np.float64)
    initial = np.asarray(initial, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    if (t <= 0).any():
        raise ValueError(f"t must be positive, got {t!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.log(distance / initial) / t
    coincide = distance == 0
    return np.where(coincide, -np.inf, np.where((initial == 0) & (distance > 0), np.inf, rate))


def early_index(epochs: int, fraction: float = 0.1) -> int:
    """The epoch (0-based) that ends the first ``fraction`` of ``epochs``: where the report reads "early" lambda.

    >>> early_index(1000), early_index(30), early_index(5)
    (99, 2, 0)
    """
    return max(0, math.ceil(fraction * epochs) - 1)


def frozen_fraction(participating_frac: float, dead_frac: float) -> float:
    """The fraction of neurons that fire but no longer participate: ``1 - dead - participating``.

    >>> round(frozen_fraction(0.0, 0.64), 6)
    0.36
    """
    return max(0.0, 1.0 - dead_frac - participating_frac)
