"""What the explorer draws, from a trace read in order of its snapshots: pure numpy, memory flat in the number of
snapshots.

A :class:`TracePooler` takes the trace a chunk of snapshots at a time (as ``reshape.layer_arrays`` gives it) and keeps,
per layer:

- every trace column pooled into at most ``max_bins`` bins of consecutive snapshots (the mean of a bin's finite
  values; a bin of one snapshot is the trace's value itself);
- each neuron's state in the window that ends at each snapshot (participating, frozen, dead: the definitions of
  :mod:`mlflow_flux.fluctuation`, computed by its own :func:`~mlflow_flux.fluctuation.window_stats`), pooled as the
  state at a bin's last snapshot;
- the fraction of the layer's neurons in each state at every snapshot (not pooled);
- per neuron, the snapshot at which it stops participating and the one at which it dies for good;
- for a layer wider than ``max_rows``: quantile bands over its neurons per bin, and the neurons at the extremes
  of each column's last value (``extremes`` per column and end), whose histories :func:`pool_run` collects in a
  second pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import fluctuation

__all__ = ["STATES", "NO_WINDOW", "PARTICIPATING", "FROZEN", "DEAD", "BANDS", "PooledLayer", "TracePooler",
           "bin_width", "pooled_means", "states_of"]

# Each neuron's state in the window ending at a snapshot; NO_WINDOW before the first full window, or where the trace
# holds no activity for it (a layer that saw no training forward pass).
NO_WINDOW, PARTICIPATING, FROZEN, DEAD = 0, 1, 2, 3
STATES = ("no full window", "participating", "frozen", "dead")
# The quantiles drawn as bands for a layer wider than its neuron budget.
BANDS = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
NEVER = np.iinfo(np.int64).max  # "never stops participating / never dies" in the ordering keys


def bin_width(snapshots: int, max_bins: int) -> int:
    """Snapshots per bin so that ``snapshots`` fit in at most ``max_bins`` bins (1: nothing pooled).

    >>> bin_width(1000, 250), bin_width(10, 250), bin_width(1001, 250)
    (4, 1, 5)
    """
    return max(1, math.ceil(snapshots / max(1, max_bins)))


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
        snapshots: how many snapshots the trace holds (known from the file before reading it).
        columns: the trace columns to pool.
        window, tau: the run's own settings: the states are those its metrics used.
        max_bins: at most this many bins of snapshots.
        max_rows: layers wider than this are drawn as quantile bands and their extreme neurons.
        extremes: extreme neurons kept per column and end for a banded layer.
    """

    def __init__(self, layers: list[tuple[str, np.ndarray]], snapshots: int, columns: tuple[str, ...], window: int,
                 tau: float | fluctuation.Thresholds, max_bins: int = 250, max_rows: int = 1024,
                 extremes: int = 8) -> None:
        self.columns = columns
        self.window, self.tau = window, tau
        self.width = bin_width(snapshots, max_bins)
        self.bins = math.ceil(snapshots / self.width) if snapshots else 0
        self.snapshots = snapshots
        self.max_rows, self.extremes = max_rows, extremes
        self.epochs: list[int] = []
        self._layers = {name: np.asarray(neurons) for name, neurons in layers}
        self._sums = {name: {c: np.zeros((self.bins, len(n))) for c in columns} for name, n in layers
                      if len(n) <= max_rows}
        self._counts = {name: {c: np.zeros((self.bins, len(n))) for c in columns} for name, n in layers
                        if len(n) <= max_rows}
        self._bands = {name: {c: np.full((self.bins, len(BANDS)), np.nan) for c in columns} for name, n in layers
                       if len(n) > max_rows}
        self._band_open: dict[str, dict[str, list[np.ndarray]]] = {name: {c: [] for c in columns}
                                                                   for name in self._bands}
        self._states = {name: np.zeros((self.bins, len(n)), dtype=np.uint8) for name, n in layers}
        self._fractions = {name: np.full((snapshots, 3), np.nan, dtype=np.float32) for name, n in layers}
        self._last_participating = {name: np.full(len(n), -1, dtype=np.int64) for name, n in layers}
        self._last_alive = {name: np.full(len(n), -1, dtype=np.int64) for name, n in layers}
        self._last_state = {name: np.zeros(len(n), dtype=np.uint8) for name, n in layers}
        self._last_values = {name: {} for name, _ in layers}
        self._carry: dict[str, dict[str, np.ndarray]] = {}  # the last window-1 snapshots of the window columns
        self._seen = 0

    def add(self, epochs: np.ndarray, layers: dict[str, dict[str, np.ndarray]]) -> None:
        """The next snapshots: ``epochs`` and per layer ``(len(epochs), neurons)`` arrays of every column."""
        count = len(epochs)
        if count == 0:
            return
        start = self._seen
        self.epochs.extend(int(e) for e in epochs)
        for name, arrays in layers.items():
            self._add_values(name, arrays, start)
            self._add_states(name, arrays, start, np.asarray(epochs))
            self._last_values[name] = {c: np.asarray(arrays[c][-1]) for c in self.columns if c in arrays}
        self._seen += count

    def _add_values(self, name: str, arrays: dict[str, np.ndarray], start: int) -> None:
        first_bin = start // self.width
        offset = start - first_bin * self.width  # snapshots already in the first bin from the previous chunk
        for column in self.columns:
            values = np.asarray(arrays.get(column, np.full(np.shape(arrays["w_std"]), np.nan)), dtype=np.float64)
            if name in self._bands:
                self._add_bands(name, column, values, start)
                continue
            padded = np.concatenate([np.full((offset, values.shape[1]), np.nan), values]) if offset else values
            sums, counts = pooled_means(padded, self.width)
            self._sums[name][column][first_bin:first_bin + len(sums)] += sums
            self._counts[name][column][first_bin:first_bin + len(sums)] += counts

    def _add_bands(self, name: str, column: str, values: np.ndarray, start: int) -> None:
        """A wide layer: the quantiles over its neurons of each bin's snapshots (all values of the bin pooled)."""
        pending = self._band_open[name][column]
        for index, row in enumerate(values):
            pending.append(row)
            position = start + index
            if (position + 1) % self.width == 0 or position + 1 == self.snapshots:
                pooled = np.concatenate(pending)
                pooled = pooled[np.isfinite(pooled)]
                if pooled.size:
                    self._bands[name][column][position // self.width] = np.quantile(pooled, BANDS)
                pending.clear()

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
        for index, position in enumerate(positions):
            epoch = int(epochs[index])
            self._last_participating[name][state[index] == PARTICIPATING] = epoch
            self._last_alive[name][state[index] != DEAD] = epoch
            if (position + 1) % self.width == 0 or position + 1 == self.snapshots:
                self._states[name][position // self.width] = state[index]
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
            layer = PooledLayer(name, neurons, {}, self._states[name], self._fractions[name][: self._seen],
                                stops, dies, len(neurons))
            if name in self._bands:
                layer.bands = {c: v.astype(np.float32) for c, v in self._bands[name].items()}
                layer.extremes = self._extreme_neurons(name)
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    layer.values = {c: (self._sums[name][c] / self._counts[name][c]).astype(np.float32)
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
        for name in self._bands:
            picked = [rows for rows in self._extreme_neurons(name).values() if len(rows)]
            result[name] = np.unique(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)
        return result
