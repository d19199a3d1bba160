"""``compare()``: select runs -> load them -> compare (pure) -> render and log. The one entry to the read side."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .claims import ClaimSpec
from .loading import load_comparison
from .render import Report, build

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
) -> Report:
    """Build the cross-run participation report.

    Args:
        sweep_id: the parent run of a sweep; by default the latest sweep of the current experiment.
        experiment: compare every variant run of this experiment (name or id) instead.
        filter_string: an MLflow filter over the variant runs, e.g. ``"params.optimizer = 'adam'"``.
        output: also write the report files into this directory.
        log_run: log the report to a new run tagged ``mlflow_flux.role=report`` (a child of the sweep).
        window, tau: override each run's own settings (the metrics then no longer match the report).
        claims: claims to check; by default those the runs declare (the built-in study declares the paper's).

    Returns:
        A :class:`~mlflow_flux.report.render.Report` with the tables, the claims, the run id and the paths written.

    Raises:
        FluxError: no runs match, no run has a readable trace, or the server is unreachable.
    """
    comparison = load_comparison(sweep_id, experiment, filter_string, window, tau)
    if claims is not None:
        comparison.claims = tuple(claims)
    return build(comparison, output=output, log_run=log_run)
