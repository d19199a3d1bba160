"""Claims about groups of runs: what is claimed (a :class:`ClaimSpec`, plain data), and a verdict on our numbers.

A claim travels with the runs it is about: a study declares its claims in a tag on each of its runs
(:data:`CLAIMS_TAG`, JSON), and the report checks whatever claims the runs it compares declare. So the read side
never imports the study, and a user can declare claims about their own runs the same way.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["CLAIMS_TAG", "ClaimSpec", "Claim", "claims_tag_value", "claims_declared_by", "evaluate", "matches_group",
           "verdict"]

_log = logging.getLogger(__name__)

CLAIMS_TAG = "mlflow_flux.claims"


@dataclass(frozen=True)
class ClaimSpec:
    """That the group ``subject`` beats ``against`` (or, if ``None``, every other group) on ``metric``.

    Args:
        name: a short id (``"a"``).
        text: the claim in words.
        metric: a column of the per-group table (``"loss_final"``, ``"all/participating_frac"``).
        better: ``"lower"`` or ``"higher"``: the direction in which ``subject`` is claimed to win.
        subject: the group the claim is about, a value of ``group_by``.
        against: the group it is compared with; ``None``: the best of all other groups.
        group_by: the parameter that defines the groups.
        label: how the metric reads in the evidence.
        also: further columns quoted in the evidence.
    """

    name: str
    text: str
    metric: str
    better: str
    subject: float | str
    against: float | str | None = None
    group_by: str = "lr"
    label: str = ""
    also: tuple[tuple[str, str], ...] = ()  # (column, label)

    def __post_init__(self) -> None:
        if self.better not in ("lower", "higher"):
            raise ValueError(f"better must be 'lower' or 'higher', got {self.better!r}")


@dataclass(frozen=True)
class Claim:
    """A claim with our verdict on it: agrees | disagrees | inconclusive | not testable."""

    name: str
    text: str
    verdict: str
    evidence: str
    notes: tuple[str, ...] = ()  # what drives the verdict: divergence, frozen or dead neurons (see .diagnosis)
    facet: str = ""  # the optimizer the verdict is for, when the runs have several
    numbers: dict = field(default_factory=dict)  # subject and rival: group, mean, 95% bounds, runs

    @property
    def label(self) -> str:
        """``a``, or ``a, adam`` for a verdict on one optimizer's runs."""
        return f"{self.name}, {self.facet}" if self.facet else self.name


def claims_tag_value(specs: Sequence[ClaimSpec]) -> str:
    """The JSON a run carries in :data:`CLAIMS_TAG`."""
    return json.dumps([asdict(spec) for spec in specs], separators=(",", ":"))


def _parse(value: str) -> tuple[ClaimSpec, ...]:
    items = json.loads(value)
    return tuple(ClaimSpec(**{**item, "also": tuple(tuple(pair) for pair in item.get("also", ()))}) for item in items)


def claims_declared_by(runs: Iterable) -> tuple[ClaimSpec, ...]:
    """The claims the runs declare in their tags, each once, in the order first seen."""
    seen: dict[str, ClaimSpec] = {}
    for run in runs:
        value = run.data.tags.get(CLAIMS_TAG)
        if not value:
            continue
        try:
            specs = _parse(value)
        except (ValueError, TypeError) as exc:
            _log.warning("run %s: ignoring an unreadable %s tag (%s)", run.info.run_id, CLAIMS_TAG, exc)
            continue
        for spec in specs:
            seen.setdefault(spec.name, spec)
    return tuple(seen.values())


def matches_group(values: pd.Series, wanted) -> np.ndarray:
    try:
        return np.isclose(values.astype(float), float(wanted), rtol=1e-9, atol=0)
    except (TypeError, ValueError):
        return (values.astype(str) == str(wanted)).to_numpy()


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, (float, int, np.floating, np.integer)) else str(value)


