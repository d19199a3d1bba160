"""From traces to an explorer page: read each run's trace a chunk of snapshots at a time (local files, or anything
``pyarrow.parquet.ParquetFile`` opens, such as the ranged reader over HTTP), pool it (:mod:`.pooling`), and render one
self-contained page (:mod:`.page`). Memory stays flat in the number of snapshots: no whole-trace table is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fluctuation, reshape
from ..statistics import STAT_NAMES
from ..traces.schema import KEY_COLUMNS, STAT_COLUMNS, Snapshot
from .pooling import DEAD, FROZEN, PARTICIPATING, PooledLayer, TracePooler

__all__ = ["RunInput", "PooledRun", "pool_run", "snapshot_chunks", "Budget", "LivePooler"]

COLUMNS = STAT_NAMES  # every trace column is drawn


@dataclass
class RunInput:
    """One run to draw: its identity, its trace, the settings its states are read with, its loss, what it started
    from (the fingerprint of its initial weights) and the neurons it reset."""

    run_id: str
    name: str
    trace: object  # a path, a list of paths (segments), or an open file
    window: int = fluctuation.DEFAULT_WINDOW
    tau: float | fluctuation.Thresholds = fluctuation.DEFAULT_TAU  # a bare number: an absolute tau
    group: str = ""
    losses: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (steps, values)
    fingerprint: str = ""
    resets: object = None  # the run's reset table (a DataFrame), when it recycled neurons


@dataclass
class PooledRun:
    """One run, pooled: what the page draws of it."""

    run: RunInput
    epochs: np.ndarray  # every snapshot's epoch
    width: int  # snapshots per bin
    layers: dict[str, PooledLayer]
    fractions: np.ndarray  # (snapshots, 3): the whole network's participating, frozen, dead fractions

    @property
    def bins(self) -> tuple[np.ndarray, np.ndarray]:
        """Each bin's first and last epoch."""
        starts = np.arange(0, len(self.epochs), self.width)
        ends = np.minimum(starts + self.width, len(self.epochs)) - 1
        return self.epochs[starts], self.epochs[ends]


