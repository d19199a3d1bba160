"""The report's figures, computed from the loaded runs and the analysis (no rendering, no fetching): curves by
group, the spec's sections and run figures, the verdicts over epochs. :mod:`.plots` draws them."""

from __future__ import annotations

import io
import math

import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

from . import plots
from .analysis import Report
from .document import figure_name, label, section_name
from .loading import Comparison, RunData
from .timeline import MAIN_READING

__all__ = ["report_figures"]


def _finite(series) -> bool:
    return series is not None and bool(np.isfinite(np.asarray(series, dtype=float)).any())


def _figure(curves, *args, **kwargs) -> Figure | None:
    """``plots.curves_by_group_figure`` of ``curves``, or None when no group has a number to draw."""
    return plots.curves_by_group_figure(curves, *args, **kwargs) if curves else None


def report_figures(comparison: Comparison, report: Report | None = None) -> dict[str, Figure]:
    """Every figure of the report, by file stem."""
    by_group: dict[str, list[RunData]] = {}  # label -> runs, in the comparison's group order
    for run in comparison.runs:
        by_group.setdefault(label(comparison, run.group, run.facet), []).append(run)

    def curves(pick, measured_only: bool = True):
        """Each group's series that hold a number: a reading not applicable to a group (ReLU's under tanh) is all
        NaN there, and leaves the group out of that figure."""
        chosen = {name: [series for series in (pick(r) for r in runs if r.measured or not measured_only)
                         if _finite(series)] for name, runs in by_group.items()}
        return {name: series for name, series in chosen.items() if series}

    drawn = {
        "participation": _figure(
            curves(lambda r: r.summaries["all/participating_frac"]), "Participating neurons over epochs",
            "participating fraction (hidden units)"),
        "loss": _figure(curves(lambda r: r.loss, measured_only=False), "Loss over training", comparison.loss_key,
                        log_y=True, xlabel="step"),
        "tau_sensitivity": _figure(
            curves(lambda r: r.tau_curve), "Participating fraction at the final window against tau",
            "participating fraction (hidden units)", xlabel="tau", log_x=True),
        "tau_sensitivity_relative": _figure(
            curves(lambda r: r.tau_curve_relative),
            "Participating fraction at the final window against the layer-relative tau",
            "participating fraction (hidden units)", xlabel="tau_relative (times the layer's mean relative "
                                                             "fluctuation)", log_x=True),
        "dormant": _figure(
            curves(lambda r: r.summaries["all/redo_dormant_frac"]),
            "ReDo dormant neurons over epochs (tau = dormant_tau)", "dormant fraction (hidden units)"),
        "weight_fluctuation": _figure(
            curves(lambda r: r.summaries["all/sos_median"]), "Weight fluctuation: median spread of the spread",
            "sos median (hidden units)", log_y=True),
        "bias_fluctuation": _figure(
            curves(lambda r: r.summaries["all/bias_fluct_median"]), "Bias fluctuation: median over neurons",
            "bias fluctuation median", log_y=True),
    }
    # A figure with no number in it (every group's reading not applicable) is left out: there is nothing to draw,
    # and a log axis over no data cannot be drawn at all.
    out = {name: figure for name, figure in drawn.items() if figure is not None}
    reduced = curves(lambda r: r.summaries.get("all/reduced_width_1e-3"))  # none in a trace without partners
    if reduced:
        out["reduced_width"] = plots.curves_by_group_figure(reduced, "Redundant units: reduced width over epochs",
                                                            "hidden units left at eps 1e-3")
    # A section's metric: one line per run, +-inf (e.g. twins that coincide) left out of the axes.
    for section in comparison.spec.sections:
        lines = {run.name: [series] for run in comparison.runs if section.key in run.series
                 and _finite(series := run.series[section.key].replace([-math.inf, math.inf], math.nan))}
        if lines:
            out[section_name(section)] = plots.curves_by_group_figure(lines, f"{section.title} per run",
                                                                      section.ylabel)
    if report is not None and not report.timeline.empty:
        main = report.timeline[report.timeline["reading"] == MAIN_READING]
        out["verdicts_over_time"] = plots.verdict_timeline_figure(
            main, {spec.name: spec.text for spec in comparison.claims}, comparison.facet or "facet")
    for figure in comparison.spec.figures:
        images = []
        for name, runs in by_group.items():
            first = next((r for r in runs if figure.path in r.figures), None)
            if first is not None:
                which = f" ({comparison.spec.replicate} {first.replicate})" if first.replicate else ""
                images.append((f"{name}{which}", matplotlib.image.imread(io.BytesIO(first.figures[figure.path]))))
        if images:
            out[figure_name(figure)] = plots.stacked_images_figure(images,
                                                                   f"{figure.title} across {comparison.group_by}s")
    return out
