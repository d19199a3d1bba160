"""The trace format, defined once: columns, the Arrow schema, where a run keeps its trace, and how it is written.

One row per snapshot x layer x neuron. The recorder writes snapshots in :data:`STAT_COLUMNS` order, the sink
writes them with :data:`PARQUET_OPTIONS`, and every reader takes its column names from here. docs/traces.md
documents every column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import fluctuation
from ..statistics import DERIVED, STAT_NAMES, STATISTICS

__all__ = [
    "KEY_COLUMNS",
    "STAT_COLUMNS",
    "DERIVED_COLUMNS",
    "SUMMARY_COLUMNS",
    "TRACE_SCHEMA",
    "TRACE_ARTIFACT_DIR",
    "TRACE_FILE",
    "PARTS_DIR",
    "PARQUET_OPTIONS",
    "Snapshot",
    "snapshots_to_table",
    "snapshot_to_batch",
    "write_trace_table",
    "KEY_MEANINGS",
    "column_table",
]

KEY_COLUMNS = ("epoch", "layer", "neuron")
# The columns the fluctuation summaries read; the statistics table (mlflow_flux/statistics.py) lists them first, so
# in each row group they are one contiguous byte range that a reader fetching over HTTP gets in one request.
SUMMARY_COLUMNS = fluctuation.INPUT_COLUMNS
# Float columns of a snapshot, in the order the recorder stacks them and the trace stores them.
STAT_COLUMNS = STAT_NAMES
# Computed from other columns when a snapshot is taken (fluctuation.relative_update), stored for readers' ease.
DERIVED_COLUMNS = DERIVED
if STAT_COLUMNS[: len(SUMMARY_COLUMNS)] != SUMMARY_COLUMNS:
    raise ImportError("mlflow_flux.statistics must list the columns the summaries read first")

# What the key columns hold (docs/traces.md's table is generated from these and the statistics table).
KEY_MEANINGS = (
    ("epoch", "int32", "the epoch passed to `end_epoch(epoch)` (or the step passed to `end_step`)"),
    ("layer", "dictionary string", "the module's qualified name (`encoder.fc1`); a model that is itself one layer "
                                   "goes by its class name"),
    ("neuron", "int32", "the neuron's index within its layer (see \"What a neuron is\" below); under a neuron budget "
                        "the index of the recorded neuron in the whole layer"),
)

TRACE_ARTIFACT_DIR = "traces"
TRACE_FILE = "traces.parquet"  # the compacted trace of a run that closed
PARTS_DIR = "parts"  # closed segments, uploaded while training; what a killed run leaves

TRACE_SCHEMA = pa.schema(
    [
        pa.field("epoch", pa.int32()),
        pa.field("layer", pa.dictionary(pa.int32(), pa.string())),
        pa.field("neuron", pa.int32()),
        *[pa.field(name, pa.float32()) for name in STAT_COLUMNS],
    ]
)

# Float columns split into byte streams compress ~40% better under zstd (26 against 42 bytes per neuron-epoch on
# the paper's model) and write 5x faster; pandas, pyarrow, DuckDB and Polars read the encoding.
PARQUET_OPTIONS = {
    "compression": "zstd",
    "use_byte_stream_split": [f.name for f in TRACE_SCHEMA if pa.types.is_floating(f.type)],
    "use_dictionary": ["layer"],
}


@dataclass
class Snapshot:
    """One snapshot of every watched neuron: row ``r`` is neuron ``neuron[r]`` of layer ``layers[layer_index[r]]``.

    ``stats`` is column-major, ``(len(STAT_COLUMNS), rows)``: each statistic is one contiguous array, which Arrow
    takes without a copy. ``slices`` gives each layer's rows (the recorder knows them; None: found here).
    """

    epoch: int
    layers: list[str]
    layer_index: np.ndarray  # int32, one per row
    neuron: np.ndarray  # int32, one per row
    stats: np.ndarray  # float32, (len(STAT_COLUMNS), rows)
    nonfinite: int  # defined values that are NaN or inf
    slices: tuple[slice, ...] | None = None  # each layer's rows, in the order of `layers`

    def column(self, name: str) -> np.ndarray:
        return self.stats[STAT_COLUMNS.index(name)]

    def layer_slice(self, name: str) -> slice:
        index = self.layers.index(name)
        if self.slices is not None:
            return self.slices[index]
        rows = np.flatnonzero(self.layer_index == index)
        return slice(int(rows[0]), int(rows[-1]) + 1)


def snapshots_to_table(snapshots: list[Snapshot]) -> pa.Table:
    """The trace rows of consecutive snapshots of one recorder (same layers and neurons), as one Arrow table.

    Built once per segment on the sink's writer thread, not once per snapshot on the training thread: the
    statistics become one contiguous column each (taken by Arrow without a copy), the keys are tiled.
    """
    first = snapshots[0]
    count, rows = len(snapshots), len(first.neuron)
    stats = np.concatenate([s.stats for s in snapshots], axis=1) if count > 1 else first.stats
    layer = pa.DictionaryArray.from_arrays(pa.array(np.tile(first.layer_index, count), pa.int32()),
                                           pa.array(first.layers, pa.string()))
    columns = [
        pa.array(np.repeat(np.array([s.epoch for s in snapshots], dtype=np.int32), rows)),
        layer,
        pa.array(np.tile(first.neuron, count)),
        *[pa.array(stats[i]) for i in range(len(STAT_COLUMNS))],
    ]
    return pa.Table.from_arrays(columns, schema=TRACE_SCHEMA)


def snapshot_to_batch(snapshot: Snapshot) -> pa.RecordBatch:
    """One Arrow record batch with the rows of a snapshot."""
    return snapshots_to_table([snapshot]).to_batches()[0]


def write_trace_table(table: pa.Table, path: str | Path) -> None:
    """Write trace rows the way the sink does (zstd, byte-stream-split floats)."""
    pq.write_table(table, path, **PARQUET_OPTIONS)


def column_table() -> str:
    """docs/traces.md's table of the trace's columns, in the file's order (a test keeps the docs equal to it)."""
    rows = [*KEY_MEANINGS, *((s.name, "float32", s.meaning) for s in STATISTICS)]
    return "\n".join(["| column | type | meaning |", "| --- | --- | --- |",
                      *(f"| `{name}` | {kind} | {meaning} |" for name, kind, meaning in rows)])