@dataclass(frozen=True)
class Budget:
    """How much of a run the page holds: at most ``values`` numbers (two bytes each before compression), split into
    bins of snapshots, and at most ``rows`` neurons per layer (past it: quantile bands and the extreme neurons).

    >>> Budget(values=1_000_000).bins(neurons=1000, columns=9)
    100
    """

    values: int = 2_400_000
    rows: int = 1024
    min_bins: int = 24

    def bins(self, neurons: int, columns: int) -> int:
        per_bin = max(1, neurons) * (columns + 1)  # +1: the states
        return max(self.min_bins, self.values // per_bin)

    def fitted(self, widths: Sequence[int], columns: int, banded_rows: int = 24) -> Budget:
        """This budget with ``rows`` lowered until every layer drawn in full still fits ``min_bins`` bins: a model of
        many mid-sized layers (GPT-2 small's 24 layers of 768) would otherwise put every neuron of each on the page
        and pass the values budget several times. A banded layer counts ``banded_rows`` rows (its bands and extreme
        neurons).

        >>> Budget().fitted([768] * 24 + [3072] * 12, columns=15).rows, Budget().fitted([256, 64, 1024], 15).rows
        (767, 1024)
        """
        room = self.values // ((columns + 1) * self.min_bins)
        fitted = self
        for width in sorted({w for w in widths if w <= self.rows}, reverse=True):
            if fitted.drawn(widths, banded_rows) <= room:
                break
            fitted = replace(self, rows=width - 1)  # the widest layers drawn in full are banded from here on
        return fitted

    def drawn(self, widths: Sequence[int], banded_rows: int = 24) -> int:
        """Rows the page draws for layers of these widths: every neuron up to ``rows``, else bands and extremes."""
        return sum(w if w <= self.rows else banded_rows for w in widths)


class _Layout:
    """The row layout every snapshot of a trace repeats (as the recorder writes it): its layers and neurons."""

    def __init__(self, layer: np.ndarray, neuron: np.ndarray) -> None:
        self.rows = len(layer)
        codes, names = _codes(layer)
        starts = np.flatnonzero(np.r_[True, np.diff(codes) != 0])
        ends = np.r_[starts[1:], self.rows]
        self.layers = [(str(names[codes[a]]), slice(int(a), int(b))) for a, b in zip(starts, ends)]
        self.neuron = neuron
        if len({name for name, _ in self.layers}) != len(self.layers):
            raise ValueError("a layer's rows are not contiguous within a snapshot")


def _codes(layer) -> tuple[np.ndarray, list]:
    names, codes = np.unique(np.asarray(layer, dtype=str), return_inverse=True)
    return codes, list(names)


def _layer_names(column) -> np.ndarray:
    """A batch's layer column as names (it is dictionary-encoded in traces the sink writes)."""
    if pa.types.is_dictionary(column.type):
        return np.asarray(column.dictionary.to_pylist(), dtype=object)[column.indices.to_numpy()]
    return np.asarray(column.to_pylist(), dtype=object)


def snapshot_chunks(source, columns: Sequence[str], chunk_rows: int = 1 << 16
                    ) -> Iterator[tuple[_Layout, int, np.ndarray, dict[str, dict[str, np.ndarray]]]]:
    """The trace's snapshots, a chunk at a time: ``(layout, total snapshots, epochs, {layer: {column: (E, N)}})``.

    Reads record batches of about ``chunk_rows`` rows (only ``columns`` and the keys), so memory is bounded by a
    chunk whatever the number of snapshots. 64 Ki rows: with 1 Mi a default variant's page took 1.9 s and ~570 MiB
    above the imports (the chunk's float64 windows), and a shorter trace fit in one smaller chunk, so close()'s
    peak grew with the epochs; at 64 Ki, ~1 s and ~190 MiB (an atlas trace, 1680 neurons x 1000 epochs).

    Raises:
        ValueError: the snapshots do not all repeat one row layout (the recorder always writes one).
    """
    if isinstance(source, (list, tuple)):  # segments of a trace that was never compacted, in order
        for path in source:
            yield from snapshot_chunks(path, columns, chunk_rows)
        return
    # A local file is read a column chunk at a time (pre-buffering a row group's chunks held ~50 MiB more); a
    # remote one pre-buffers, which coalesces its column chunks into few requests.
    parquet = pq.ParquetFile(source, pre_buffer=not isinstance(source, (str, os.PathLike)))
    wanted = [c for c in columns if c in set(parquet.schema_arrow.names)]
    layout: _Layout | None = None
    total = 0
    carry: dict[str, np.ndarray] = {}
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[*KEY_COLUMNS, *wanted]):
        arrays = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in ("epoch", "neuron", *wanted)}
        if layout is None:
            arrays["layer"] = _layer_names(batch.column("layer"))
        arrays = {k: np.concatenate([carry[k], v]) if k in carry else v for k, v in arrays.items()}
        if layout is None:
            epoch = arrays["epoch"]
            changes = np.flatnonzero(epoch != epoch[0])
            if not len(changes) and len(epoch) < parquet.metadata.num_rows:
                carry = arrays  # the first snapshot is not complete yet
                continue
            rows = int(changes[0]) if len(changes) else len(epoch)
            layout = _Layout(arrays["layer"][:rows], arrays["neuron"][:rows])
            if parquet.metadata.num_rows % rows:
                raise ValueError("the trace's snapshots do not all hold the same neurons")
            total = parquet.metadata.num_rows // rows
        arrays.pop("layer", None)
        complete = (len(arrays["epoch"]) // layout.rows) * layout.rows
        carry = {k: v[complete:] for k, v in arrays.items()}
        if complete:
            yield (layout, total, *_split(layout, arrays, complete, wanted))


def _split(layout: _Layout, arrays: dict[str, np.ndarray], complete: int, columns) -> tuple:
    count = complete // layout.rows
    epochs = arrays["epoch"][:complete].reshape(count, layout.rows)
    if (epochs != epochs[:, :1]).any() or (arrays["neuron"][:complete].reshape(count, layout.rows) !=
                                           layout.neuron).any():
        raise ValueError("the trace's snapshots do not all repeat one row layout")
    out = {}
    for name, rows in layout.layers:
        out[name] = {c: np.ascontiguousarray(arrays[c][:complete].reshape(count, layout.rows)[:, rows],
                                             dtype=np.float32) for c in columns}
    return epochs[:, 0], out


def pool_run(run: RunInput, budget: Budget = Budget()) -> PooledRun:
    """Read ``run``'s trace a chunk of snapshots at a time and pool it within ``budget``."""
    pooler = None
    try:
        for layout, total, epochs, layers in snapshot_chunks(run.trace, COLUMNS):
            if pooler is None:
                pooler = _pooler(layout.layers, layout.neuron, total, run.window, run.tau, budget)
            pooler.add(epochs, layers)
    except ValueError:
        pooler = _pool_whole(run, budget)  # an unusual layout: the reshaping that sorts, on the whole trace
    if pooler is None:
        raise ValueError(f"run {run.run_id} has an empty trace")
    return _finished(run, pooler, budget)


def _finished(run: RunInput, pooler: TracePooler, budget: Budget, extremes: bool = True) -> PooledRun:
    layers = pooler.result()
    wide = pooler.extreme_rows()
    if wide and extremes:  # the banded layers' extreme neurons: a second pass for their histories
        _fill_extremes(run, layers, wide, pooler.max_bins, budget)
    elif wide:  # a live page: the bands only, the extreme neurons come at close
        for name in wide:
            layer = layers[name]
            layer.neurons, layer.states = layer.neurons[:0], layer.states[:, :0]
            layer.stops_participating, layer.dies = layer.stops_participating[:0], layer.dies[:0]
    return PooledRun(run, np.asarray(pooler.epochs, dtype=np.int64), pooler.width, layers, _network(layers))


def _pooler(layers: Sequence[tuple[str, slice]], neuron: np.ndarray, total: int | None, window: int,
            tau: float | fluctuation.Thresholds, budget: Budget) -> TracePooler:
    """A pooler for a snapshot whose layers hold the ``neuron`` rows of their slices, within ``budget``."""
    budget = budget.fitted([rows.stop - rows.start for _, rows in layers], len(COLUMNS))
    neurons = sum(min(rows.stop - rows.start, budget.rows) for _, rows in layers)  # a banded layer counts as full
    return TracePooler([(name, neuron[rows]) for name, rows in layers], total, COLUMNS, window, tau,
                       max_bins=budget.bins(neurons, len(COLUMNS)), max_rows=budget.rows)


class LivePooler:
    """Pools a run's snapshots as its trace is written (the sink's ``observer``, on its writer thread), so that
    closing the run only renders the page: its trace is read back only for a banded layer's extreme neurons.

    Args:
        window, tau: the run's settings (its states are those its metrics used).
        budget: as for :func:`pool_run`.
    """

    def __init__(self, window: int, tau: float | fluctuation.Thresholds, budget: Budget = Budget()) -> None:
        self.window, self.tau, self.budget = window, tau, budget
        self._pooler: TracePooler | None = None
        self._slices: list[tuple[str, slice]] = []
        self._columns = [(STAT_COLUMNS.index(c), c) for c in COLUMNS]

    def __call__(self, snapshots: Sequence[Snapshot]) -> None:
        """The next snapshots, in order (a segment of the trace)."""
        if not snapshots:
            return
        if self._pooler is None:
            first = snapshots[0]
            self._slices = [(name, first.layer_slice(name)) for name in first.layers]
            self._pooler = _pooler(self._slices, first.neuron, None, self.window, self.tau, self.budget)
        stats = np.stack([s.stats for s in snapshots])  # (snapshots, columns, rows)
        layers = {name: {c: stats[:, k, rows] for k, c in self._columns} for name, rows in self._slices}
        self._pooler.add(np.array([s.epoch for s in snapshots]), layers)

    def __repr__(self) -> str:
        return "the explorer's pooling"

    def pooled(self, run: RunInput, trace: Callable[[], object] | None) -> PooledRun:
        """What the page draws of ``run``; ``trace()`` gives its trace file, read only for a banded layer's extreme
        neurons (None: a live page, bands only)."""
        if self._pooler is None:
            raise ValueError(f"run {run.run_id} has an empty trace")
        if trace is None:
            return _finished(run, self._pooler, self.budget, extremes=False)
        if self._pooler.extreme_rows():
            run = replace(run, trace=trace())
        return _finished(run, self._pooler, self.budget)

    @property
    def snapshots(self) -> int:
        """Snapshots pooled so far."""
        return 0 if self._pooler is None else len(self._pooler.epochs)


def _pool_whole(run: RunInput, budget: Budget) -> TracePooler:
    from ..traces.reader import read_trace_files

    paths = run.trace if isinstance(run.trace, (list, tuple)) else [run.trace]
    trace = read_trace_files(paths).to_pandas()
    epochs, layers = reshape.layer_arrays(trace, COLUMNS)
    neurons = {name: np.sort(trace.loc[trace["layer"] == name, "neuron"].unique()) for name in layers}
    budget = budget.fitted([len(n) for n in neurons.values()], len(COLUMNS))
    total_rows = sum(min(len(n), budget.rows) for n in neurons.values())
    pooler = TracePooler(list(neurons.items()), len(epochs), COLUMNS, run.window, run.tau,
                         max_bins=budget.bins(total_rows, len(COLUMNS)), max_rows=budget.rows)
    pooler.add(epochs, layers)
    return pooler


def _fill_extremes(run: RunInput, layers: dict[str, PooledLayer], wide: dict[str, np.ndarray], max_bins: int,
                   budget: Budget) -> None:
    """For each banded layer, pool only its extreme neurons' rows, with the same bins as the first pass (the same
    number of snapshots in at most as many bins)."""
    sub = None
    for _, total, epochs, arrays in snapshot_chunks(run.trace, COLUMNS):
        picked = {name: {c: values[:, wide[name]] for c, values in arrays[name].items()} for name in wide}
        if sub is None:
            sub = TracePooler([(name, layers[name].neurons[rows]) for name, rows in wide.items()], total, COLUMNS,
                              run.window, run.tau, max_bins=max_bins, max_rows=budget.rows * 64)
        sub.add(epochs, picked)
    if sub is None:
        return
    for name, pooled in sub.result().items():
        layer = layers[name]
        rows = wide[name]
        layer.values = pooled.values
        layer.states = layer.states[:, rows]
        layer.stops_participating = layer.stops_participating[rows]
        layer.dies = layer.dies[rows]
        layer.neurons = layer.neurons[rows]


def _network(layers: dict[str, PooledLayer]) -> np.ndarray:
    """The whole network's state fractions: each layer's weighted by its neurons."""
    total = sum(layer.width for layer in layers.values())
    weighted = sum(layer.fractions.astype(np.float64) * layer.width for layer in layers.values())
    return (weighted / max(1, total)).astype(np.float32)


STATE_NAMES = {PARTICIPATING: "participating", FROZEN: "frozen", DEAD: "dead"}
