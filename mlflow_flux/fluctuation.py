"""Fluctuation summaries: pure functions from per-neuron traces to numbers.

No torch, no MLflow, no I/O. The recorder calls these live on a window of the latest snapshots, and the
comparison report calls them offline on traces read back from Parquet, so the two can never disagree: both pass
float32 trace values arranged as ``(windows, window, neurons)`` arrays through the same code.

Definitions (our reading of arXiv 2511.10435, which publishes no formula) are in :data:`DEFINITIONS` and
docs/metrics.md.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

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
    "participation_curve",
    "windows_of",
    "window_summaries",
    "frozen_fraction",
    "relative_update",
    "participation_ratio",
    "WINDOW_COLUMNS",
    "LAST_SNAPSHOT_COLUMNS",
    "Thresholds",
    "TAU_MODES",
    "DEFAULT_TAU_RELATIVE",
    "DEFAULT_DORMANT_TAU",
    "DORMANT_EPSILON",
    "layer_normalized",
    "dormant_mask",
    "dormant_fraction",
]

# Names that moved to rooms of their own (reshaping traces, training dynamics): still importable from here.
_MOVED = dict.fromkeys(("layer_arrays", "summaries_from_arrays", "summaries_over_epochs"), "mlflow_flux.reshape")
_MOVED.update(dict.fromkeys(("DIVERGENCE_FACTOR", "Divergence", "divergence", "lyapunov", "early_index"),
                            "mlflow_flux.dynamics"))


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# What each quantity means, as the report prints it: our reading of the paper, which publishes no formula.
DEFINITIONS = (
    ("spread", "s[t, i] = w_std[t, i]: the population std of neuron i's incoming weights at snapshot t"),
    ("spread of the spread", "sos[i] = std over the window of s[t, i]"),
    ("relative fluctuation", "rel[i] = sos[i] / mean over the window of s[t, i] (0 where that mean is 0)"),
    ("bias fluctuation", "std over the window of bias[t, i]"),
    ("fires", "act_rate[t, i] > 0 at some snapshot t of the window"),
    ("dead", "act_rate[t, i] == 0 at every snapshot t of the window"),
    ("participates", "fires and rel[i] >= tau (tau_mode=absolute, the default); with tau_mode=relative, fires and "
                     "rel[i] / (mean over the layer's neurons of rel + 1e-9) >= tau_relative"),
    ("frozen", "fires but does not participate: still active, its weights no longer move (inactive, not dead)"),
    ("dormant (ReDo)", "s[i] = E|relu(out_i)| / (mean over the layer's neurons of E|relu(out_k)| + 1e-9) <= "
                       "dormant_tau, E over the samples since the previous snapshot (Sokar et al. 2023); the network "
                       "fraction leaves the output layer (the last watched) out"),
    ("dormant (GraMa)", "g[i] = mean_j |dL/dW_ij| / (mean over the layer's neurons of the same + 1e-9) <= dormant_tau, "
                        "averaged over the gradient passes since the previous snapshot (Liu et al. 2025)"),
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
LAST_SNAPSHOT_COLUMNS = ("w_step", "w_norm", "w_dist0", "act_std", "act_relu_mean", "grad_abs_mean")
# The per-neuron trace columns every summary here is computed from.
INPUT_COLUMNS = (*WINDOW_COLUMNS, *LAST_SNAPSHOT_COLUMNS)
DEFAULT_WINDOW = 10
DEFAULT_TAU = 1e-4
TAU_MODES = ("absolute", "relative")
DEFAULT_TAU_RELATIVE = 0.1
DEFAULT_DORMANT_TAU = 0.1  # the paper's (Sokar et al. 2023) tau > 0 setting; the reference code defaults to 0
DORMANT_EPSILON = 1e-9  # added to the layer's mean score, as the reference code does (dopamine estimate_neuron_score)


@dataclass(frozen=True)
class Thresholds:
    """The thresholds the summaries apply: participation (absolute ``tau`` on the relative fluctuation, or
    ``tau_relative`` on it against the layer's mean with ``tau_mode="relative"``) and dormancy (``dormant_tau`` on
    the ReDo and GraMa scores; tau = 0 is always reported as well).

    >>> Thresholds().relative, Thresholds(tau_mode="relative").participation_tau
    (False, 0.1)
    """

    tau: float = DEFAULT_TAU
    tau_mode: str = "absolute"
    tau_relative: float = DEFAULT_TAU_RELATIVE
    dormant_tau: float = DEFAULT_DORMANT_TAU

    def __post_init__(self) -> None:
        for name in ("tau", "tau_relative"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (self.dormant_tau >= 0 and math.isfinite(self.dormant_tau)):
            raise ValueError(f"dormant_tau must be a number >= 0, got {self.dormant_tau!r}")
        if self.tau_mode not in TAU_MODES:
            raise ValueError(f"tau_mode must be one of {', '.join(TAU_MODES)}, got {self.tau_mode!r}")

    @property
    def relative(self) -> bool:
        return self.tau_mode == "relative"

    @property
    def participation_tau(self) -> float:
        """The threshold participation is judged with, in its mode's units."""
        return self.tau_relative if self.relative else self.tau

    @staticmethod
    def of(tau: float | Thresholds) -> Thresholds:
        """A bare number is today's absolute tau."""
        return tau if isinstance(tau, Thresholds) else Thresholds(tau=float(tau))

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
    "dormant_frac",
    "dormant0_frac",
    "grama_frac",
)


