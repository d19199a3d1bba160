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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .reducibility import reduced_widths

__all__ = [
    "median",
    "DEFINITIONS",
    "Summary",
    "SUMMARIES",
    "SUMMARY_KEYS",
    "RENAMED",
    "RELU_KEYS",
    "summary_key",
    "summary_table",
    "Layout",
    "NETWORK_UNITS",
    "INPUT_COLUMNS",
    "DEFAULT_WINDOW",
    "DEFAULT_TAU",
    "window_std",
    "relative_fluctuation",
    "window_stats",
    "summarize",
    "participation_curve",
    "windows_of",
    "window_summaries",
    "restart_windows",
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

# What each quantity means, as the report prints it: our reading of the paper, which publishes no formula.
DEFINITIONS = (
    ("spread", "s[t, i] = w_std[t, i]: the population std of neuron i's incoming weights at snapshot t"),
    ("spread of the spread", "sos[i] = std over the window of s[t, i]"),
    ("relative fluctuation", "rel[i] = sos[i] / mean over the window of s[t, i] (0 where that mean is 0)"),
    ("bias fluctuation", "std over the window of bias[t, i]"),
    ("fires", "act_rate[t, i] > 0 at some snapshot t of the window (defined on relu(output): not applicable where "
              "another known activation follows the layer)"),
    ("dead", "act_rate[t, i] == 0 at every snapshot t of the window"),
    ("participates", "fires and rel[i] >= tau (tau_mode=absolute, the default); with tau_mode=relative, fires and "
                     "rel[i] / (mean over the layer's neurons of rel + 1e-9) >= tau_relative"),
    ("frozen", "fires but does not participate: still active, its weights no longer move (inactive, not dead)"),
    ("counted units", "network-level readings (flux/<key>, the report's 'network' rows) count the hidden units: every "
                      "watched layer but the output layer (the last watched), which is reported on its own line; "
                      "network_units=all counts every layer"),
    ("dormant (ReDo)", "s[i] = E|relu(out_i)| / (mean over the layer's neurons of E|relu(out_k)| + 1e-9) <= "
                       "dormant_tau (redo_dormant) or <= 0 (redo_dormant0), E over the samples since the previous "
                       "snapshot (Sokar et al. 2023)"),
    ("dormant (GraMa)", "g[i] = mean_j |dL/dW_ij| / (mean over the layer's neurons of the same + 1e-9) <= dormant_tau, "
                        "averaged over the gradient passes since the previous snapshot (Liu et al. 2025)"),
    ("dormant (GraMa, authors' reading)", "the same score from the last gradient pass before the snapshot, over every "
                                          "watched layer, the output included, a layer without a gradient counted "
                                          "as not dormant (GradientReDo._get_redo_masks)"),
    ("redundant partner", "for a hidden unit followed by ReLU, the unit j whose [incoming weights, bias] has the "
                          "largest cosine with its own (distance 1 - cos); followed by tanh, the unit j minimising "
                          "||v_i -+ v_j|| / ||v_i|| (equal or opposite)"),
    ("reduced width", "units of a layer left after merging units within eps of their partner and dropping units with "
                      "zero fan-out (outgoing weights' norm <= eps times the layer's mean) or zero incoming weights "
                      "(constant units), at eps = 0 (float32 rounding), 1e-3 and 1e-2"),
    ("diverged", "the loss rose above DIVERGENCE_FACTOR (2) times its own minimum after reaching it and ended there"),
    ("distance from start", "w_dist0[t, i] = ||w_i(t) - w_i(first snapshot)||: how far the incoming weights moved"),
    ("relative update", "w_step[t, i] / w_norm[t, i]: the last step's size against the weights' size"),
    ("finite-time Lyapunov exponents", "lambda_k = ln(R_kk / d0) / T per window of T epochs: twins a distance d0 "
                                       "apart, re-orthonormalised (QR) and set back to d0 after every window "
                                       "(Benettin's method)"),
    ("participation ratio", "PR = (sum_i act_std[i]^2)^2 / sum_i act_std[i]^4 at a snapshot: the effective number "
                            "of neurons that carry the layer's activation variance (N when all carry it equally, "
                            "1 when one does)"),
)
# Per-neuron columns taken over the whole window, and those taken at the window's last snapshot.
WINDOW_COLUMNS = ("w_std", "bias", "act_rate")
LAST_SNAPSHOT_COLUMNS = ("w_step", "w_norm", "w_dist0", "act_std", "act_relu_mean", "grad_abs_mean", "grad_abs_last",
                         "partner", "partner_distance", "fanout_rel")
# The per-neuron trace columns every summary here is computed from.
INPUT_COLUMNS = (*WINDOW_COLUMNS, *LAST_SNAPSHOT_COLUMNS)
DEFAULT_WINDOW = 10
DEFAULT_TAU = 1e-4
TAU_MODES = ("absolute", "relative")
DEFAULT_TAU_RELATIVE = 0.1
DEFAULT_DORMANT_TAU = 0.1  # the paper's (Sokar et al. 2023) tau > 0 setting; the reference code defaults to 0
DORMANT_EPSILON = 1e-9  # added to the layer's mean score, as the reference code does (dopamine estimate_neuron_score)
NETWORK_UNITS = ("hidden", "all")  # which units the network-level readings count
# Activations after which the readings defined on relu(output) are read (None: not known). Behind the ReLU-like ones
# (GELU, SiLU, ...) relu(output) stays the documented reading (docs/metrics.md); behind a bounded, odd or saturating
# one (tanh, sigmoid) "firing" and "dead" mean nothing, and those readings are not published.
RELU_FAMILY = (None, "relu", "leaky_relu", "gelu", "silu", "elu", "softplus")


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


@dataclass(frozen=True)
class Layout:
    """How a network's watched layers are read together: their names in the model's order, the activation known to
    follow each (None: not known), and which units the network-level readings count.

    ``network_units="hidden"`` (the default) counts every layer but the output layer, the last watched one (as ReDo
    leaves it out); a network of one layer counts it. ``"all"`` counts every layer.

    >>> layout = Layout(("fc1", "fc2", "out"), ("relu", "tanh", "sigmoid"))
    >>> layout.counted, layout.relu_readings(0), layout.relu_readings(1), layout.network_relu_readings
    ((0, 1), True, False, False)
    """

    names: tuple[str, ...]
    activations: tuple[str | None, ...] = ()
    network_units: str = "hidden"

    def __post_init__(self) -> None:
        if self.network_units not in NETWORK_UNITS:
            raise ValueError(f"network_units must be one of {', '.join(NETWORK_UNITS)}, got {self.network_units!r}")

    def activation(self, index: int) -> str | None:
        return self.activations[index] if index < len(self.activations) else None

    @property
    def counted(self) -> tuple[int, ...]:
        """The layers whose units the network-level readings count."""
        if self.network_units == "all" or len(self.names) <= 1:
            return tuple(range(len(self.names)))
        return tuple(range(len(self.names) - 1))

    def relu_readings(self, index: int) -> bool:
        """Whether firing, dead, participation and ReDo mean what they say for the layer: no activation other than
        ReLU is known to follow it."""
        return self.activation(index) in RELU_FAMILY

    @property
    def network_relu_readings(self) -> bool:
        return all(self.relu_readings(i) for i in self.counted)

    def not_relu(self, scope: str) -> bool:
        """Whether ``scope`` (a layer's name, or ``all``) has no relu-defined reading."""
        if scope == "all":
            return not self.network_relu_readings
        return scope in self.names and not self.relu_readings(self.names.index(scope))


@dataclass(frozen=True)
class Summary:
    """One summary key, logged as ``flux/<key>`` (the network's counted units) and ``flux/<layer>/<key>``.

    ``relu``: defined on relu(output) (firing, dead, ReDo): not published for a layer another known activation
    follows. ``source``: the definition it applies (a term of :data:`DEFINITIONS`, or a function here).
    """

    key: str
    meaning: str
    source: str
    relu: bool = False


SUMMARIES = (
    Summary("participating", "number of participating neurons in the window ending at that epoch", "participates",
            relu=True),
    Summary("participating_frac", "the same over the number of neurons judged in the window (a neuron reset inside it, "
                                  "by recycling, is not judged until it has a window of its own)", "participates",
            relu=True),
    Summary("dead_frac", "fraction of dead neurons among those judged in the window", "dead", relu=True),
    Summary("sos_median", "median spread of the spread", "spread of the spread"),
    Summary("bias_fluct_median", "median bias fluctuation", "bias fluctuation"),
    Summary("w_step_median", "median `w_step` at the window's last snapshot", "w_step (docs/traces.md)"),
    Summary("w_rel_step_median", "median relative update `w_step / w_norm` at the window's last snapshot",
            "relative update"),
    Summary("w_dist0_median", "median distance of the incoming weights from the first snapshot, `w_dist0`",
            "distance from start"),
    Summary("participation_ratio", "`(sum_i act_std_i^2)^2 / sum_i act_std_i^4` at the window's last snapshot: the "
                                   "effective number of neurons carrying the activation variance",
            "participation ratio"),
    Summary("redo_dormant_frac", "ReDo's tau-dormant fraction at `dormant_tau` (default 0.1), at the window's last "
                                 "snapshot", "dormant (ReDo)", relu=True),
    Summary("redo_dormant0_frac", "the same at tau = 0: neurons with no activity at all", "dormant (ReDo)", relu=True),
    Summary("grama_dormant_frac", "GraMa's gradient-dormant fraction at `dormant_tau`, averaged over the gradient "
                                  "passes since the previous snapshot", "dormant (GraMa)"),
    Summary("grama_ref_dormant_frac", "GraMa's fraction as its authors' code counts it: the last gradient pass, every "
                                      "layer, the output included (`flux/<key>` ignores `network_units`)",
            "dormant (GraMa, authors' reading)"),
    Summary("reduced_width_0", "units left after merging exact duplicates (ReLU: positively proportional; tanh: equal "
                               "or opposite) and dropping zero fan-out and constant units", "reduced width"),
    Summary("reduced_width_1e-3", "the same, merging units within 1e-3 of their partner", "reduced width"),
    Summary("reduced_width_1e-2", "the same within 1e-2", "reduced width"),
)
SUMMARY_KEYS = tuple(summary.key for summary in SUMMARIES)
RELU_KEYS = tuple(summary.key for summary in SUMMARIES if summary.relu)
# Keys logged before the counted units were named by role (still read, e.g. in layer_metrics).
RENAMED = {"dormant_frac": "redo_dormant_frac", "dormant0_frac": "redo_dormant0_frac",
           "grama_frac": "grama_dormant_frac"}
REDUCED_EPSILONS = {"reduced_width_0": 0.0, "reduced_width_1e-3": 1e-3, "reduced_width_1e-2": 1e-2}


def summary_key(name: str) -> str:
    """A summary's key under its current name (a renamed one's old name still reads).

    >>> summary_key("dormant0_frac"), summary_key("sos_median")
    ('redo_dormant0_frac', 'sos_median')
    """
    return RENAMED.get(name, name)


def summary_table() -> str:
    """docs/metrics.md's table of the summary keys (a test keeps the docs equal to it)."""
    rows = [f"| `{s.key}` | {s.meaning}{' (ReLU readings only)' if s.relu else ''} | {s.source} |" for s in SUMMARIES]
    return "\n".join(["| key | meaning | definition |", "| --- | --- | --- |", *rows])


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
    return _window_mean_std(x)[1]


def _window_mean_std(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`window_std` and the mean it is taken around, both float64, from float32 or float64 values.

    The sums are taken in float64 (``dtype=``) rather than over a float64 copy of ``x``, and the deviations squared
    in place: the same additions in the same order (bit-identical), two ``(..., W, N)`` temporaries fewer.
    """
    x = np.asarray(x)
    width = x.shape[-2]
    mean = x.sum(axis=-2, dtype=np.float64) / width
    dev = np.subtract(x, mean[..., None, :], dtype=np.float64)
    np.multiply(dev, dev, out=dev)
    return mean, np.sqrt(dev.sum(axis=-2) / width)


def relative_fluctuation(spread: np.ndarray) -> np.ndarray:
    """Spread of the spread over the mean spread, per neuron: ``std_t(s) / mean_t(s)``, 0 where the mean is 0.

    Args:
        spread: ``(..., W, N)`` per-neuron spreads (``w_std``) over a window of snapshots.

    Returns:
        ``(..., N)`` float64 relative fluctuations.

    >>> relative_fluctuation(np.array([[1.0, 2.0], [3.0, 2.0]]))
    array([0.5, 0. ])
    """
    return _spread_fluctuation(spread)[1]


def _spread_fluctuation(spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The spread of the spread (:func:`window_std`) and the relative fluctuation, from one mean and std."""
    mean, sos = _window_mean_std(spread)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sos, np.where(mean != 0, sos / mean, 0.0)


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
    sos, rel = _spread_fluctuation(spread)
    fires = (act_rate > 0).any(axis=-2)
    return {
        "sos": sos,
        "rel": rel,
        "bias_fluct": window_std(bias),
        "fires": fires,
        "dead": (act_rate == 0).all(axis=-2),
        "participating": _participating(rel, fires, thresholds, sizes),
        # A unit judged in this window: one with a value at every snapshot. A unit reset inside the window
        # (restart_windows) is not, and counts in no fraction's numerator or denominator.
        "judged": np.isfinite(act_rate).all(axis=-2),
    }


def _participating(rel: np.ndarray, fires: np.ndarray, thresholds: Thresholds, sizes: list[int] | None) -> np.ndarray:
    """Which neurons participate: they fire, and their relative fluctuation (against their layer's mean, in the
    relative mode) reaches the threshold."""
    judged = layer_normalized(rel, sizes) if thresholds.relative else rel
    return fires & (judged >= thresholds.participation_tau)


def participation_curve(layers: Mapping[str, Mapping[str, np.ndarray]], thresholds: list[Thresholds],
                        layout: Layout | None = None) -> np.ndarray:
    """The fraction of the network's counted units that participate in each of ``B`` windows, under each of
    ``thresholds``: ``summarize(layers, t, layout)["all/participating_frac"]`` for every ``t``, with the windows'
    statistics computed once (a curve over dozens of thresholds would compute every summary dozens of times).

    Args:
        layers: as :func:`summarize` takes them (only ``w_std``, ``bias`` and ``act_rate`` are read).
        thresholds: the thresholds to judge participation with.
        layout: the layers' activations and counted units (default: as :class:`Layout` reads ``layers``' names).

    Returns:
        ``(len(thresholds), B)`` float64 fractions (NaN where a relu reading does not apply).

    >>> s = np.array([[[1.0, 1.0], [3.0, 1.0]]])     # neuron 0's spread moves (rel 0.5), neuron 1's does not
    >>> layer = {"w_std": s, "bias": np.zeros_like(s), "act_rate": np.ones_like(s)}
    >>> participation_curve({"fc": layer}, [Thresholds(tau=0.1), Thresholds(tau=1.0)]).tolist()
    [[0.5], [0.0]]
    """
    if not layers:
        raise ValueError("participation_curve needs at least one layer")
    names = list(layers)
    layout = layout if layout is not None else Layout(tuple(names))
    counted = [names[i] for i in layout.counted]
    joined = {key: np.concatenate([np.asarray(layers[name][key]) for name in counted], axis=-1)
              for key in WINDOW_COLUMNS}
    sizes = [np.shape(layers[name]["w_std"])[-1] for name in counted]
    stats = window_stats(joined["w_std"], joined["bias"], joined["act_rate"], thresholds[0], sizes)
    n = sum(sizes)
    curve = np.stack([_participating(stats["rel"], stats["fires"], t, sizes).sum(axis=-1).astype(np.float64) / n
                      for t in thresholds])
    return curve if layout.network_relu_readings else np.full_like(curve, np.nan)


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


def summarize(layers: Mapping[str, Mapping[str, np.ndarray]], tau: float | Thresholds = DEFAULT_TAU,
              layout: Layout | None = None) -> dict[str, np.ndarray]:
    """Summaries per layer and over the network's counted units, for ``B`` windows at once.

    Args:
        layers: per layer name, in the model's order, ``(B, W, N)`` arrays ``w_std``, ``bias``, ``act_rate`` and
            ``(B, N)`` arrays of :data:`LAST_SNAPSHOT_COLUMNS` (at each window's last snapshot; one missing gives
            NaN summaries for what needs it).
        tau: participation threshold, or the run's :class:`Thresholds`.
        layout: the layers' activations and which units the network counts (default: every layer but the last, no
            activation known).

    Returns:
        ``(B,)`` float64 arrays keyed ``"<layer>/<key>"`` and ``"all/<key>"`` for each key of
        :data:`SUMMARY_KEYS`; ``all`` is the network's counted units (:attr:`Layout.counted`). Medians ignore
        non-finite values; a relu reading is NaN where another known activation follows a layer.

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
    layout = layout if layout is not None else Layout(tuple(names))
    return _summarize_joined(names, [np.shape(layers[name]["w_std"])[-1] for name in names], joined, tau, layout)


def _summarize_joined(names: list[str], sizes: list[int], joined: Mapping[str, np.ndarray],
                      tau: float | Thresholds, layout: Layout, readings: bool = False) -> dict[str, np.ndarray]:
    """:func:`summarize` on every layer's neurons side by side (``sizes`` neurons each, in ``names`` order).

    Every per-neuron quantity is computed once for all layers (they are elementwise along the window), then summed
    or reduced to medians per layer: the same numbers as layer by layer, in a tenth of the numpy calls. With
    ``readings``, also the network's participating fraction under both tau modes (``all/participating_frac_absolute``
    and ``..._relative``), from the same window statistics.
    """
    thresholds = Thresholds.of(tau)
    stats = window_stats(joined["w_std"], joined["bias"], joined["act_rate"], thresholds, sizes)
    w_step = np.asarray(joined["w_step"])
    rel_step = relative_update(w_step, joined["w_norm"])
    w_dist0 = np.asarray(joined["w_dist0"])  # as recorded (float32): its median is taken the fast, exact way
    act_std = np.asarray(joined["act_std"], dtype=np.float64)
    # Per neuron, once: the ReDo and GraMa masks against each one's layer, and where each score is defined.
    dormancy = {}
    for key, column, dormant_tau in (("redo_dormant_frac", "act_relu_mean", thresholds.dormant_tau),
                                     ("redo_dormant0_frac", "act_relu_mean", 0.0),
                                     ("grama_dormant_frac", "grad_abs_mean", thresholds.dormant_tau),
                                     ("grama_ref_dormant_frac", "grad_abs_last", thresholds.dormant_tau)):
        scores = np.asarray(joined[column], dtype=np.float64)
        dormancy[key] = (dormant_mask(scores, dormant_tau, sizes), np.isfinite(scores))
    widths = dict(zip(REDUCED_EPSILONS, reduced_widths(joined["partner"], joined["partner_distance"],
                                                      joined["fanout_rel"], joined["w_norm"], sizes,
                                                      list(REDUCED_EPSILONS.values()))))
    bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    scopes = [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    out: dict[str, np.ndarray] = {}
    for index, (name, rows) in enumerate(zip(names, scopes)):
        _scope_summaries(out, name, [rows], stats, w_step, rel_step, w_dist0, act_std, layout.relu_readings(index))
        for key, (mask, defined) in dormancy.items():
            fraction = mask[..., rows].sum(axis=-1) / (rows.stop - rows.start)
            if key.startswith("grama_ref"):  # the authors' code: a layer without a gradient has no dormant unit
                out[f"{name}/{key}"] = np.where(defined[..., rows].all(axis=-1), fraction, 0.0)
            elif key.startswith("redo") and not layout.relu_readings(index):
                out[f"{name}/{key}"] = np.full(np.shape(fraction), np.nan)
            else:
                out[f"{name}/{key}"] = np.where(defined[..., rows].all(axis=-1), fraction, np.nan)
        for key, width in widths.items():
            out[f"{name}/{key}"] = width[index]
    counted = [slice(0, int(bounds[len(layout.counted)]))]  # the counted layers are always the first ones
    _scope_summaries(out, "all", counted, stats, w_step, rel_step, w_dist0, act_std, layout.network_relu_readings)
    for key, (mask, defined) in dormancy.items():
        if key.startswith("grama_ref"):  # every layer, the output included; no gradient: not dormant
            units = sum(rows.stop - rows.start for rows in scopes)
            dormant = sum(np.where(defined[..., rows].all(axis=-1), mask[..., rows].sum(axis=-1), 0) for rows in scopes)
            out[f"all/{key}"] = dormant / units
            continue
        if key.startswith("redo") and not layout.network_relu_readings:
            out[f"all/{key}"] = np.full(np.shape(mask)[:-1], np.nan)
            continue
        # The counted layers whose score is defined (a layer whose weights get no gradient has no GraMa score).
        dormant = np.zeros(np.shape(mask)[:-1])
        total = np.zeros(np.shape(mask)[:-1])
        for rows in counted:
            layer_defined = defined[..., rows].all(axis=-1)
            dormant = dormant + np.where(layer_defined, mask[..., rows].sum(axis=-1), 0)
            total = total + np.where(layer_defined, rows.stop - rows.start, 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"all/{key}"] = np.where(total > 0, dormant / total, np.nan)
    for key, width in widths.items():
        out[f"all/{key}"] = sum(width[i] for i in layout.counted)
    if readings:
        counted_sizes = [sizes[i] for i in layout.counted]
        for mode in TAU_MODES:
            judged = replace(thresholds, tau_mode=mode)
            part = _participating(stats["rel"][..., counted[0]], stats["fires"][..., counted[0]], judged,
                                  counted_sizes)
            with np.errstate(divide="ignore", invalid="ignore"):
                units = stats["judged"][..., counted[0]].sum(axis=-1)
                fraction = np.where(units > 0, part.sum(axis=-1) / units, np.nan)
            out[f"all/participating_frac_{mode}"] = (fraction if layout.network_relu_readings
                                                     else np.full(np.shape(fraction), np.nan))
    return out


def _scope_summaries(out: dict, scope: str, parts: list[slice], stats: Mapping[str, np.ndarray], w_step: np.ndarray,
                     rel_step: np.ndarray, w_dist0: np.ndarray, act_std: np.ndarray, relu: bool) -> None:
    """The summaries of one scope (a layer, or the network's counted layers) into ``out``."""
    def pick(values: np.ndarray) -> np.ndarray:
        return values[..., parts[0]] if len(parts) == 1 else np.concatenate([values[..., p] for p in parts], axis=-1)

    # Fractions of the units judged in the window: a unit reset inside it is neither participating, frozen (the
    # complement of the two) nor dead until it has a window of its own.
    judged = pick(stats["judged"]).sum(axis=-1)
    participating = pick(stats["participating"]).sum(axis=-1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        dead = np.where(judged > 0, pick(stats["dead"]).sum(axis=-1) / judged, np.nan)
        participating_frac = np.where(judged > 0, participating / judged, np.nan)
    if not relu:
        participating = np.full(np.shape(participating), np.nan)
        participating_frac = np.full(np.shape(participating), np.nan)
        dead = np.full(np.shape(dead), np.nan)
    out[f"{scope}/participating"] = participating
    out[f"{scope}/participating_frac"] = participating_frac
    out[f"{scope}/dead_frac"] = dead
    out[f"{scope}/sos_median"] = median(pick(stats["sos"]))
    out[f"{scope}/bias_fluct_median"] = median(pick(stats["bias_fluct"]))
    out[f"{scope}/w_step_median"] = median(pick(w_step))
    out[f"{scope}/w_rel_step_median"] = median(pick(rel_step))
    out[f"{scope}/w_dist0_median"] = median(pick(w_dist0))
    out[f"{scope}/participation_ratio"] = participation_ratio(pick(act_std))


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


def window_summaries(layers: dict, window: int, tau: float | Thresholds, layout: Layout | None = None,
                     readings: bool = False, restarts: Sequence[tuple[int, int]] = ()) -> dict[str, np.ndarray]:
    """:func:`summarize` over every run of ``window`` consecutive snapshots of per-layer ``(E, N)`` arrays.

    The recorder calls it live on exactly ``window`` snapshots (one window, no pandas in the training loop); the
    report calls it through :func:`mlflow_flux.reshape.summaries_from_arrays` on whole runs. The layers are put side
    by side before the windows are cut, so each window array is built once.

    ``restarts``: ``(snapshot index, unit)`` pairs, the unit's position among all layers side by side: the unit was
    reset at that snapshot, and its window starts again after it (:func:`restart_windows`).
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 snapshots, got {window}")
    if not layers:
        raise ValueError("summarize needs at least one layer")
    names = list(layers)
    side_by_side = {key: np.concatenate([_column(layers[name], key) for name in names], axis=-1)
                    for key in INPUT_COLUMNS}
    joined = {key: windows_of(side_by_side[key], window) for key in WINDOW_COLUMNS}
    if restarts:
        restart_windows({key: joined[key] for key in WINDOW_COLUMNS}, restarts, window)
    joined.update({key: side_by_side[key][window - 1 :] for key in LAST_SNAPSHOT_COLUMNS})
    layout = layout if layout is not None else Layout(tuple(names))
    return _summarize_joined(names, [np.shape(layers[name]["w_std"])[-1] for name in names], joined, tau, layout,
                             readings)


def restart_windows(windows: Mapping[str, np.ndarray], restarts: Sequence[tuple[int, int]], window: int) -> None:
    """A unit reset at snapshot ``s`` has no history before its new weights: in every window that ends at ``s`` or
    later and holds ``s``, its values up to ``s`` become NaN (it is then neither participating, frozen nor dead
    until it has a window of its own). In place, on ``(windows, window, units)`` arrays whose first window ends at
    snapshot ``window - 1``.

    >>> w = {"act_rate": np.ones((3, 2, 1))}          # windows ending at snapshots 1, 2, 3
    >>> restart_windows(w, [(2, 0)], 2)
    >>> w["act_rate"][:, :, 0].tolist()
    [[1.0, 1.0], [nan, nan], [nan, 1.0]]
    """
    count = next(iter(windows.values())).shape[0]
    for snapshot, unit in restarts:
        # Window i covers snapshots i .. i + window - 1: those that hold the reset snapshot.
        for first in range(max(0, snapshot - window + 1), min(snapshot, count - 1) + 1):
            for values in windows.values():
                values[first, : snapshot - first + 1, unit] = np.nan


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
