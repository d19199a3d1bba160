"""Runs that share their start, neuron by neuron: two runs whose initial weights were the same (equal fingerprints,
as the sweep's variants of one seed are at every learning rate) hold the same neuron under the same index, so their
difference per neuron and bin means something. Pure: pooled runs in, float32 differences out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .build import PooledRun

__all__ = ["Pair", "pair_runs", "difference"]


class Pair:
    """Runs ``a`` and ``b`` (indices into the page's runs) and their per-layer, per-quantity difference ``a - b``."""

    def __init__(self, a: int, b: int, layers: dict[str, dict[str, np.ndarray]], skipped: list[str]) -> None:
        self.a, self.b, self.layers, self.skipped = a, b, layers, skipped


def difference(a: PooledRun, b: PooledRun) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """``a - b`` per layer and quantity, computed on the pooled float32 means (before the page's bfloat16 encoding:
    same-start differences can be smaller than its resolution), for the layers both hold neuron by neuron in the same
    bins; and the layers left out, with why."""
    out, skipped = {}, []
    if len(a.epochs) != len(b.epochs) or (a.epochs != b.epochs).any() or a.width != b.width:
        return out, ["the runs' snapshots or bins differ"]
    for name, layer in a.layers.items():
        other = b.layers.get(name)
        if other is None:
            skipped.append(f"{name} (not in both)")
        elif layer.banded or other.banded:
            skipped.append(f"{name} (banded: its drawn neurons are each run's own extremes)")
        elif not np.array_equal(layer.neurons, other.neurons):
            skipped.append(f"{name} (different neurons recorded)")
        else:
            out[name] = {c: (values.astype(np.float32) - other.values[c].astype(np.float32))
                         for c, values in layer.values.items() if c in other.values}
    return out, skipped


def pair_runs(pooled: Sequence[PooledRun]) -> tuple[list[Pair], str | None]:
    """Pairs of runs with equal fingerprints: each run with the first run of its fingerprint (the reference); and,
    when no two runs share a start, why nothing is paired."""
    by_start: dict[str, list[int]] = {}
    for index, run in enumerate(pooled):
        if run.run.fingerprint:
            by_start.setdefault(run.run.fingerprint, []).append(index)
    pairs = []
    for members in by_start.values():
        for other in members[1:]:
            layers, skipped = difference(pooled[other], pooled[members[0]])
            pairs.append(Pair(other, members[0], layers, skipped))
    if pairs or len(pooled) < 2:
        return pairs, None
    missing = sum(1 for run in pooled if not run.run.fingerprint)
    if missing:
        return pairs, (f"{missing} of {len(pooled)} runs recorded no fingerprint of their initial weights (recorded "
                       "before mlflow-flux kept one): runs are paired only where their starts are known equal")
    return pairs, "no two runs started from the same weights (their fingerprints differ): no neuron is the same neuron"