WINDOW_BLOCK = 1 << 20  # values of the windows window_stats works on at once


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
    spread: np.ndarray, bias: np.ndarray, act_rate: np.ndarray, tau: float | Thresholds = DEFAULT_TAU,
    sizes: list[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-neuron statistics of one layer (or of ``sizes`` layers side by side) over windows of snapshots.

    Args:
        spread: ``(B, W, N)`` ``w_std`` values: ``B`` windows of ``W`` snapshots of ``N`` neurons.
        bias: ``(B, W, N)`` biases (NaN for a layer without bias).
        act_rate: ``(B, W, N)`` fractions of positive outputs.
        tau: participation threshold on the relative fluctuation, or the run's :class:`Thresholds`.
        sizes: the neurons of each layer when several lie side by side (a relative threshold is judged per layer).

    Returns:
        ``(B, N)`` arrays: ``sos``, ``rel``, ``bias_fluct`` (float64), ``fires``, ``dead``, ``participating`` (bool).

    >>> s = np.array([[[1.0, 1.0], [3.0, 1.0]]])     # neuron 0's spread moves, neuron 1's does not
    >>> r = np.array([[[0.5, 0.2], [0.0, 0.0]]])     # both fire in the first snapshot
    >>> stats = window_stats(s, np.zeros_like(s), r, tau=0.1)
    >>> stats["participating"].tolist(), stats["dead"].tolist()
    ([[True, False]], [[False, False]])
    >>> # against the layer: rel = [0.5, 0], its mean 0.25; neuron 0 is at 2.0 x the mean, neuron 1 at 0 x
    >>> window_stats(s, np.zeros_like(s), r, Thresholds(tau_mode="relative", tau_relative=1.5))["participating"]
    array([[ True, False]])
    """
    try:
        thresholds = Thresholds.of(tau)
    except ValueError:
        raise ValueError(f"tau must be a positive number, got {tau!r}") from None
    act_rate = np.asarray(act_rate)
    spread, bias = np.asarray(spread), np.asarray(bias)
    step = max(1, WINDOW_BLOCK // max(1, math.prod(spread.shape[1:])))
    if spread.ndim == 3 and step < len(spread):
        # Many windows (a whole trace's) in blocks: each window's arithmetic is the same, and the float64 temporaries
        # stay a few MB instead of several copies of (windows x W x N) (a 1000-epoch atlas trace's took ~2 s of page
        # faults per call).
        parts = [window_stats(spread[a:a + step], bias[a:a + step], act_rate[a:a + step], thresholds, sizes)
                 for a in range(0, len(spread), step)]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
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
        "participating": _participating(rel, fires, thresholds, sizes),
    }


def _participating(rel: np.ndarray, fires: np.ndarray, thresholds: Thresholds, sizes: list[int] | None) -> np.ndarray:
    """Which neurons participate: they fire, and their relative fluctuation (against their layer's mean, in the
    relative mode) reaches the threshold."""
    judged = layer_normalized(rel, sizes) if thresholds.relative else rel
    return fires & (judged >= thresholds.participation_tau)


def participation_curve(layers: Mapping[str, Mapping[str, np.ndarray]],
                        thresholds: list[Thresholds]) -> np.ndarray:
    """The fraction of all neurons that participate in each of ``B`` windows, under each of ``thresholds``:
    ``summarize(layers, t)["all/participating_frac"]`` for every ``t``, with the windows' statistics computed once (a
    curve over dozens of thresholds would compute every summary dozens of times).

    Args:
        layers: as :func:`summarize` takes them (only ``w_std``, ``bias`` and ``act_rate`` are read).
        thresholds: the thresholds to judge participation with.

    Returns:
        ``(len(thresholds), B)`` float64 fractions.

    >>> s = np.array([[[1.0, 1.0], [3.0, 1.0]]])     # neuron 0's spread moves (rel 0.5), neuron 1's does not
    >>> layer = {"w_std": s, "bias": np.zeros_like(s), "act_rate": np.ones_like(s)}
    >>> participation_curve({"fc": layer}, [Thresholds(tau=0.1), Thresholds(tau=1.0)]).tolist()
    [[0.5], [0.0]]
    """
    if not layers:
        raise ValueError("participation_curve needs at least one layer")
    names = list(layers)
    joined = {key: np.concatenate([np.asarray(layers[name][key]) for name in names], axis=-1)
              for key in WINDOW_COLUMNS}
    sizes = [np.shape(layers[name]["w_std"])[-1] for name in names]
    stats = window_stats(joined["w_std"], joined["bias"], joined["act_rate"], thresholds[0], sizes)
    n = sum(sizes)
    return np.stack([_participating(stats["rel"], stats["fires"], t, sizes).sum(axis=-1).astype(np.float64) / n
                     for t in thresholds])


def _layer_means(values: np.ndarray, sizes: list[int] | None) -> np.ndarray:
    """Each neuron's layer mean over the last axis, for ``sizes`` layers side by side (one layer: ``None``)."""
    if sizes is None or len(sizes) <= 1:
        return values.sum(axis=-1, keepdims=True) / values.shape[-1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    means = np.add.reduceat(values, starts, axis=-1) / np.asarray(sizes)
    return np.repeat(means, sizes, axis=-1)


def layer_normalized(scores: np.ndarray, sizes: list[int] | None = None) -> np.ndarray:
    """Each neuron's score against its layer's mean score, ``s_i / ((1/H) sum_k s_k + 1e-9)``: ReDo's and GraMa's
    normalisation (the reference code adds the 1e-9), also the relative participation threshold's.

    Args:
        scores: ``(..., N)`` non-negative per-neuron scores: ``act_relu_mean`` (ReDo), ``grad_abs_mean`` (GraMa).
        sizes: the neurons of each layer when several lie side by side on the last axis.

    >>> layer_normalized(np.array([0.0, 1.0, 2.0, 5.0])).round(6).tolist()  # the layer's mean is 2
    [0.0, 0.5, 1.0, 2.5]
    >>> layer_normalized(np.array([1.0, 3.0, 4.0]), sizes=[2, 1]).round(6).tolist()  # means 2 and 4
    [0.5, 1.5, 1.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    return scores / (_layer_means(scores, sizes) + DORMANT_EPSILON)


def dormant_mask(scores: np.ndarray, tau: float, sizes: list[int] | None = None) -> np.ndarray:
    """The tau-dormant neurons: normalised score ``<= tau`` (Sokar et al. 2023, eq. 1; tau = 0: those whose score is
    exactly 0, a ReLU that never fired).

    >>> dormant_mask(np.array([0.0, 0.1, 1.0, 2.9]), 0.1).tolist()  # normalised: 0, 0.1, 1, 2.9
    [True, True, False, False]
    >>> dormant_mask(np.array([0.0, 0.1, 1.0, 2.9]), 0.0).tolist()
    [True, False, False, False]
    """
    return layer_normalized(scores, sizes) <= tau


def dormant_fraction(scores: np.ndarray, tau: float) -> np.ndarray:
    """The fraction of one layer's neurons (last axis) that are tau-dormant; NaN where a score is not defined (no
    sample or gradient since the previous snapshot).

    >>> dormant_fraction(np.array([[0.0, 0.1, 1.0, 2.9], [0.0, np.nan, 1.0, 1.0]]), 0.1).tolist()
    [0.5, nan]
    """
    scores = np.asarray(scores, dtype=np.float64)
    defined = np.isfinite(scores).all(axis=-1)
    fraction = dormant_mask(scores, tau).sum(axis=-1) / scores.shape[-1]
    return np.where(defined, fraction, np.nan)[()]


def median(x: np.ndarray) -> np.ndarray:
    """Median over the last axis, as float64, ignoring non-finite values (NaN where none is finite).

    Without ``np.median``'s general machinery (~80 us a call, which adds up over every layer of every snapshot), and
    by the fastest exact route: float32 values are sorted (numpy sorts them with SIMD, ~9x faster than a partition
    of a report's (epochs, neurons) arrays) and the middle pair averaged in float64, the same number as the median of
    the values converted first; float64 values are partitioned once at the upper middle, the lower middle being the
    largest value below it. A NaN (a diverged neuron, a layer without bias) must not turn a layer's median into NaN.

    >>> float(median(np.array([3.0, 1.0, np.nan, 2.0]))), median(np.array([[4.0, 1.0, 2.0, 3.0]])).tolist()
    (2.0, [2.5])
    >>> median(np.array([[1.0, 2.0], [0.5, 0.25]], dtype=np.float32)).tolist()
    [1.5, 0.375]
    """
    x = np.asarray(x)
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], np.nan)
    finite_mask = np.isfinite(x)
    if not finite_mask.all():
        x = np.asarray(x, dtype=np.float64)
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
    if x.dtype == np.float32:
        ordered = np.sort(x, axis=-1)
        upper = ordered[..., middle].astype(np.float64)
        lower = ordered[..., middle - 1].astype(np.float64) if n % 2 == 0 else upper
    else:
        part = np.partition(np.asarray(x, dtype=np.float64), middle, axis=-1)
        upper = part[..., middle]
        lower = part[..., :middle].max(axis=-1) if n % 2 == 0 else upper
    if n % 2:
        return upper[()]  # [()]: a scalar, not a 0-d array, for 1-d input
    return ((lower + upper) / 2)[()]


def summarize(
    layers: Mapping[str, Mapping[str, np.ndarray]], tau: float | Thresholds = DEFAULT_TAU
) -> dict[str, np.ndarray]:
    """Summaries per layer and over all layers, for ``B`` windows at once.

    Args:
        layers: per layer name, in the model's order, ``(B, W, N)`` arrays ``w_std``, ``bias``, ``act_rate`` and
            ``(B, N)`` arrays of :data:`LAST_SNAPSHOT_COLUMNS` (at each window's last snapshot; one missing gives
            NaN summaries for what needs it).
        tau: participation threshold, or the run's :class:`Thresholds`.

    Returns:
        ``(B,)`` float64 arrays keyed ``"<layer>/<key>"`` and ``"all/<key>"`` for each key of
        :data:`SUMMARY_KEYS`. Medians ignore non-finite values. The dormant fractions over ``all`` leave the last
        layer out, as ReDo leaves out the output layer.

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
                      tau: float | Thresholds) -> dict[str, np.ndarray]:
    """:func:`summarize` on every layer's neurons side by side (``sizes`` neurons each, in ``names`` order).

    Every per-neuron quantity is computed once for all layers (they are elementwise along the window), then summed
    or reduced to medians per layer: the same numbers as layer by layer, in a tenth of the numpy calls.
    """
    thresholds = Thresholds.of(tau)
    stats = window_stats(joined["w_std"], joined["bias"], joined["act_rate"], thresholds, sizes)
    w_step = np.asarray(joined["w_step"])
    rel_step = relative_update(w_step, joined["w_norm"])
    w_dist0 = np.asarray(joined["w_dist0"])  # as recorded (float32): its median is taken the fast, exact way
    act_std = np.asarray(joined["act_std"], dtype=np.float64)
    # ReDo's and GraMa's scores against each one's layer; a layer with an undefined score has no fraction.
    dormancy = {}
    for key, column, dormant_tau in (("dormant_frac", "act_relu_mean", thresholds.dormant_tau),
                                     ("dormant0_frac", "act_relu_mean", 0.0),
                                     ("grama_frac", "grad_abs_mean", thresholds.dormant_tau)):
        scores = np.asarray(joined[column], dtype=np.float64)
        dormancy[key] = (dormant_mask(scores, dormant_tau, sizes), np.isfinite(scores))
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
        if name != "all":
            for key, (mask, defined) in dormancy.items():
                fraction = mask[..., rows].sum(axis=-1) / n
                out[f"{name}/{key}"] = np.where(defined[..., rows].all(axis=-1), fraction, np.nan)
    # Over the network: every layer but the output (the last) whose score is defined, as ReDo counts it.
    counted = scopes[:-1] if len(scopes) > 1 else scopes
    for key, (mask, defined) in dormancy.items():
        dormant = np.zeros(np.shape(mask)[:-1])
        total = np.zeros(np.shape(mask)[:-1])
        for _, rows in counted:
            layer_defined = defined[..., rows].all(axis=-1)
            dormant = dormant + np.where(layer_defined, mask[..., rows].sum(axis=-1), 0)
            total = total + np.where(layer_defined, rows.stop - rows.start, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"all/{key}"] = np.where(total > 0, dormant / total, np.nan)
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


def _column(arrays: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    """One layer's ``(E, N)`` column, or NaN for a column the trace does not hold (written before it existed)."""
    if key in arrays:
        return np.asarray(arrays[key])
    return np.full(np.shape(arrays["w_std"]), np.nan, dtype=np.float32)


def window_summaries(layers: dict, window: int, tau: float | Thresholds) -> dict[str, np.ndarray]:
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

    >>> ratio = participation_ratio
    >>> ratio(np.array([1.0, 1.0, 1.0, 1.0])).item(), ratio(np.array([3.0, 0.0, 0.0])).item()
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


def frozen_fraction(participating_frac: float, dead_frac: float) -> float:
    """The fraction of neurons that fire but no longer participate: ``1 - dead - participating`` (NaN where either
    is: a run without a full window).

    >>> round(frozen_fraction(0.0, 0.64), 6), frozen_fraction(float("nan"), 0.5)
    (0.36, nan)
    """
    if math.isnan(participating_frac) or math.isnan(dead_frac):
        return math.nan
    return max(0.0, 1.0 - dead_frac - participating_frac)
