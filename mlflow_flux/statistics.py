"""The per-neuron sums the recorder keeps between snapshots, and the statistics a snapshot makes of them: declared once.

Everything else reads these tables: the recorder's buffers and its torch path (``recording/accumulators.py``), the
merge across ranks (``recording/distributed.py``), which values are defined (NaN also stands for "not defined"), the
trace's columns (``traces/schema.py``) and docs/traces.md's column table (a test compares it). The C fast path's
layout is generated from them when the package is built (``setup.py`` writes ``_fastpath_layout.h``) and checked at
import. Adding a statistic touches this table, one C function and one torch function.

Pure data: no imports, so that ``setup.py`` can read this file before anything is installed.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Sum", "Statistic", "SUMS", "STATISTICS", "SUM_NAMES", "STAT_NAMES", "COMPUTED", "COMPUTED_ROWS", "DERIVED",
           "CHAINED", "DEFINED_WHEN", "sum_row", "c_layout"]


@dataclass(frozen=True)
class Sum:
    """One float64 row of per-neuron sums, added into on every step and zeroed at every snapshot.

    ``merge`` says how ranks combine it under torch.distributed: ``samples`` (the shifted-sum triple of the outputs,
    merged exactly with Chan's formulas), ``add`` (summed over ranks), ``local`` (every rank holds the same value:
    the synchronized gradients the optimizer applies).
    """

    name: str
    merge: str
    meaning: str


@dataclass(frozen=True)
class Statistic:
    """One trace column: a float32 value per neuron and snapshot.

    ``defined`` says when it has a value (else NaN): ``always``, ``previous`` (a previous snapshot's weights are
    kept), ``initial`` (the first snapshot's weights are kept), ``bias`` (the layer has one), ``samples`` (a training
    forward pass since the last snapshot), ``gradients`` (a gradient since then), ``chain`` (computed by the recorder
    from the layer's weights and the next layer's, where the layer's place in a chain of layers is known),
    ``derived`` (computed from other columns, NaN where they are). The C pass fills the others, each at its row of
    the trace (``OUT_ROW`` in the generated layout).
    """

    name: str
    defined: str
    meaning: str


SUMS = (
    Sum("count", "samples", "outputs seen (samples; every position of a conv's plane)"),
    Sum("shifted_sum", "samples", "sum of output - shift (shift: the mean of the window's first batch)"),
    Sum("shifted_sumsq", "samples", "sum of (output - shift)^2"),
    Sum("positive", "add", "outputs above zero"),
    Sum("relu_sum", "add", "sum of relu(output), the outputs above zero"),
    Sum("grad_sumsq", "local", "sum over gradient passes of the squared L2 norm of the incoming weights' gradient"),
    Sum("grad_abs", "local", "sum over gradient passes of the mean absolute gradient of the incoming weights"),
    Sum("grad_abs_pass", "local", "the last gradient pass's mean absolute gradient of the incoming weights"),
    Sum("grad_passes", "local", "gradient passes (backward passes, or optimizer steps with optimizer=)"),
)

# The trace's statistics in the file's order. The columns the fluctuation summaries read come first (one byte range
# per row group for a reader over HTTP); derived columns come last (the C pass computes the others, in this order).
STATISTICS = (
    Statistic("w_std", "always",
              "population standard deviation of the neuron's incoming weights at the snapshot: **the neuron's "
              "spread**"),
    Statistic("bias", "bias", "the neuron's bias (NaN when the layer has none)"),
    Statistic("act_rate", "samples",
              "fraction of the neuron's outputs (pre-activations) above 0 over the training steps since the previous "
              "snapshot: how often it fires behind a ReLU"),
    Statistic("w_step", "previous",
              "L2 norm of the change of the incoming weights since the previous snapshot (NaN on the first, or with "
              "`w_step=False`)"),
    Statistic("w_norm", "always", "L2 norm of the incoming weights"),
    Statistic("w_dist0", "initial",
              "L2 norm of the incoming weights' change since the first snapshot (NaN with `w_dist0=False`)"),
    Statistic("act_std", "samples",
              "population standard deviation of the neuron's outputs over the training steps since the previous "
              "snapshot"),
    Statistic("act_relu_mean", "samples",
              "mean of relu(output) over the same outputs as `act_mean`: the activity of the ReDo dormant score "
              "(docs/metrics.md)"),
    Statistic("grad_abs_mean", "gradients",
              "mean, over the gradient passes since the previous snapshot, of the mean absolute gradient of the "
              "incoming weights: GraMa's gradient magnitude (docs/metrics.md)"),
    Statistic("grad_abs_last", "gradients",
              "the mean absolute gradient of the incoming weights in the last gradient pass before the snapshot: "
              "GraMa as its authors' code reads it (docs/metrics.md)"),
    Statistic("partner", "chain",
              "the index of the unit of the same layer closest to this one (its redundant partner; docs/metrics.md), "
              "for a hidden layer whose following activation is known (NaN otherwise)"),
    Statistic("partner_distance", "chain",
              "how far the partner is: 1 - cosine of [incoming weights, bias] (ReLU), or ||v_i -+ v_j|| / ||v_i|| "
              "(tanh, equal or opposite); 0: a duplicate"),
    Statistic("fanout_rel", "chain",
              "the norm of the unit's outgoing weights (its column of the next layer) over its layer's mean of the "
              "same (NaN when the next layer is not known)"),
    Statistic("w_mean", "always", "mean of the incoming weights at the snapshot"),
    Statistic("act_mean", "samples",
              "mean of the neuron's output (its pre-activation) over every sample (and, for conv, every position) of "
              "the training steps since the previous snapshot"),
    Statistic("grad_norm", "gradients",
              "root mean square, over the gradient passes since the previous snapshot, of the L2 norm of the "
              "gradient of the incoming weights"),
    Statistic("w_rel_step", "derived", "`w_step / w_norm`: the last step's size against the weights' size"),
)

SUM_NAMES = tuple(s.name for s in SUMS)
STAT_NAMES = tuple(s.name for s in STATISTICS)
DERIVED = tuple(s.name for s in STATISTICS if s.defined == "derived")
CHAINED = tuple(s.name for s in STATISTICS if s.defined == "chain")
# What a snapshot's C pass (and the torch path) computes, in this order, and each one's row in the trace.
COMPUTED = tuple(s.name for s in STATISTICS if s.defined not in ("derived", "chain"))
COMPUTED_ROWS = tuple(STAT_NAMES.index(name) for name in COMPUTED)
DEFINED_WHEN = ("always", "previous", "initial", "bias", "samples", "gradients", "chain", "derived")


def sum_row(name: str) -> int:
    """The row of a sum in a layer's ``(len(SUMS), neurons)`` block.

    >>> sum_row("count"), sum_row("grad_passes") == len(SUMS) - 1
    (0, True)
    """
    return SUM_NAMES.index(name)


def c_layout() -> str:
    """The C header the fast path is compiled with: the rows of the sums, the statistics it computes, when each is
    defined, the row of the trace each is written to, and their names (which the module exports, checked against
    these tables at import).
    """
    def enum(names, last):
        return "enum { " + ", ".join(n.upper() for n in names) + f", {last} }};"

    lines = [
        "/* Generated by setup.py from mlflow_flux/statistics.py: edit the tables there, not this file. */",
        enum(SUM_NAMES, "SUM_ROWS"),
        enum(COMPUTED, "N_STATS"),
        enum(("DEF_" + d for d in DEFINED_WHEN), "N_DEFINED"),
        "static const int DEFINED[N_STATS] = {"
        + ", ".join("DEF_" + s.defined.upper() for s in STATISTICS if s.name in COMPUTED) + "};",
        "static const int OUT_ROW[N_STATS] = {" + ", ".join(map(str, COMPUTED_ROWS)) + "};",
        "#define SUM_NAMES_LIST " + ", ".join(f'"{n}"' for n in SUM_NAMES),
        '#define SUM_FORMAT "' + "s" * len(SUM_NAMES) + '"',
        "#define STAT_NAMES_LIST " + ", ".join(f'"{n}"' for n in COMPUTED),
        '#define STAT_FORMAT "' + "s" * len(COMPUTED) + '"',
    ]
    return "\n".join(lines) + "\n"