def _fmt(row: pd.Series, column: str, digits: int = 4) -> str:
    low, high = row.get(f"{column} ci_low", math.nan), row.get(f"{column} ci_high", math.nan)
    text = f"{row[column]:.{digits}g}"
    if np.isfinite(low):
        text += f" [{low:.{digits}g}, {high:.{digits}g}]"
    return text


def _overlap(a: pd.Series, b: pd.Series, column: str) -> bool | None:
    lows = (a.get(f"{column} ci_low", math.nan), b.get(f"{column} ci_low", math.nan))
    if any(not np.isfinite(v) for v in lows):
        return None
    return a[f"{column} ci_low"] <= b[f"{column} ci_high"] and b[f"{column} ci_low"] <= a[f"{column} ci_high"]


def verdict(ours: float, other: float, overlap: bool | None, lower: bool) -> str:
    """agrees when ``ours`` beats ``other`` in the claimed direction; a tie or overlapping intervals decide nothing.

    >>> verdict(0.1, 0.2, None, lower=True), verdict(0.1, 0.2, True, lower=True), verdict(0.3, 0.2, False, lower=True)
    ('agrees', 'inconclusive', 'disagrees')
    """
    if overlap or ours == other or not (np.isfinite(ours) and np.isfinite(other)):
        return "inconclusive"
    return "agrees" if (ours < other) == lower else "disagrees"


def evaluate(spec: ClaimSpec, groups: pd.DataFrame) -> Claim:
    """Our verdict on one claim from the per-group table (one row per group: means and 95% interval bounds)."""
    key, label = spec.group_by, spec.label or spec.metric
    if key not in groups.columns or spec.metric not in groups.columns:
        return Claim(spec.name, spec.text, "not testable", f"the runs have no {key!r} groups with {spec.metric!r}")
    hits = matches_group(groups[key], spec.subject)
    subject = groups[hits].iloc[0] if hits.any() else None
    if spec.against is None:
        rivals = groups[~hits]
        if subject is None or rivals.empty:
            return Claim(spec.name, spec.text, "not testable",
                         f"the runs need {key} {_show(spec.subject)} and at least one other {key}")
        values = rivals[spec.metric]
        rival = rivals.loc[values.idxmin() if spec.better == "lower" else values.idxmax()]
        rival_label = f"best other, {key} {_show(rival[key])},"
    else:
        matches = matches_group(groups[key], spec.against)
        rival = groups[matches].iloc[0] if matches.any() else None
        if subject is None or rival is None:
            return Claim(spec.name, spec.text, "not testable",
                         f"the runs need both {key} {_show(spec.subject)} and {key} {_show(spec.against)}")
        rival_label = f"{key} {_show(spec.against)}"
    pieces = [f"{label}: {key} {_show(spec.subject)} {_fmt(subject, spec.metric)}; {rival_label} "
              f"{_fmt(rival, spec.metric)}"]
    for column, name in spec.also:
        if column in groups.columns:
            pieces.append(f"{name}: {key} {_show(spec.subject)} {_fmt(subject, column)}, "
                          f"{key} {_show(rival[key])} {_fmt(rival, column)}")
    overlap = _overlap(subject, rival, spec.metric)
    evidence = "; ".join(pieces)
    if overlap is None:
        evidence += f" (one seed per {key}: no interval, verdict on the means)"
    result = verdict(subject[spec.metric], rival[spec.metric], overlap, lower=spec.better == "lower")
    numbers = {}
    for role, row in (("subject", subject), ("rival", rival)):
        numbers[role] = row[key]
        numbers[f"{role} mean"] = float(row[spec.metric])
        numbers[f"{role} ci_low"] = float(row.get(f"{spec.metric} ci_low", math.nan))
        numbers[f"{role} ci_high"] = float(row.get(f"{spec.metric} ci_high", math.nan))
        numbers[f"{role} runs"] = int(row["n"]) if "n" in row else 1
    return Claim(spec.name, spec.text, result, evidence, numbers=numbers)
