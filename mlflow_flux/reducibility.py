"""Redundant units, read from the trace's per-neuron columns: how many units of a layer are left once the units that
make a network reducible are merged or dropped. Pure numpy: the recorder's summaries and the report share it.

The reducibility literature ("Functional Equivalence and Path Connectivity of Reducible Hyperbolic Tangent
Networks", Farrugia-Roberts 2023; Sussmann 1992) names three kinds of units a network can lose without changing its
function: units with zero outgoing weights, constant units (zero incoming weights), and units whose incoming weights
and bias are proportional to another's (equal or opposite for tanh, whose odd symmetry folds the sign into the
outgoing weight; positively proportional for ReLU, since relu(a z) = a relu(z) for a > 0). The recorder writes, per
unit and snapshot, its closest partner (``partner``), how far it is (``partner_distance``: 1 - cosine for ReLU, the
relative distance to the partner or its negation for tanh) and its outgoing weights' norm against its layer's mean
(``fanout_rel``); :func:`reduced_widths` counts what is left at a tolerance eps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["EXACT", "tolerance", "reduced_widths", "merge_components"]

# eps = 0 reads as "equal to float32 rounding": a duplicate stored in float32 is that close, and units that merely
# point the same way are not (1 - cos of 1e-7 is an angle of 4.5e-4 rad).
EXACT = 1e-7


def tolerance(eps: float) -> float:
    """The tolerance a reading at ``eps`` applies: ``eps``, and at least :data:`EXACT`.

    >>> tolerance(0.0), tolerance(1e-3)
    (1e-07, 0.001)
    """
    return max(float(eps), EXACT)


def merge_components(partner: np.ndarray, merged: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """How many groups the kept units of each row form when every merged unit joins its partner.

    Args:
        partner: ``(B, H)`` integer index of each unit's partner within its row's layer.
        merged: ``(B, H)`` whether the unit is within the tolerance of its partner.
        kept: ``(B, H)`` whether the unit is kept (not dropped for zero fan-out or zero incoming weights).

    Returns:
        ``(B,)`` counts: the connected components among the kept units, an edge from each merged unit to its partner
        where both are kept.

    >>> partner = np.array([[1, 0, 0, 1]])           # units 0 and 1 are partners; 2 and 3 point at them
    >>> merge_components(partner, np.array([[True, True, True, False]]), np.ones((1, 4), bool)).tolist()
    [2]
    """
    rows, width = partner.shape
    kept = np.asarray(kept, dtype=bool)
    counts = kept.sum(axis=1)
    # Only the units merged into a kept partner join anything, and they are few: the components are found among them
    # alone (a compact label per unit taking part), never over every unit of every row.
    row, unit = np.nonzero(merged & kept)
    target = partner[row, unit]
    joins = kept[row, target] & (target != unit)
    row, source, target = row[joins], (row * width + unit)[joins], (row * width + target)[joins]
    if not source.size:
        return counts
    nodes, ends = np.unique(np.concatenate([source, target]), return_inverse=True)
    source, target = ends[: source.size], ends[source.size :]
    labels = np.arange(nodes.size)
    # The smallest label of each component spreads along the edges; pointer jumping shortens the paths.
    while True:
        low = np.minimum(labels[source], labels[target])
        before = labels.copy()
        np.minimum.at(labels, source, low)
        np.minimum.at(labels, target, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            break
    node_rows = nodes // width
    roots = labels == np.arange(nodes.size)
    return counts - np.bincount(node_rows, minlength=rows) + np.bincount(node_rows[roots], minlength=rows)


def reduced_widths(partner: np.ndarray, distance: np.ndarray, fanout_rel: np.ndarray, w_norm: np.ndarray,
                   sizes: Sequence[int], epsilons: Sequence[float]) -> list[list[np.ndarray]]:
    """Per tolerance and layer (``sizes`` units side by side on the last axis), the units left at ``eps``: units
    within ``eps`` of their partner are merged with it, units whose fan-out or incoming weights' norm is at most
    ``eps`` times its layer's mean are dropped.

    Args:
        partner, distance, fanout_rel, w_norm: ``(B, N)`` trace columns at each window's last snapshot (NaN where
            the recorder did not compute them: a layer whose following activation or next layer is unknown).
        sizes: units per layer.
        epsilons: the tolerances (see :func:`tolerance`); what does not depend on one is computed once for all.

    Returns:
        Per tolerance, one ``(B,)`` float64 array per layer: its reduced width, NaN where the layer has no partner
        columns.

    >>> p = np.array([[1.0, 0.0, 0.0]]); d = np.array([[0.0, 0.0, 0.5]])
    >>> fan = np.array([[1.0, 1.0, 1.0]]); norm = np.array([[1.0, 2.0, 1.0]])
    >>> [[w.tolist() for w in layers] for layers in reduced_widths(p, d, fan, norm, [3], [0.0, 0.5])]
    [[[2.0]], [[1.0]]]
    """
    partner, distance = np.asarray(partner), np.asarray(distance)
    fanout_rel, w_norm = np.asarray(fanout_rel), np.asarray(w_norm)
    # Each limit compared as a float64 scalar, so a float32 column is compared in float64 without a float64 copy.
    limits = [np.float64(tolerance(eps)) for eps in epsilons]
    out: list[list[np.ndarray]] = [[] for _ in limits]
    shape = partner.shape[:-1]
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        start += size
        layer_partner = partner[..., rows]
        known = np.isfinite(layer_partner)
        if not known.any():
            for widths in out:
                widths.append(np.full(shape, np.nan))
            continue
        norm = np.asarray(w_norm[..., rows], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative_norm = norm / np.nanmean(norm, axis=-1, keepdims=True)
        index = np.where(known, layer_partner, np.arange(size)).astype(np.int64).reshape(-1, size)
        any_known = known.any(axis=-1)
        fanout, gap = fanout_rel[..., rows], distance[..., rows]
        for limit, widths in zip(limits, out):
            dropped = (fanout <= limit) | (relative_norm <= limit)  # NaN compares False: kept
            merged = known & (gap <= limit)
            counts = merge_components(index, merged.reshape(index.shape), (~dropped).reshape(index.shape))
            widths.append(np.where(any_known, counts.reshape(shape).astype(np.float64), np.nan))
    return out
