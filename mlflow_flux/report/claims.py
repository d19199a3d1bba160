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

from .intervals import REPLICATE_COLUMN, column_interval, counted, difference, is_fraction, verdict_of

__all__ = ["CLAIMS_TAG", "ClaimSpec", "Claim", "claims_tag_value", "claims_from_json", "claims_declared_by", "evaluate",
           "matches_group"]

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
    """A claim with our verdict on it: agrees | disagrees | inconclusive | inconclusive (n = 1) | not testable |
    not applicable."""

    name: str
    text: str
    verdict: str
    evidence: str
    notes: tuple[str, ...] = ()  # what drives the verdict: divergence, frozen or dead neurons (see .diagnosis)
    facet: str = ""  # the facet values the verdict is for (e.g. "adam, relu"), when the runs have several
    numbers: dict = field(default_factory=dict)  # subject and rival: group, mean, 95% bounds, runs
    readings: tuple[tuple[str, str, str], ...] = ()  # (label, verdict, evidence) under each other definition
    metric_label: str = ""  # what the main verdict measured

    @property
    def label(self) -> str:
        """``a``, or ``a, adam`` for a verdict on one facet value's runs."""
        return f"{self.name}, {self.facet}" if self.facet else self.name

    @property
    def tag(self) -> str:
        """The report run's tag that holds this verdict: ``mlflow_flux.claim_b_adam_relu``.

        >>> Claim("b", "", "agrees", "", facet="adam, relu").tag
        'mlflow_flux.claim_b_adam_relu'
        """
        return "_".join(["mlflow_flux.claim", self.name, *(v.strip() for v in self.facet.split(",") if v.strip())])

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
            if verdict_ not in ("not testable", "not applicable"):
                by_verdict.setdefault(verdict_, []).append(label or "the main measure")
        if len(by_verdict) < 2:
            return ""
        parts = [f"{_verb(v)} under {_and(labels)}" for v, labels in by_verdict.items()]
        return f"({self.label}) depends on the definition: it {_and(parts, ', and ')}."


_VERBS = {"agrees": "agrees", "disagrees": "disagrees", "inconclusive": "is inconclusive"}


def _verb(verdict_: str) -> str:
    return _VERBS.get(verdict_, f"is {verdict_}")


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


# Readings defined on relu(output): not applicable to runs whose hidden layers another known activation follows.
_RELU_COLUMNS = ("all/participating", "all/participating_frac", "all/dead_frac", "all/frozen_frac",
                 "all/participating_frac_absolute", "all/participating_frac_relative", "all/redo_dormant_frac",
                 "all/redo_dormant0_frac")


def _side(rows: pd.DataFrame, column: str, key: str, value) -> tuple[str, dict]:
    """One side of a comparison, as the evidence shows it: its display mean and interval, n, what was left out."""
    kept = counted(rows)
    units = float(kept["units"].median()) if "units" in kept and len(kept) else math.nan
    mean, low, high = column_interval(column, kept[column].to_numpy(dtype=float), units)
    percent = is_fraction(column)

    def fmt(v: float) -> str:
        return f"{v:.1%}" if percent else f"{v:.4g}"

    text = f"{key} {_show(value)} {fmt(mean)}"
    if np.isfinite(low):
        text += f" [{fmt(low)}, {fmt(high)}]"
    left_out = len(rows) - len(kept)
    text += f" (n = {len(kept)}" + (f", {left_out} diverged, left out)" if left_out else ")")
    return text, {"mean": float(mean), "ci_low": float(low), "ci_high": float(high), "runs": len(kept)}


def _values(rows: pd.DataFrame, column: str) -> dict[str, float]:
    """A group's counted runs' values of ``column``, keyed by replicate (runs without one by their position)."""
    kept = counted(rows)
    keys = kept[REPLICATE_COLUMN].astype(str) if REPLICATE_COLUMN in kept else pd.Series([""] * len(kept))
    return {(k if k else f"#{i}"): float(v) for i, (k, v) in enumerate(zip(keys, kept[column]))}


