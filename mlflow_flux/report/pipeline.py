"""``compare()``: select runs -> load them -> analyse (pure) -> figures -> the document rendered twice -> files and
the report's run. The one entry to the read side."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidParameter
from ..traces import mlflow_adapter
from .analysis import Report, analyse
from .claims import ClaimSpec
from .figures import report_figures
from .loading import Comparison, load_comparison
from .publish import explorer_page, log_report_run
from .render import EXPLORER_FILE, write_report
from .spec import ReportSpec

__all__ = ["compare", "build"]

_logger = logging.getLogger(__name__)


def build(comparison: Comparison, output: str | Path | None = None, log_run: bool = True,
          explorer: bool = True) -> Report:
    """Analyse the loaded runs, draw the figures, write the files, and log them to a report run.

    The files are written into a fresh temporary directory and only they are uploaded; ``output`` gets copies, so
    whatever else that directory holds never reaches the tracking server.
    """
    started = time.perf_counter()
    report = analyse(comparison)
    with tempfile.TemporaryDirectory(prefix="mlflow-flux-report-") as tmp:
        written = Path(tmp)
        report.files = write_report(written, comparison, report, report_figures(comparison, report))
        if explorer:
            try:
                (written / EXPLORER_FILE).write_text(explorer_page(comparison), encoding="utf-8")
                report.files.append(EXPLORER_FILE)
            except Exception as exc:  # noqa: BLE001 -- a page is worth less than the report
                _logger.warning("the report's explorer page was not built: %s", exc)
        if output is not None:
            report.directory = Path(output)
            report.directory.mkdir(parents=True, exist_ok=True)
            for name in report.files:
                shutil.copyfile(written / name, report.directory / name)
        comparison.timings["render"] = time.perf_counter() - started
        if log_run:
            report.run_id = log_report_run(comparison, report, written)
    return report


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
