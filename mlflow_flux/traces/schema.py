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

__all__ = [
    "KEY_COLUMNS",
    "STAT_COLUMNS",
    "SUMMARY_COLUMNS",
    "TRACE_SCHEMA",
    "TRACE_ARTIFACT_DIR",
    "TRACE_FILE",
    "PARTS_DIR",
    "PARQUET_OPTIONS",
    "Snapshot",
    "BatchBuilder",
    "snapshot_to_batch",
    "write_trace_table",
]

KEY_COLUMNS = ("epoch", "layer", "neuron")
# The columns the fluctuation summaries read come first among the statistics, so in each row group they are one
# contiguous byte range that a reader fetching over HTTP gets in one request.
SUMMARY_COLUMNS = fluctuation.INPUT_COLUMNS
# Float columns of a snapshot, in the order the recorder stacks them and the trace stores them.
STAT_COLUMNS = (*SUMMARY_COLUMNS, "w_mean", "w_norm", "act_mean", "act_std", "grad_norm")

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


class BatchBuilder:
    """Snapshots to Arrow record batches. The layer and neuron columns are the same in every snapshot of a recorder,
    so they are built once; the statistics' columns are taken without a copy."""

    def __init__(self) -> None:
        self._layout: tuple | None = None  # (the arrays they were built from, the layer names, the Arrow columns)

    def __call__(self, snapshot: Snapshot) -> pa.RecordBatch:
        layout = self._layout
        if (layout is None or layout[0][0] is not snapshot.layer_index or layout[0][1] is not snapshot.neuron
                or layout[1] != snapshot.layers):
            layer = pa.DictionaryArray.from_arrays(pa.array(snapshot.layer_index, pa.int32()),
                                                   pa.array(snapshot.layers, pa.string()))
            layout = self._layout = ((snapshot.layer_index, snapshot.neuron), list(snapshot.layers),
                                     (layer, pa.array(snapshot.neuron)))
        layer, neuron = layout[2]
        columns = [
            pa.array(np.full(len(snapshot.neuron), snapshot.epoch, dtype=np.int32)),
            layer,
            neuron,
            *[pa.array(np.ascontiguousarray(snapshot.stats[i])) for i in range(len(STAT_COLUMNS))],
        ]
        return pa.RecordBatch.from_arrays(columns, schema=TRACE_SCHEMA)


def snapshot_to_batch(snapshot: Snapshot) -> pa.RecordBatch:
    """One Arrow record batch with the rows of a snapshot."""
    return BatchBuilder()(snapshot)


def write_trace_table(table: pa.Table, path: str | Path) -> None:
    """Write trace rows the way the sink does (zstd, byte-stream-split floats)."""
    pq.write_table(table, path, **PARQUET_OPTIONS)
