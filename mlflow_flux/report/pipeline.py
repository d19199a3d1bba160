"""``compare()``: select runs -> load them -> compare (pure) -> render and log. The one entry to the read side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidParameter
from ..traces import mlflow_adapter
from .claims import ClaimSpec
from .loading import load_comparison
from .render import Report, build
from .spec import ReportSpec

__all__ = ["compare"]


def compare(
    sweep_id: str | None = None,
    *,
    experiment: str | None = None,
    filter_string: str | None = None,
    output: str | Path | None = None,
    log_run: bool = True,
    window: int | None = None,
    tau: float | None = None,
    claims: Sequence[ClaimSpec] | None = None,
    group_by: str | None = None,
    loss_key: str | None = None,
    spec: ReportSpec | None = None,
    explorer: bool = True,
) -> Report:
    """Build the cross-run participation report.

    Args:
        sweep_id: the parent run of a sweep; by default the latest sweep of the current experiment, or every run
            of it that holds a trace when it has no sweep.
        experiment: compare every run of this experiment (name or id) that holds a trace instead.
        filter_string: an MLflow filter over the runs that hold a trace, e.g. ``"params.optimizer = 'adam'"``.
        output: also write the report files into this directory.
        log_run: log the report to a new run tagged ``mlflow_flux.role=report`` (a child of the sweep).
        window, tau: override each run's own settings (the metrics then no longer match the report).
        claims: claims to check; by default those the runs declare (the built-in study declares the paper's).
            A claim appears only when the runs have its groups.
        group_by: the parameter whose values form the groups (``"width"``); default: the spec's, else every run on
            its own. Runs without the parameter are listed as skipped.
        loss_key: the metric reported as the loss; default: the spec's final loss keys (``loss/final``), else the
            last value of its history keys (``loss/train``).
        spec: how to read the runs (grouping, facet, loss keys, figures, sections, claims); default: the one the runs
            declare (the built-in study declares its own), else none.
        explorer: also write the explorer page over all the compared runs (``explorer.html``).

    Returns:
        A :class:`~mlflow_flux.report.render.Report` with the tables, the claims, the run id and the paths written.

    Raises:
        FluxError: no runs match, no run has a readable trace, or the server is unreachable.
    """
    for name, value in (("group_by", group_by), ("loss_key", loss_key)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InvalidParameter(name, value, "expected a non-empty name")
    subject = f"sweep {sweep_id}" if sweep_id else f"experiment {experiment!r}" if experiment else None
    with mlflow_adapter.auth_errors(what=subject):  # 401/403 from the store or the artifacts: one line each
        comparison = load_comparison(sweep_id, experiment, filter_string, window, tau, group_by, loss_key, spec=spec)
        if claims is not None:
            comparison.claims = tuple(claims)
        return build(comparison, output=output, log_run=log_run, explorer=explorer)
