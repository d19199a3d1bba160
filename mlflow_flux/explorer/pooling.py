"""What the explorer draws, from a trace read in order of its snapshots: pure numpy, memory flat in the number of
snapshots.

A :class:`TracePooler` takes the trace a chunk of snapshots at a time (as ``reshape.layer_arrays`` gives it), from its
file or as the run writes it (the total then unknown), and keeps, per layer:

- every trace column pooled into at most ``max_bins`` bins of consecutive snapshots (the mean of a bin's finite
  values; a bin of one snapshot is the trace's value itself). A bin holds a power of two of snapshots: fed as the run
  goes, the pooler doubles the width by merging pairs of bins when the next snapshot would not fit, and ends with the
  width a pooler told the total from the start picks (:func:`bin_width`), so both draw the same page;
- each neuron's state in the window that ends at each snapshot (participating, frozen, dead: the definitions of
  :mod:`mlflow_flux.fluctuation`, computed by its own :func:`~mlflow_flux.fluctuation.window_stats`), pooled as the
  state at a bin's last snapshot;
- the fraction of the layer's neurons in each state at every snapshot (not pooled);
- per neuron, the snapshot at which it stops participating and the one at which it dies for good;
- for a layer wider than ``max_rows``: quantile bands over its neurons (each snapshot's quantiles, averaged over the
  bin's snapshots, so that merged bins stay exact), and the neurons at the extremes of each column's last value
  (``extremes`` per column and end), whose histories :func:`pool_run` collects in a second pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import fluctuation

__all__ = ["STATES", "NO_WINDOW", "PARTICIPATING", "FROZEN", "DEAD", "BANDS", "PooledLayer", "TracePooler",
           "bin_width", "pooled_means", "row_quantiles", "states_of"]

# Each neuron's state in the window ending at a snapshot; NO_WINDOW before the first full window, or where the trace
# holds no activity for it (a layer that saw no training forward pass).
NO_WINDOW, PARTICIPATING, FROZEN, DEAD = 0, 1, 2, 3
STATES = ("no full window", "participating", "frozen", "dead")
# The quantiles drawn as bands for a layer wider than its neuron budget.
BANDS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
NEVER = np.iinfo(np.int64).max  # "never stops participating / never dies" in the ordering keys


def bin_width(snapshots: int, max_bins: int) -> int:
    """Snapshots per bin: the smallest power of two that fits ``snapshots`` in at most ``max_bins`` bins (1: nothing
    pooled). A power of two, so that a run pooled as it is written, doubling the width as it goes, ends with this.

    >>> bin_width(1000, 250), bin_width(10, 250), bin_width(1001, 250)
    (4, 1, 8)
    """
    needed = max(1, math.ceil(snapshots / max(1, max_bins)))
    return 1 << (needed - 1).bit_length()


def row_quantiles(values: np.ndarray, quantiles: tuple[float, ...] = BANDS) -> np.ndarray:
    """Each row's ``quantiles`` over its finite values (numpy's default, linear, method), NaN for a row without one:
    ``(rows, len(quantiles))``.

    >>> row_quantiles(np.array([[1.0, np.nan, 3.0, 2.0], [np.nan, np.inf, np.nan, np.nan]]), (0.0, 0.25, 1.0))
    array([[1. , 1.5, 3. ],
           [nan, nan, nan]])
    """
    values = np.asarray(values, dtype=np.float64)
    ordered = np.sort(np.where(np.isfinite(values), values, np.nan), axis=1)  # NaN sorts last
    count = np.isfinite(ordered).sum(axis=1)
    position = np.asarray(quantiles)[None, :] * np.maximum(count - 1, 0)[:, None]
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(count - 1, 0)[:, None])
    rows = np.arange(len(values))[:, None]
    a, b = ordered[rows, low], ordered[rows, high]
    out = a + (b - a) * (position - low)
    out[count == 0] = np.nan
    return out


def pooled_means(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the finite values of ``(snapshots, rows)`` in bins of ``width`` consecutive snapshots (the
    last bin may be partial): ``sums / counts`` is the bin's mean, NaN where it holds no finite value.

    >>> sums, counts = pooled_means(np.array([[1.0], [3.0], [np.nan], [5.0], [7.0]]), 2)
    >>> (sums / counts).ravel().tolist(), counts.ravel().tolist()
    ([2.0, 5.0, 7.0], [2.0, 1.0, 1.0])
    """
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    starts = np.arange(0, len(values), width)
    sums = np.add.reduceat(np.where(finite, values, 0.0), starts, axis=0)
    counts = np.add.reduceat(finite.astype(np.float64), starts, axis=0)
    return sums, counts


