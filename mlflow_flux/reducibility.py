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
    if rows == 0 or width == 0:
        return np.zeros(rows, dtype=np.int64)
    offsets = (np.arange(rows) * width)[:, None]
    active = merged & kept & np.take_along_axis(kept, partner, axis=1)
    source = (np.arange(width)[None, :] + offsets)[active]
    target = (partner + offsets)[active]
    labels = np.arange(rows * width)
    # The smallest index of each component spreads along the edges; pointer jumping shortens the paths.
    while source.size:
        low = np.minimum(labels[source], labels[target])
        before = labels.copy()
        np.minimum.at(labels, source, low)
        np.minimum.at(labels, target, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            break
    roots = labels.reshape(rows, width) == np.arange(rows * width).reshape(rows, width)
    return (roots & kept).sum(axis=1)


def reduced_widths(partner: np.ndarray, distance: np.ndarray, fanout_rel: np.ndarray, w_norm: np.ndarray,
                   sizes: Sequence[int], eps: float) -> list[np.ndarray]:
    """Per layer (``sizes`` units side by side on the last axis), the units left at ``eps``: units within ``eps``
    of their partner are merged with it, units whose fan-out or incoming weights' norm is at most ``eps`` times its
    layer's mean are dropped.

    Args:
        partner, distance, fanout_rel, w_norm: ``(B, N)`` trace columns at each window's last snapshot (NaN where
            the recorder did not compute them: a layer whose following activation or next layer is unknown).
        sizes: units per layer.
        eps: the tolerance (see :func:`tolerance`).

    Returns:
        One ``(B,)`` float64 array per layer: its reduced width, NaN where the layer has no partner columns.

    >>> p = np.array([[1.0, 0.0, 0.0]]); d = np.array([[0.0, 0.0, 0.5]])
    >>> fan = np.array([[1.0, 1.0, 1.0]]); norm = np.array([[1.0, 2.0, 1.0]])
    >>> [w.tolist() for w in reduced_widths(p, d, fan, norm, [3], 0.0)]   # units 0 and 1 merge; 2 stays
    [[2.0]]
    """
    partner, distance = np.asarray(partner, dtype=np.float64), np.asarray(distance, dtype=np.float64)
    fanout_rel, w_norm = np.asarray(fanout_rel, dtype=np.float64), np.asarray(w_norm, dtype=np.float64)
    limit = tolerance(eps)
    out = []
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        start += size
        known = np.isfinite(partner[..., rows])
        shape = partner.shape[:-1]
        if not known.any():
            out.append(np.full(shape, np.nan))
            continue
        norm = w_norm[..., rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            relative_norm = norm / np.nanmean(norm, axis=-1, keepdims=True)
        dropped = (fanout_rel[..., rows] <= limit) | (relative_norm <= limit)  # NaN compares False: kept
        index = np.where(known, partner[..., rows], np.arange(size)).astype(np.int64)
        merged = known & (distance[..., rows] <= limit)
        flat = (-1, size)
        counts = merge_components(index.reshape(flat), merged.reshape(flat), (~dropped).reshape(flat))
        widths = counts.reshape(shape).astype(np.float64)
        out.append(np.where(known.any(axis=-1), widths, np.nan))
    return out