def evaluate(spec: ClaimSpec, runs: pd.DataFrame, group_by: str | None = None) -> Claim:
    """Our verdict on one claim from the run table (one row per run), whose groups are values of ``spec.group_by``
    (else of ``group_by``), and under each of its other readings (:mod:`.intervals`: a paired t-interval on the
    per-replicate differences, diverged runs left out)."""
    claim = _evaluate(spec, runs, group_by)
    readings = []
    for label, column, better in spec.readings:
        other = _evaluate(replace(spec, metric=column, better=better, label=label, also=(), readings=()), runs,
                          group_by)
        readings.append((label, other.verdict, other.evidence))
    return replace(claim, readings=tuple(readings), metric_label=spec.label or spec.metric)


def _evaluate(spec: ClaimSpec, runs: pd.DataFrame, group_by: str | None) -> Claim:
    key, label = spec.group_by or group_by, spec.label or spec.metric
    if key not in runs.columns or spec.metric not in runs.columns:
        return Claim(spec.name, spec.text, "not testable", f"the runs have no {key!r} groups with {spec.metric!r}")
    if spec.metric in _RELU_COLUMNS and "relu_readings" in runs and not runs["relu_readings"].astype(bool).any():
        return Claim(spec.name, spec.text, "not applicable", f"{label} is defined on relu(output); another "
                                                             "activation follows these runs' hidden layers")
    hits = matches_group(runs[key], spec.subject)
    subject = runs[hits]
    if spec.against is None:
        others = runs[~hits]
        means = counted(others).groupby(key, sort=False)[spec.metric].mean()
        if subject.empty or means.dropna().empty:
            return Claim(spec.name, spec.text, "not testable",
                         f"the runs need {key} {_show(spec.subject)} and at least one other {key}")
        rival_value = means.idxmin() if spec.better == "lower" else means.idxmax()
        rival = others[matches_group(others[key], rival_value)]
    else:
        rival_value = spec.against
        rival = runs[matches_group(runs[key], spec.against)]
        if subject.empty or rival.empty:
            return Claim(spec.name, spec.text, "not testable",
                         f"the runs need both {key} {_show(spec.subject)} and {key} {_show(spec.against)}")
    if not np.isfinite(counted(subject)[spec.metric]).any() or not np.isfinite(counted(rival)[spec.metric]).any():
        return Claim(spec.name, spec.text, "not testable",
                     f"{label}: a side has no value (diverged runs are left out; a run with fewer snapshots than one "
                     "window has no participation measure; a trace recorded before a column existed, none of it)")
    subject_text, subject_numbers = _side(subject, spec.metric, key, spec.subject)
    rival_text, rival_numbers = _side(rival, spec.metric, key, rival_value)
    if spec.against is None:
        rival_text = "best other, " + rival_text
    paired = REPLICATE_COLUMN in runs and bool(runs[REPLICATE_COLUMN].astype(str).str.len().gt(0).all())
    diff = difference(_values(subject, spec.metric), _values(rival, spec.metric), paired=paired)
    pieces = [f"{label}: {subject_text}; {rival_text}; {diff.describe(is_fraction(spec.metric))}"]
    for column, name in spec.also:
        if column in runs.columns:
            also_subject, _ = _side(subject, column, key, spec.subject)
            also_rival, _ = _side(rival, column, key, rival_value)
            pieces.append(f"{name}: {also_subject}, {also_rival}")
    numbers = {"subject": spec.subject, "rival": rival_value,
               "difference": diff.mean, "difference ci_low": diff.low, "difference ci_high": diff.high,
               "pairs": diff.n, "paired": diff.paired}
    for role, side in (("subject", subject_numbers), ("rival", rival_numbers)):
        numbers.update({f"{role} {name}": value for name, value in side.items()})
    return Claim(spec.name, spec.text, verdict_of(diff, spec.better), "; ".join(pieces), numbers=numbers)