def states_of(stats: dict[str, np.ndarray]) -> np.ndarray:
    """Each neuron's state from :func:`~mlflow_flux.fluctuation.window_stats`' output (``(windows, neurons)``).

    >>> s = {"participating": np.array([[True, False, False]]), "dead": np.array([[False, True, False]]),
    ...      "fires": np.array([[True, False, True]])}
    >>> states_of(s).tolist()
    [[1, 3, 2]]
    """
    state = np.full(stats["dead"].shape, NO_WINDOW, dtype=np.uint8)
    state[stats["fires"]] = FROZEN
    state[stats["participating"]] = PARTICIPATING
    state[stats["dead"]] = DEAD
    return state


@dataclass
class PooledLayer:
    """One layer's pooled picture (see the module's docstring)."""

    name: str
    neurons: np.ndarray  # the trace's neuron index of each row drawn
    values: dict[str, np.ndarray]  # column -> (bins, rows) float32 means
    states: np.ndarray  # (bins, rows) uint8: the state at each bin's last snapshot
    fractions: np.ndarray  # (snapshots, 3) float32: participating, frozen, dead, of its neurons (NaN: no window)
    stops_participating: np.ndarray  # (rows,) int64 epoch (-1: never participated, NEVER: still at the end)
    dies: np.ndarray  # (rows,) int64 epoch from which the neuron stays dead (NEVER: never)
    width: int  # the layer's neurons in the trace (rows drawn may be fewer: banded)
    bands: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (bins, len(BANDS)) when banded
    extremes: dict[str, np.ndarray] = field(default_factory=dict)  # column -> neuron indices at its extremes

    @property
    def banded(self) -> bool:
        return bool(self.bands)


