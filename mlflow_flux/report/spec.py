"""What a report speaks: its grouping, facet, loss metrics, extra figures and sections, and claims, as plain data.

The report's own defaults speak no experiment's vocabulary: every run is its own group, no facet, the loss from
``loss/final`` else the last ``loss/train``. An experiment that wants more declares a :class:`ReportSpec` and puts
it on its runs (the tag :data:`SPEC_TAG`, JSON), the way it declares its claims: the built-in study declares its
learning-rate groups, its facets (optimizer, activation, recycling policy), seeds as replicates, its
``flux/loss_*`` keys, the reconstructions figure, the twins' section
and the paper's claims (``mlflow_flux.study.report``). The read side never imports the study.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace

from .claims import ClaimSpec, claims_from_json

__all__ = ["ReportSpec", "RunFigure", "SeriesSection", "SPEC_TAG", "DEFAULT_SPEC", "spec_tag_value",
           "spec_declared_by"]

_log = logging.getLogger(__name__)

SPEC_TAG = "mlflow_flux.report"


@dataclass(frozen=True)
class RunFigure:
    """A figure every run of the experiment logs (``path`` under its artifacts), shown once per group."""

    path: str
    title: str


@dataclass(frozen=True)
class SeriesSection:
    """A section for a per-epoch metric the runs log (``key``): one line per run, and, with ``early`` set, how well
    its value at the end of the first ``early`` fraction of the epochs ranks the runs' final losses (Spearman)."""

    key: str
    title: str
    ylabel: str
    early: float | None = None
    sentence: str = ""  # what a positive rank correlation means, in words


@dataclass(frozen=True)
class ReportSpec:
    """How a report reads a set of runs.

    Args:
        group_by: the parameter whose values form the groups; ``None``: every run on its own.
        descending: groups of numbers from large to small (a learning rate's usual order), else small to large.
        facets: parameters whose values split the report (groups, claims, verdicts per combination of values).
        replicate: the parameter whose value makes runs of different groups a pair (the study's ``seed``: same
            initial weights): verdicts compare paired differences; ``None``: runs are not paired.
        final_loss_keys: the metrics that hold a run's final loss, the first one a run has counts.
        loss_history_keys: the metrics whose history is the run's loss, the first one a run has counts (its last
            value is the final loss when no final key is logged).
        figures: figures the runs log, shown once per group.
        sections: per-epoch metrics with a section of their own.
        claims: claims about the groups, judged per facet and over epochs.
        claims_heading: the heading of the claims' section.
        readings_note: what the report says before judging a claim under each definition (why several).
    """

    group_by: str | None = None
    descending: bool = False
    facets: tuple[str, ...] = ()
    replicate: str | None = None
    final_loss_keys: tuple[str, ...] = ("loss/final",)
    loss_history_keys: tuple[str, ...] = ("loss/train",)
    figures: tuple[RunFigure, ...] = ()
    sections: tuple[SeriesSection, ...] = ()
    claims: tuple[ClaimSpec, ...] = ()
    claims_heading: str = "Claims against the runs"
    readings_note: str = ("Each claim with other readings is judged again under each, on the same runs and the same "
                          "units; nothing is tuned to agree (docs/metrics.md).")

    def with_overrides(self, **values) -> ReportSpec:
        """The spec with the values given (None: keep the spec's)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


DEFAULT_SPEC = ReportSpec()


def spec_tag_value(spec: ReportSpec) -> str:
    """The JSON a run carries in :data:`SPEC_TAG`."""
    return json.dumps(asdict(spec), separators=(",", ":"))


def _parse(value: str) -> ReportSpec:
    data = json.loads(value)
    known = {f.name for f in fields(ReportSpec)}
    if data.get("facet") and not data.get("facets"):  # written before a spec took several facets
        data["facets"] = [data["facet"]]
    data = {k: v for k, v in data.items() if k in known}  # a newer writer's extra fields are ignored
    for name in ("final_loss_keys", "loss_history_keys", "facets"):
        if name in data:
            data[name] = tuple(data[name])
    data["figures"] = tuple(RunFigure(**item) for item in data.get("figures", ()))
    data["sections"] = tuple(SeriesSection(**item) for item in data.get("sections", ()))
    data["claims"] = claims_from_json(json.dumps(data.get("claims", [])))
    return ReportSpec(**data)


def spec_declared_by(runs: Iterable) -> ReportSpec | None:
    """The spec the runs declare in their tags (the first readable one), or None."""
    for run in runs:
        value = run.data.tags.get(SPEC_TAG)
        if not value:
            continue
        try:
            return _parse(value)
        except (ValueError, TypeError, KeyError) as exc:
            _log.warning("run %s: ignoring an unreadable %s tag (%s)", run.info.run_id, SPEC_TAG, exc)
    return None

