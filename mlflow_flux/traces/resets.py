"""The reset table: every neuron a recycling policy reset (or, in a dry run, would have reset), one row each, kept
beside the trace as ``resets/resets.parquet`` among the run's artifacts.

Columns: ``epoch`` (the snapshot index the reset was decided at; the unit's trace after it is its new weights'),
``step`` (optimizer steps taken by then), ``layer``, ``neuron`` (-1: every neuron of the layer, as shrink and perturb
changes them), ``policy``, ``score`` (what chose it: ReDo's normalised activity, continual backprop's utility,
shrink and perturb's factor) and ``dry_run``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["RESETS_DIR", "RESETS_FILE", "RESETS_KEY", "RESETS_TAG", "RESET_SCHEMA", "write_resets", "read_resets",
           "empty_resets"]

RESETS_DIR = "resets"
RESETS_FILE = "resets.parquet"
RESETS_KEY = f"{RESETS_DIR}/{RESETS_FILE}"
# Names the policy of a run that recycles (built in or a user's own): readers look for a reset table only there.
RESETS_TAG = "mlflow_flux.recycle"
RESET_SCHEMA = pa.schema([
    pa.field("epoch", pa.int32()),
    pa.field("step", pa.int64()),
    pa.field("layer", pa.string()),
    pa.field("neuron", pa.int32()),
    pa.field("policy", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("dry_run", pa.bool_()),
])


def empty_resets() -> pd.DataFrame:
    """A reset table with no row (a run that reset nothing, or has no table)."""
    return RESET_SCHEMA.empty_table().to_pandas()


def write_resets(blocks: list[tuple], path: str | Path) -> None:
    """Write the reset table from blocks ``(epoch, step, layer, neurons, policy, scores, dry_run)``: one block per
    layer and decision, ``neurons`` and ``scores`` an array each (a row per neuron), the rest shared by its rows."""
    counts = [len(block[3]) for block in blocks]
    columns = []
    for i, field in enumerate(RESET_SCHEMA):
        if i in (3, 5):  # per neuron
            values = np.concatenate([np.asarray(b[i]) for b in blocks]) if blocks else np.empty(0)
            columns.append(pa.array(values.astype(field.type.to_pandas_dtype()), type=field.type))
        else:  # per block, repeated for its neurons
            shared = np.empty(len(blocks), dtype=object)
            shared[:] = [b[i] for b in blocks]
            columns.append(pa.array(np.repeat(shared, counts), type=field.type))
    table = pa.Table.from_arrays(columns, schema=RESET_SCHEMA)
    tmp = Path(path).with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.rename(path)


def read_resets(source) -> pd.DataFrame:
    """A reset table from a path or an open file."""
    return pq.read_table(source, schema=RESET_SCHEMA).to_pandas()
