"""Claims about groups of runs: what is claimed (a :class:`ClaimSpec`, plain data), and a verdict on our numbers.

A claim travels with the runs it is about: a study declares its claims in a tag on each of its runs
(:data:`CLAIMS_TAG`, JSON), and the report checks whatever claims the runs it compares declare. So the read side
never imports the study, and a user can declare claims about their own runs the same way.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

__all__ = ["CLAIMS_TAG", "ClaimSpec", "Claim", "claims_tag_value", "claims_from_json", "claims_declared_by", "evaluate",
           "matches_group", "verdict"]

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
        group_by: the parameter that defines the groups; ``None``: the report's grouping.
        label: how the metric reads in the evidence.
        also: further columns quoted in the evidence.
        readings: other definitions of what the claim measures, each ``(label, column, better)``: the claim is
            judged under each as well, and the report says when the verdict depends on the definition.
    """

    name: str
    text: str
    metric: str
    better: str
    subject: float | str
    against: float | str | None = None
    group_by: str | None = None
    label: str = ""
    also: tuple[tuple[str, str], ...] = ()  # (column, label)
    readings: tuple[tuple[str, str, str], ...] = ()  # (label, column, better)

    def __post_init__(self) -> None:
        for better in (self.better, *(reading[2] for reading in self.readings)):
            if better not in ("lower", "higher"):
                raise ValueError(f"better must be 'lower' or 'higher', got {better!r}")


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
    readings: tuple[tuple[str, str, str], ...] = ()  # (label, verdict, evidence) under each other definition
    metric_label: str = ""  # what the main verdict measured

    @property
    def label(self) -> str:
        """``a``, or ``a, adam`` for a verdict on one optimizer's runs."""
        return f"{self.name}, {self.facet}" if self.facet else self.name

    @property
    def depends_on_definition(self) -> str:
        """One sentence when the verdict differs between the claim's definitions (testable ones), else ``""``.

        >>> Claim("b", "", "agrees", "", metric_label="ours",
        ...       readings=(("ReDo", "disagrees", ""), ("GraMa", "agrees", ""))).depends_on_definition
        '(b) depends on the definition: it agrees under ours and GraMa, and disagrees under ReDo.'
        """
        by_verdict: dict[str, list[str]] = {}
        for label, verdict_, _ in (("" if not self.metric_label else self.metric_label, self.verdict, ""),
                                   *self.readings):
            if verdict_ != "not testable":
                by_verdict.setdefault(verdict_, []).append(label or "the main measure")
        if len(by_verdict) < 2:
            return ""
        parts = [f"{_VERBS[v]} under {_and(labels)}" for v, labels in by_verdict.items()]
        return f"({self.label}) depends on the definition: it {_and(parts, ', and ')}."


_VERBS = {"agrees": "agrees", "disagrees": "disagrees", "inconclusive": "is inconclusive"}


def _and(items: Sequence[str], last: str = " and ") -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + last + items[-1]


def claims_tag_value(specs: Sequence[ClaimSpec]) -> str:
    """The JSON a run carries in :data:`CLAIMS_TAG`."""
    return json.dumps([asdict(spec) for spec in specs], separators=(",", ":"))


def claims_from_json(value: str) -> tuple[ClaimSpec, ...]:
    """The claims in a :func:`claims_tag_value` string."""
    items = json.loads(value)
    return tuple(ClaimSpec(**{**item, "also": tuple(tuple(pair) for pair in item.get("also", ())),
                              "readings": tuple(tuple(r) for r in item.get("readings", ()))}) for item in items)


def claims_declared_by(runs: Iterable) -> tuple[ClaimSpec, ...]:
    """The claims the runs declare in their tags, each once, in the order first seen."""
    seen: dict[str, ClaimSpec] = {}
    for run in runs:
        value = run.data.tags.get(CLAIMS_TAG)
        if not value:
            continue
        try:
            specs = claims_from_json(value)
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


def evaluate(spec: ClaimSpec, groups: pd.DataFrame, group_by: str | None = None) -> Claim:
    """Our verdict on one claim from the per-group table (one row per group: means and 95% interval bounds), whose
    groups are values of ``spec.group_by`` (else of ``group_by``), and under each of its other readings."""
    claim = _evaluate(spec, groups, group_by)
    readings = []
    for label, column, better in spec.readings:
        other = _evaluate(replace(spec, metric=column, better=better, label=label, also=(), readings=()), groups,
                          group_by)
        readings.append((label, other.verdict, other.evidence))
    return replace(claim, readings=tuple(readings), metric_label=spec.label or spec.metric)


def _evaluate(spec: ClaimSpec, groups: pd.DataFrame, group_by: str | None) -> Claim:
    key, label = spec.group_by or group_by, spec.label or spec.metric
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
    missing = [row[key] for row in (subject, rival) if not np.isfinite(row[spec.metric])]
    if missing:
        return Claim(spec.name, spec.text, "not testable",
                     f"{label}: {key} {', '.join(map(_show, missing))} has no value (a run with fewer snapshots than "
                     "one window has no participation measure; a trace recorded before a column existed, none of it)")
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