class TracePooler:
    """Pools one run's trace, fed a chunk of consecutive snapshots at a time.

    Args:
        layers: ``(name, neuron indices)`` of every layer, in the trace's order.
        snapshots: how many snapshots the trace holds when known (a trace's file says so); None while a run is still
            writing it (bins then widen as snapshots arrive).
        columns: the trace columns to pool.
        window, tau: the run's own settings: the states are those its metrics used.
        max_bins: at most this many bins of snapshots.
        max_rows: layers wider than this are drawn as quantile bands and their extreme neurons.
        extremes: extreme neurons kept per column and end for a banded layer.
    """

    def __init__(self, layers: list[tuple[str, np.ndarray]], snapshots: int | None, columns: tuple[str, ...],
                 window: int, tau: float | fluctuation.Thresholds, max_bins: int = 250, max_rows: int = 1024,
                 extremes: int = 8) -> None:
        self.columns = columns
        self.window, self.tau = window, tau
        self.max_bins = max(1, max_bins)
        self.width = bin_width(snapshots or 0, self.max_bins)
        self.max_rows, self.extremes = max_rows, extremes
        self.epochs: list[int] = []
        self._layers = {name: np.asarray(neurons) for name, neurons in layers}
        wide = {name for name, n in self._layers.items() if len(n) > max_rows}
        # Every bin the pooler may fill, written at once (np.full, not np.zeros, whose pages the kernel would hand
        # out as bins fill): pooling while a run trains, its memory is then what it is from the first snapshot on,
        # rather than growing with the epochs up to the budget.
        bins = self.max_bins
        self._sums = {name: {c: np.full((bins, len(n)), 0.0) for c in columns} for name, n in self._layers.items()
                      if name not in wide}
        self._counts = {name: {c: np.full((bins, len(n)), 0.0) for c in columns} for name, n in self._layers.items()
                        if name not in wide}
        self._band_sums = {name: {c: np.full((bins, len(BANDS)), 0.0) for c in columns} for name in wide}
        self._band_counts = {name: {c: np.full(bins, 0.0) for c in columns} for name in wide}
        self._states = {name: np.full((bins, len(n)), NO_WINDOW, dtype=np.uint8) for name, n in self._layers.items()}
        self._fractions = {name: np.full((max(1, snapshots or 64), 3), np.nan, dtype=np.float32)
                           for name in self._layers}
        self._last_participating = {name: np.full(len(n), -1, dtype=np.int64) for name, n in self._layers.items()}
        self._last_alive = {name: np.full(len(n), -1, dtype=np.int64) for name, n in self._layers.items()}
        self._last_state = {name: np.zeros(len(n), dtype=np.uint8) for name, n in self._layers.items()}
        self._last_values: dict[str, dict[str, np.ndarray]] = {name: {} for name in self._layers}
        self._carry: dict[str, dict[str, np.ndarray]] = {}  # the last window-1 snapshots of the window columns
        self._seen = 0

    @property
    def bins(self) -> int:
        """Bins holding snapshots so far."""
        return math.ceil(self._seen / self.width)

    def add(self, epochs: np.ndarray, layers: dict[str, dict[str, np.ndarray]]) -> None:
        """The next snapshots: ``epochs`` and per layer ``(len(epochs), neurons)`` arrays of every column."""
        count = len(epochs)
        if count == 0:
            return
        start = self._seen
        self._fit(start + count)
        self.epochs.extend(int(e) for e in epochs)
        for name, arrays in layers.items():
            self._add_values(name, arrays, start)
            self._add_states(name, arrays, start, np.asarray(epochs))
            self._last_values[name] = {c: np.asarray(arrays[c][-1]) for c in self.columns if c in arrays}
        self._seen += count

    def _fit(self, total: int) -> None:
        """Room for ``total`` snapshots: bins merged in pairs until they fit, the per-snapshot fractions grown."""
        while math.ceil(total / self.width) > self.max_bins:
            self._merge_pairs()
        for name, fractions in self._fractions.items():
            if len(fractions) < total:
                grown = np.full((max(total, 2 * len(fractions)), 3), np.nan, dtype=np.float32)
                grown[: len(fractions)] = fractions
                self._fractions[name] = grown

    def _merge_pairs(self) -> None:
        """Twice the width: bins 2j and 2j+1 become bin j (sums and counts add; the state is the later bin's)."""
        used = self.bins
        half = math.ceil(used / 2)
        for pooled in (*self._sums.values(), *self._counts.values(), *self._band_sums.values(),
                       *self._band_counts.values()):
            for values in pooled.values():
                merged = values[0:used:2].copy()
                merged[: used // 2] += values[1:used:2]
                values[:used] = 0
                values[:half] = merged
        later = np.minimum(np.arange(half) * 2 + 1, max(used - 1, 0))
        for states in self._states.values():
            merged = states[later].copy()
            states[:used] = 0
            states[:half] = merged
        self.width *= 2

    def _add_values(self, name: str, arrays: dict[str, np.ndarray], start: int) -> None:
        first_bin = start // self.width
        offset = start - first_bin * self.width  # snapshots already in the first bin from the previous chunk
        for column in self.columns:
            values = np.asarray(arrays.get(column, np.full(np.shape(arrays["w_std"]), np.nan)), dtype=np.float64)
            if name in self._band_sums:
                self._add_bands(name, column, values, start)
                continue
            padded = np.concatenate([np.full((offset, values.shape[1]), np.nan), values]) if offset else values
            sums, counts = pooled_means(padded, self.width)
            self._sums[name][column][first_bin:first_bin + len(sums)] += sums
            self._counts[name][column][first_bin:first_bin + len(sums)] += counts

    def _add_bands(self, name: str, column: str, values: np.ndarray, start: int) -> None:
        """A wide layer: each snapshot's quantiles over its neurons, summed into its bin (averaged in result())."""
        quantiles = row_quantiles(values)
        finite = np.isfinite(quantiles[:, 0])
        bins = (start + np.arange(len(values)))[finite] // self.width
        np.add.at(self._band_sums[name][column], bins, quantiles[finite])
        np.add.at(self._band_counts[name][column], bins, 1.0)

    def _add_states(self, name: str, arrays: dict[str, np.ndarray], start: int, epochs: np.ndarray) -> None:
        carry = self._carry.get(name)
        joined = {c: np.concatenate([carry[c], arrays[c]]) if carry is not None else np.asarray(arrays[c])
                  for c in fluctuation.WINDOW_COLUMNS}
        self._carry[name] = {c: v[-(self.window - 1):] for c, v in joined.items()}
        held = len(joined["w_std"])
        if held < self.window:
            return
        # The windows ending at this chunk's snapshots (those with a full window), in slices of bounded memory.
        first_end = max(self.window - 1, held - len(epochs))
        rows = len(self._layers[name])
        step = max(1, (1 << 22) // max(1, self.window * rows))
        for end0 in range(first_end, held, step):
            end1 = min(held, end0 + step)
            part = {c: fluctuation.windows_of(v[end0 - self.window + 1:end1], self.window) for c, v in joined.items()}
            state = states_of(fluctuation.window_stats(part["w_std"], part["bias"], part["act_rate"], self.tau))
            positions = start + (np.arange(end0, end1) - (held - len(epochs)))
            self._record_states(name, state, positions, epochs[positions - start])

    def _record_states(self, name: str, state: np.ndarray, positions: np.ndarray, epochs: np.ndarray) -> None:
        rows = state.shape[1]
        self._fractions[name][positions] = np.stack(
            [(state == s).sum(axis=1) / rows for s in (PARTICIPATING, FROZEN, DEAD)], axis=1)
        for index in range(len(positions)):
            epoch = int(epochs[index])
            self._last_participating[name][state[index] == PARTICIPATING] = epoch
            self._last_alive[name][state[index] != DEAD] = epoch
        bins = positions // self.width
        latest = np.r_[bins[1:] != bins[:-1], True]  # each bin's latest snapshot so far
        self._states[name][bins[latest]] = state[latest]
        self._last_state[name] = state[-1]

    def _following(self, epoch: np.ndarray) -> np.ndarray:
        """The snapshot after each of ``epoch``'s (the epoch at which a state was left)."""
        epochs = np.asarray(self.epochs)
        after = np.searchsorted(epochs, epoch, side="right")
        return np.where(after < len(epochs), epochs[np.minimum(after, len(epochs) - 1)], NEVER)

    def result(self) -> dict[str, PooledLayer]:
        """Every layer's picture (the banded layers' extreme neurons still need their histories: see
        :meth:`extreme_rows`)."""
        out = {}
        for name, neurons in self._layers.items():
            participating_now = self._last_state[name] == PARTICIPATING
            last = self._last_participating[name]
            stops = np.where(participating_now, NEVER, np.where(last < 0, -1, self._following(last)))
            dead_now = self._last_state[name] == DEAD
            alive = self._last_alive[name]
            first_window = self.epochs[self.window - 1] if len(self.epochs) >= self.window else NEVER
            dies = np.where(dead_now, np.where(alive < 0, first_window, self._following(alive)), NEVER)
            used = self.bins
            layer = PooledLayer(name, neurons, {}, self._states[name][:used].copy(),
                                self._fractions[name][: self._seen].copy(), stops, dies, len(neurons))
            with np.errstate(invalid="ignore", divide="ignore"):
                if name in self._band_sums:
                    layer.bands = {c: (v[:used] / self._band_counts[name][c][:used, None]).astype(np.float32)
                                   for c, v in self._band_sums[name].items()}
                    layer.extremes = self._extreme_neurons(name)
                else:
                    layer.values = {c: (self._sums[name][c][:used] / self._counts[name][c][:used]).astype(np.float32)
                                    for c in self.columns}
            out[name] = layer
        return out

    def _extreme_neurons(self, name: str) -> dict[str, np.ndarray]:
        """Per column, the ``extremes`` neurons with the lowest and the highest last value (finite values only)."""
        out = {}
        for column, last in self._last_values[name].items():
            finite = np.flatnonzero(np.isfinite(last))
            order = finite[np.argsort(last[finite], kind="stable")]
            picked = np.concatenate([order[: self.extremes], order[-self.extremes:]]) if len(order) else order
            out[column] = np.unique(picked)
        return out

    def extreme_rows(self) -> dict[str, np.ndarray]:
        """Per banded layer, every row (position within the layer) that is an extreme of some column."""
        result = {}
        for name in self._band_sums:
            picked = [rows for rows in self._extreme_neurons(name).values() if len(rows)]
            result[name] = np.unique(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)
        return result
