"""Render a :class:`~mlflow_flux.report.loading.Comparison`: tables, figures and claims, in HTML, Markdown, CSV
and PNG, written to a directory and logged to a report run."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import logging
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.image
import pandas as pd
from matplotlib.figure import Figure

from .. import fluctuation
from ..figures.draw import save_png
from ..traces import runs as flux_runs
from ..traces.lifecycle import ending
from ..traces.mlflow_adapter import PARENT_RUN_ID_TAG, RUN_NAME_TAG
from ..traces.names import sanitize_key
from ..traces.runs import LAYERS_PARAM
from . import plots
from .analysis import group_table, run_table
from .claims import Claim, evaluate, matches_group
from .diagnosis import claim_notes
from .loading import DEFAULT_LOSS_LABEL, RUN_GROUPS, Comparison, RunData, group_value
from .timeline import early_ranking, verdicts_over_time, where_claims_hold

__all__ = ["Report", "build", "REPORT_DIR", "EXPLORER_FILE"]

_logger = logging.getLogger(__name__)

REPORT_DIR = "report"
EXPLORER_FILE = "explorer.html"  # the explorer page over every compared run, beside report.html


@dataclass
class Report:
    """What a report holds, where it went."""

    runs: pd.DataFrame
    groups: pd.DataFrame
    claims: list[Claim]
    skipped: list[tuple[str, str, str]]
    facet: str | None = None  # the parameter the groups and claims are split by (its column comes first)
    timeline: pd.DataFrame = field(default_factory=pd.DataFrame)  # verdicts over epochs (see .timeline)
    rankings: dict[str, dict] = field(default_factory=dict)  # per section's key: how its early value ranks losses
    run_id: str | None = None
    directory: Path | None = None
    files: list[str] = field(default_factory=list)


def _label(comparison: Comparison, value: str, facet: str = "") -> str:
    """A group as the figures name it: ``lr 0.01``, or ``sgd lr 0.01`` when the runs span several facet values."""
    prefix = f"{facet} " if facet and len(comparison.facets) > 1 else ""
    if comparison.group_by == RUN_GROUPS:
        return prefix + value
    shown = group_value(value)
    return prefix + comparison.group_by + " " + (f"{shown:g}" if isinstance(shown, float) else str(shown))


def _grouping(comparison: Comparison) -> str:
    """What the tables' groups are, in words."""
    return comparison.group_by


def figures(comparison: Comparison, report: Report | None = None) -> dict[str, Figure]:
    by_group: dict[str, list[RunData]] = {}  # label -> runs, in the comparison's group order
    for run in comparison.runs:
        by_group.setdefault(_label(comparison, run.group, run.facet), []).append(run)

    def curves(pick, measured_only: bool = True):
        chosen = {label: [pick(r) for r in runs if r.measured or not measured_only] for label, runs in by_group.items()}
        return {label: series for label, series in chosen.items() if series}

    out = {
        "participation": plots.curves_by_group_figure(
            curves(lambda r: r.summaries["all/participating_frac"]), "Participating neurons over epochs",
            "participating fraction (all layers)"),
        "loss": plots.curves_by_group_figure(curves(lambda r: r.loss, measured_only=False), "Loss over training",
                                             comparison.loss_key, log_y=True, xlabel="step"),
        "tau_sensitivity": plots.curves_by_group_figure(
            curves(lambda r: r.tau_curve), "Participating fraction at the final window against tau",
            "participating fraction", xlabel="tau", log_x=True),
        "tau_sensitivity_relative": plots.curves_by_group_figure(
            curves(lambda r: r.tau_curve_relative),
            "Participating fraction at the final window against the layer-relative tau",
            "participating fraction", xlabel="tau_relative (times the layer's mean relative fluctuation)", log_x=True),
        "dormant": plots.curves_by_group_figure(
            curves(lambda r: r.summaries["all/dormant_frac"]), "ReDo dormant neurons over epochs (tau = dormant_tau)",
            "dormant fraction (all layers but the output)"),
        "weight_fluctuation": plots.curves_by_group_figure(
            curves(lambda r: r.summaries["all/sos_median"]), "Weight fluctuation: median spread of the spread",
            "sos median (all layers)", log_y=True),
        "bias_fluctuation": plots.curves_by_group_figure(
            curves(lambda r: r.summaries["all/bias_fluct_median"]), "Bias fluctuation: median over neurons",
            "bias fluctuation median", log_y=True),
    }
    # A section's metric: one line per run, +-inf (e.g. twins that coincide) left out of the axes.
    for section in comparison.spec.sections:
        lines = {run.name: [run.series[section.key].replace([-math.inf, math.inf], math.nan)]
                 for run in comparison.runs if section.key in run.series}
        if lines:
            out[_section_name(section)] = plots.curves_by_group_figure(lines, f"{section.title} per run",
                                                                      section.ylabel)
    if report is not None and not report.timeline.empty:
        out["verdicts_over_time"] = plots.verdict_timeline_figure(report.timeline, _claim_texts(comparison),
                                                                  _facet_column(comparison))
    for figure in comparison.spec.figures:
        images = []
        for label, runs in by_group.items():
            first = next((r for r in runs if figure.path in r.figures), None)
            if first is not None:
                images.append((f"{label} (seed {first.seed})",
                               matplotlib.image.imread(io.BytesIO(first.figures[figure.path]))))
        if images:
            out[_figure_name(figure)] = plots.stacked_images_figure(
                images, f"{figure.title} across {_grouping(comparison)}s")
    return out


def _figure_name(figure) -> str:
    """A run figure's file stem in the report: ``figures/reconstructions.png`` gives ``reconstructions``."""
    return figure.path.rsplit("/", 1)[-1].removesuffix(".png")


def _section_name(section) -> str:
    """A section figure's file stem: ``twin/lyapunov`` gives ``lyapunov``."""
    return sanitize_key(section.key).rsplit("/", 1)[-1]


def _facet_column(comparison: Comparison) -> str:
    """The name of the facet's column in the verdict tables (``optimizer`` for the study)."""
    return comparison.facet or "facet"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    save_png(figure, buffer, dpi=110)
    return buffer.getvalue()


def _settings(comparison: Comparison) -> pd.DataFrame:
    """The runs' other parameters: one row per setting, its value(s) across the runs."""
    params = pd.DataFrame([r.params for r in comparison.runs])
    keep = [c for c in params.columns if c not in (comparison.group_by, "seed", "threads", LAYERS_PARAM)]
    return pd.DataFrame({"setting": sorted(keep),
                         "value(s)": [", ".join(sorted(set(params[c].dropna().astype(str)))) for c in sorted(keep)]})


# Readable names for the tables people read; the CSV files keep the raw keys.
_COLUMN_NAMES = {
    "name": "run", "seed": "seed", "loss_final": "final loss", "loss_best": "best training loss",
    "diverged_at": "diverged at step", "all/participating_frac": "participating", "all/frozen_frac": "frozen",
    "all/dead_frac": "dead", "all/participating": "participating neurons", "all/sos_median": "spread of spread",
    "all/bias_fluct_median": "bias fluctuation", "all/participating_frac_relative": "participating (layer-relative)",
    "all/dormant0_frac": "dormant (ReDo, tau 0)", "all/dormant_frac": "dormant (ReDo)",
    "all/grama_frac": "dormant (GraMa)",
}
_FRACTIONS = ("all/participating_frac", "all/frozen_frac", "all/dead_frac", "all/participating_frac_relative",
              "all/dormant0_frac", "all/dormant_frac", "all/grama_frac")


def _with_interval(row: pd.Series, column: str, percent: bool) -> str:
    def fmt(v: float) -> str:
        return f"{v:.1%}" if percent else f"{v:.4g}"

    text = fmt(row[column])
    low, high = row.get(f"{column} ci_low", math.nan), row.get(f"{column} ci_high", math.nan)
    if pd.notna(low) and pd.notna(high):
        text += f" [{fmt(low)}, {fmt(high)}]"
    return text


def _groups_for_display(groups: pd.DataFrame, group_by: str, facet: str | None) -> pd.DataFrame:
    """One row per group, readable: value, runs and seeds, means with their 95% intervals, divergences."""
    out = pd.DataFrame({group_by: groups[group_by]})
    if facet and facet in groups and group_by != facet:  # the runs span the facet's values: each group is one's
        out.insert(0, facet, groups[facet])
    out["runs"] = [f"{n} (seed{'s' if n > 1 else ''} {seeds})" for n, seeds in zip(groups["n"], groups["seeds"])]
    for column in ("loss_final", *_FRACTIONS):
        if column in groups:
            out[_COLUMN_NAMES[column]] = [_with_interval(row, column, column in _FRACTIONS)
                                          for _, row in groups.iterrows()]
    if "diverged" in groups:
        out["diverged"] = [f"{d} of {n}" for d, n in zip(groups["diverged"], groups["n"])]
    return out


def _runs_for_display(runs: pd.DataFrame, group_by: str, facet: str | None) -> pd.DataFrame:
    """One row per run, readable; the per-layer columns go to :func:`_layers_for_display` and runs.csv."""
    columns = ["name", *([facet] if facet else []), group_by, "seed", "loss_final", "loss_best", "diverged_at",
               *_FRACTIONS, "all/sos_median",
               "all/bias_fluct_median"]
    out = runs[[c for c in dict.fromkeys(columns) if c in runs]].copy()
    for column in _FRACTIONS:
        if column in out:
            out[column] = [f"{v:.1%}" for v in out[column]]
    if "diverged_at" in out:
        out["diverged_at"] = ["no" if v < 0 else str(int(v)) for v in out["diverged_at"]]
    for column in _FRACTIONS:
        if column in out:
            out[column] = [text if text != "nan%" else "no window" for text in out[column]]
    return out.rename(columns=_COLUMN_NAMES)


def _layers_for_display(runs: pd.DataFrame, group_by: str) -> pd.DataFrame:
    """Participating neurons per layer, one row per run (wide: shown folded)."""
    layer_columns = [c for c in runs.columns if c.endswith("/participating") and not c.startswith("all/")]
    out = runs[["name", group_by, "seed", *layer_columns]].rename(columns={"name": "run"})
    return out.rename(columns={c: c.removesuffix("/participating") for c in layer_columns})


def _readings_for_display(claims: list[Claim]) -> pd.DataFrame:
    """One row per claim judged under several definitions: its verdict under each (claims with none left out)."""
    rows = []
    for claim in claims:
        if claim.readings:
            main = f"{claim.metric_label or 'main measure'} (the verdict above)"
            rows.append({"claim": claim.label, main: claim.verdict,
                         **{label: verdict for label, verdict, _ in claim.readings}})
    return pd.DataFrame(rows)


def _definition_lines(claims: list[Claim]) -> list[str]:
    return [claim.depends_on_definition for claim in claims if claim.depends_on_definition]


_READINGS_NOTE = ("The paper publishes no formula for \"participating\": each claim about it is judged again under "
                  "the layer-relative threshold and under the literature's dormant-neuron measures (ReDo, Sokar et "
                  "al. 2023; GraMa, Liu et al. 2025), at the final window, on the same runs; nothing is tuned to agree "
                  "(docs/metrics.md).")


def _claim_texts(comparison: Comparison) -> dict[str, str]:
    return {spec.name: spec.text for spec in comparison.claims}


def _timeline_for_display(timeline: pd.DataFrame, facet_column: str) -> pd.DataFrame:
    """One row per (claim, facet value, epoch): the verdict and both sides' means with their 95% intervals."""
    if timeline.empty:
        return timeline

    def side(row, role: str) -> str:
        text = f"{row[f'{role} mean']:.4g}"
        if pd.notna(row[f"{role} ci_low"]):
            text += f" [{row[f'{role} ci_low']:.4g}, {row[f'{role} ci_high']:.4g}]"
        shown = group_value(row[role]) if pd.notna(row.get(role)) else ""
        return f"{shown:g}: {text}" if isinstance(shown, float) else f"{shown}: {text}"

    ready = timeline.dropna(subset=["subject mean"]) if "subject mean" in timeline else timeline.iloc[0:0]
    out = pd.DataFrame({"claim": ready["claim"], facet_column: ready[facet_column], "epoch": ready["epoch"],
                        "verdict": ready["verdict"]})
    out["subject"] = [side(row, "subject") for _, row in ready.iterrows()]
    out["rival"] = [side(row, "rival") for _, row in ready.iterrows()]
    out["runs"] = [f"{int(row['subject runs'])} + {int(row['rival runs'])}" for _, row in ready.iterrows()]
    return out


def _ranking_line(section, ranking: dict | None) -> str | None:
    """How a section's early value ranks the final losses, in a sentence."""
    if not ranking:
        return None
    return (f"Early {section.key} (its value at epoch {ranking['early_epoch']}, the end of the first "
            f"{section.early:.0%} of training) ranks the final losses of {ranking['runs']} runs with Spearman's rho = "
            f"{ranking['rho']:.3f} (p = {ranking['p']:.3g}); {section.sentence}")


def _sections(comparison: Comparison, report: Report) -> list[tuple[str, str | None, str]]:
    """The spec's sections that have data: (title, ranking sentence, figure name)."""
    out = []
    for section in comparison.spec.sections:
        if any(section.key in run.series for run in comparison.runs):
            out.append((section.title, _ranking_line(section, report.rankings.get(section.key)),
                        _section_name(section)))
    return out


# What acts mid-line in Markdown (text from a run never starts a line here): emphasis, code, links, tables.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|~])")


def md_escape(value: object) -> str:
    """Text that came from a run (names, tags, params, layer names), made inert in Markdown: HTML is escaped (a
    renderer would pass ``<img onerror=...>`` through), emphasis, code, link and table marks are backslashed,
    lines are joined.

    >>> print(md_escape("<img src=x onerror=alert(1)> [a](b) | *c* lr 0.01"))
    &lt;img src=x onerror=alert(1)&gt; \\[a\\](b) \\| \\*c\\* lr 0.01
    """
    text = html.escape(str(value), quote=False).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def _md_table(frame: pd.DataFrame, index: bool = False, header: bool = True) -> str:
    """A Markdown table (pandas' to_markdown would need the tabulate package); every cell and header escaped."""
    frame = frame.reset_index() if index else frame

    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else md_escape(value)

    rows = [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    head = [md_escape(c) for c in frame.columns] if header else [""] * frame.shape[1]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * frame.shape[1]]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


_TIMELINE_NOTE = ("Each claim judged again every 50 epochs from the traces and loss histories (no re-training): at "
                  "epoch e a run counts with its training loss at e and its participation in the window ending at "
                  "e; same intervals and rule as above.")
_VERDICT_NOTE = ("Verdicts compare 95% intervals over seeds; overlapping intervals are inconclusive. The participation "
                 "measures are mlflow-flux's definitions (below, and docs/metrics.md). Each verdict names what drives "
                 "it: a run that diverged, or neurons that are frozen rather than dead.")


def _section_figures(comparison: Comparison) -> set[str]:
    """Figures shown in their own sections (where each claim holds, the spec's sections), not with the others."""
    return {"verdicts_over_time", *(_section_name(s) for s in comparison.spec.sections)}


def _window_note(comparison: Comparison) -> str | None:
    """Runs whose trace is shorter than one window, said once: they count with their loss only."""
    short = [run for run in comparison.runs if not run.measured]
    if not short:
        return None
    windows = sorted({run.window for run in short})
    return (f"{len(short)} of {len(comparison.runs)} runs hold fewer snapshots than one window "
            f"({', '.join(map(str, windows))}): they count with their loss, and have no participation measure "
            "(train longer, or pass a smaller window).")


def markdown(comparison: Comparison, report: Report, settings: pd.DataFrame, pngs: list[str]) -> str:
    group_by = comparison.group_by
    lines = [
        "# mlflow-flux participation report", "",
        f"Runs: {md_escape(comparison.selection)} at {md_escape(comparison.tracking_uri)} "
        f"({len(comparison.runs)} compared, {len(report.skipped)} skipped), {md_escape(_comparison_made(comparison))}.",
        "",
    ]
    note = _window_note(comparison)
    if note:
        lines += [md_escape(note), ""]
    facet_column = _facet_column(comparison)
    if report.claims:
        lines += [f"## {md_escape(comparison.spec.claims_heading)}", ""]
        for claim in report.claims:  # claims come from the runs' tags: escaped like everything else from a run
            lines += [f"- **({md_escape(claim.label)}) {md_escape(claim.text)}**: **{md_escape(claim.verdict)}**. "
                      f"{md_escape(claim.evidence)}"]
            lines += [f"  - {md_escape(note)}" for note in claim.notes]
        lines += ["", _VERDICT_NOTE, ""]
        readings = _readings_for_display(report.claims)
        if not readings.empty:
            lines += ["## Under each definition", "", md_escape(_READINGS_NOTE), "", _md_table(readings), ""]
            lines += [f"- {md_escape(line)}" for line in _definition_lines(report.claims)] + [""]
    if not report.timeline.empty:
        lines += ["## Where each claim holds, over epochs", ""]
        lines += [f"- {md_escape(line)}" for line in where_claims_hold(report.timeline, _claim_texts(comparison))]
        lines += ["", _TIMELINE_NOTE, "", "![verdicts_over_time](verdicts_over_time.png)", "",
                  "<details><summary>Every verdict with its numbers (also in verdicts_over_time.csv)</summary>", "",
                  _md_table(_timeline_for_display(report.timeline, facet_column)), "", "</details>", ""]
    for title, ranking, figure in _sections(comparison, report):
        lines += [f"## {md_escape(title)}", ""] + ([md_escape(ranking), ""] if ranking else [])
        lines += [f"![{figure}]({figure}.png)", ""]
    lines += [f"## Per {md_escape(_grouping(comparison))} (final window)", "",
              _md_table(_groups_for_display(report.groups, group_by, comparison.facet)),
              "", "## Per run", "", _md_table(_runs_for_display(report.runs, group_by, comparison.facet)), ""]
    if report.skipped:
        lines += ["## Skipped runs", ""] + [f"- {md_escape(name or rid)} ({md_escape(rid)}): {md_escape(why)}"
                                            for rid, name, why in report.skipped]
        lines += [""]
    sectioned = _section_figures(comparison)
    lines += ["## Figures", ""] + [f"![{p}]({p})" for p in pngs if p.removesuffix(".png") not in sectioned]
    lines += ["", "## Participating neurons per layer (also in runs.csv)", "",
              _md_table(_layers_for_display(report.runs, group_by))]
    lines += ["", "## Definitions (ours; see docs/metrics.md)", ""]
    lines += [f"- **{md_escape(term)}**: {md_escape(meaning)}" for term, meaning in fluctuation.DEFINITIONS]
    lines += ["", "## Settings of the runs", "", _md_table(settings), ""]
    return "\n".join(lines)


def _figure_html(name: str, images: dict[str, bytes], wide: bool = False) -> str:
    if name not in images:
        return ""
    return (f"<figure class='{'wide' if wide else ''}'><img alt='{html.escape(name)}' "
            f"src='data:image/png;base64,{base64.b64encode(images[name]).decode()}'>"
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


def _table_html(frame: pd.DataFrame, index: bool = False) -> str:
    # pandas escapes cell text by default; run names and params come from users and must stay text.
    return frame.to_html(index=index, escape=True, float_format=lambda v: f"{v:.4g}", border=0, classes="t")


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;font-size:13px;width:100%}
table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
table.t td:first-child,table.t th:first-child{text-align:left}
.v{font-weight:bold}.agrees{color:#176c2f}.disagrees{color:#a3171e}.inconclusive,.not-testable{color:#8a6100}
figure{display:inline-block;margin:.5em}img{max-width:520px}figure.wide{display:block}figure.wide img{max-width:100%}
dt{font-weight:bold;margin-top:.4em}dd{margin-left:1.5em}.scroll{overflow-x:auto}summary{cursor:pointer}"""


def html_page(comparison: Comparison, report: Report, settings: pd.DataFrame, images: dict[str, bytes]) -> str:
    e = html.escape
    group_by = comparison.group_by
    claims_html = "".join(
        f"<li><b>({e(c.label)}) {e(c.text)}</b>: <span class='v {e(c.verdict.replace(' ', '-'))}'>{e(c.verdict)}"
        f"</span>. {e(c.evidence)}" + ("<ul>" + "".join(f"<li>{e(n)}</li>" for n in c.notes) + "</ul>" if c.notes
                                        else "") + "</li>" for c in report.claims)
    skipped = "".join(f"<li>{e(name or rid)} (<code>{e(rid)}</code>): {e(why)}</li>"
                      for rid, name, why in report.skipped)
    wide = {_figure_name(figure) for figure in comparison.spec.figures}
    sectioned = _section_figures(comparison)
    figures_html = "".join(_figure_html(name, images, wide=name in wide) for name in images if name not in sectioned)
    definitions = "".join(f"<dt>{e(term)}</dt><dd>{e(meaning)}</dd>" for term, meaning in fluctuation.DEFINITIONS)
    note = _window_note(comparison)
    claims_section = f"<p>{e(note)}</p>" if note else ""
    if report.claims:
        claims_section += f"""<h2>{e(comparison.spec.claims_heading)}</h2><ul>{claims_html}</ul>
<p>{e(_VERDICT_NOTE)}</p>"""
        readings = _readings_for_display(report.claims)
        if not readings.empty:
            depends = "".join(f"<li>{e(line)}</li>" for line in _definition_lines(report.claims))
            claims_section += (f"<h2>Under each definition</h2><p>{e(_READINGS_NOTE)}</p><div class='scroll'>"
                               f"{_table_html(readings)}</div>" + (f"<ul>{depends}</ul>" if depends else ""))
    if not report.timeline.empty:
        held = "".join(f"<li>{e(line)}</li>" for line in where_claims_hold(report.timeline, _claim_texts(comparison)))
        claims_section += f"""<h2>Where each claim holds, over epochs</h2><ul>{held}</ul><p>{e(_TIMELINE_NOTE)}</p>
{_figure_html("verdicts_over_time", images, wide=True)}
<details><summary>Every verdict with its numbers (also in verdicts_over_time.csv)</summary><div class="scroll">
{_table_html(_timeline_for_display(report.timeline, _facet_column(comparison)))}</div></details>"""
    for title, ranking, figure in _sections(comparison, report):
        claims_section += (f"<h2>{e(title)}</h2>" + (f"<p>{e(ranking)}</p>" if ranking else "")
                           + _figure_html(figure, images))
    groups_table = _table_html(_groups_for_display(report.groups, group_by, comparison.facet))
    runs_table = _table_html(_runs_for_display(report.runs, group_by, comparison.facet))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mlflow-flux participation report</title>
<style>{_STYLE}</style></head><body>
<h1>mlflow-flux participation report</h1>
<p>Runs: {e(comparison.selection)} at <code>{e(comparison.tracking_uri)}</code> ({len(comparison.runs)} compared,
{len(report.skipped)} skipped), {e(_comparison_made(comparison))}.</p>
{claims_section}
<h2>Per {e(_grouping(comparison))} (final window)</h2><div class="scroll">{groups_table}</div>
<h2>Per run</h2><div class="scroll">{runs_table}</div>
<details><summary>Participating neurons per layer (also in runs.csv)</summary><div class="scroll">
{_table_html(_layers_for_display(report.runs, group_by))}</div></details>
{"<h2>Skipped runs</h2><ul>" + skipped + "</ul>" if skipped else ""}
<h2>Figures</h2>{figures_html}
<h2>Definitions (ours; see docs/metrics.md)</h2><dl>{definitions}</dl>
<h2>Settings of the runs</h2><div class="scroll">{_table_html(settings)}</div>
</body></html>"""


def _write(directory: Path, comparison: Comparison, report: Report) -> list[str]:
    """Write the report's files into an empty ``directory``; returns their names."""
    images = {name: _png(figure) for name, figure in figures(comparison, report).items()}
    pngs = []
    for name, png in images.items():
        (directory / f"{name}.png").write_bytes(png)
        pngs.append(f"{name}.png")
    settings = _settings(comparison)
    report.groups.to_csv(directory / "summary.csv", index=False, float_format="%.17g")
    report.runs.to_csv(directory / "runs.csv", index=False, float_format="%.17g")
    pd.DataFrame(report.skipped, columns=["run_id", "name", "reason"]).to_csv(directory / "skipped.csv", index=False)
    report.timeline.to_csv(directory / "verdicts_over_time.csv", index=False, float_format="%.17g")
    pd.DataFrame([{"claim": c.label, "definition": label, "verdict": verdict, "evidence": evidence}
                  for c in report.claims
                  for label, verdict, evidence in ((c.metric_label, c.verdict, c.evidence), *c.readings)]
                 ).to_csv(directory / "verdicts_by_definition.csv", index=False)
    (directory / "report.md").write_text(markdown(comparison, report, settings, pngs))
    (directory / "report.html").write_text(html_page(comparison, report, settings, images))
    return sorted([*pngs, "summary.csv", "runs.csv", "skipped.csv", "verdicts_over_time.csv",
                   "verdicts_by_definition.csv", "report.md", "report.html"])


def _comparison_made(comparison: Comparison) -> str:
    spec = comparison.spec
    if comparison.loss_key == DEFAULT_LOSS_LABEL:
        loss = (f"the final loss from {' or '.join(spec.final_loss_keys)}, else the last value of "
                f"{' or '.join(spec.loss_history_keys)}")
    else:
        loss = f"the loss from {comparison.loss_key}"
    if comparison.group_by == RUN_GROUPS:
        return f"each run on its own (pass group_by=... to group runs by a parameter), {loss}"
    return f"grouped by the parameter {comparison.group_by}, {loss}"


def _applicable(comparison: Comparison, groups: pd.DataFrame) -> list:
    """The declared claims these groups can test: a claim appears when its grouping and its groups do."""
    specs = []
    for spec in comparison.claims:
        key = spec.group_by or comparison.group_by
        if key != comparison.group_by or key not in groups.columns:
            continue
        named = [spec.subject] if spec.against is None else [spec.subject, spec.against]
        if all(matches_group(groups[key], value).any() for value in named):
            specs.append(spec)
    return specs


def _explorer_page(comparison: Comparison) -> str:
    """The explorer page over every compared run, grouped as the tables group them (their traces read again, all
    columns, a chunk of snapshots at a time)."""
    from mlflow.tracking import MlflowClient

    from ..explorer import Budget, pool_run, render_page
    from ..explorer.runs import run_input
    from ..traces.reader import opened_trace

    client = MlflowClient()
    labels = [_label(comparison, run.group, run.facet) for run in comparison.runs]
    # Twice one run's budget over all of them (4x made a 10-run page 13.5 MB, past the ~10 MB the page may reach),
    # and fewer bins at least, so that many runs stay near that bound too.
    budget = Budget(values=2 * Budget().values // max(1, len(comparison.runs)), rows=256, min_bins=8)
    pooled = []
    for run, label in zip(comparison.runs, labels):
        with opened_trace(client, run.entity) as source:
            given = run_input(client, run.entity, source, label)
            given.window, given.tau = run.window, run.thresholds
            pooled.append(pool_run(given, budget))
    groups = [(label, [i for i, other in enumerate(labels) if other == label]) for label in dict.fromkeys(labels)]
    return render_page(pooled, f"mlflow-flux explorer: {comparison.selection}",
                       f"{len(pooled)} runs at {comparison.tracking_uri}, {_comparison_made(comparison)}", groups)


def build(comparison: Comparison, output: str | Path | None = None, log_run: bool = True,
          explorer: bool = True) -> Report:
    """Compute the tables and claims, write the files, and log them to a report run.

    The files are written into a fresh temporary directory and only they are uploaded; ``output`` gets copies, so
    whatever else that directory holds never reaches the tracking server.
    """
    started = time.perf_counter()
    runs = run_table(comparison)
    groups = group_table(runs, comparison.group_by, comparison.facet)
    specs = _applicable(comparison, groups)
    claims = []
    for facet in comparison.facets:  # one verdict per facet value: a claim may hold under one and not another
        facet_groups = groups[groups[comparison.facet] == facet] if comparison.facet else groups
        facet_runs = runs[runs[comparison.facet] == facet] if comparison.facet else runs
        for spec in specs:
            claim = evaluate(spec, facet_groups, comparison.group_by)
            claims.append(dataclasses.replace(claim, facet=facet if len(comparison.facets) > 1 else "",
                                              notes=tuple(claim_notes(spec, facet_runs, comparison.group_by))))
    rankings = {section.key: early_ranking(comparison, section.key, section.early)
                for section in comparison.spec.sections if section.early is not None}
    report = Report(runs=runs, groups=groups, claims=claims, skipped=comparison.skipped, facet=comparison.facet,
                    timeline=verdicts_over_time(comparison, specs),
                    rankings={key: value for key, value in rankings.items() if value is not None})
    with tempfile.TemporaryDirectory(prefix="mlflow-flux-report-") as tmp:
        written = Path(tmp)
        report.files = _write(written, comparison, report)
        if explorer:
            try:
                (written / EXPLORER_FILE).write_text(_explorer_page(comparison), encoding="utf-8")
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
            report.run_id = _log_report_run(comparison, report, written)
    return report


def _run_made_for_us(client) -> str | None:
    """The run `mlflow run . -e compare` created for this process, if that is where we are."""
    import os

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    run = client.get_run(run_id)
    # Inside `mlflow run .` (the sweep) MLFLOW_RUN_ID is the sweep's own run: the report gets a run of its own.
    if run.info.status == "RUNNING" and run.data.tags.get(flux_runs.ROLE_TAG) in (None, "report"):
        return run_id
    return None


def _report_name(client, comparison: Comparison) -> str:
    """``report of <sweep name>``, or of the selection when the runs are no sweep's."""
    if comparison.sweep_id:
        name = client.get_run(comparison.sweep_id).data.tags.get(RUN_NAME_TAG) or comparison.sweep_id
    else:
        name = comparison.selection
    return f"report of {name}"[:250]


def _log_report_run(comparison: Comparison, report: Report, directory: Path) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = client.get_run(comparison.runs[0].run_id).info.experiment_id
    tags = flux_runs.flux_tags("report", comparison.sweep_id)
    if comparison.sweep_id:
        tags[PARENT_RUN_ID_TAG] = comparison.sweep_id  # the report sits under its sweep in the UI
    tags[RUN_NAME_TAG] = _report_name(client, comparison)
    run_id = _run_made_for_us(client)
    if run_id is None:
        run_id = flux_runs.create_run(client, experiment_id, tags, run_name=tags[RUN_NAME_TAG]).info.run_id
    else:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    with ending(client, run_id):
        verdicts = [RunTag(sanitize_key(f"mlflow_flux.claim_{c.name}" + (f"_{c.facet}" if c.facet else "")),
                           c.verdict) for c in report.claims]
        client.log_batch(run_id, params=[Param("selection", comparison.selection[:500]),
                                         Param("group_by", comparison.group_by),
                                         Param("runs_compared", str(len(comparison.runs)))],
                         tags=verdicts,
                         metrics=[Metric("report/skipped_runs", len(comparison.skipped), 0, 0)])
        client.log_artifacts(run_id, str(directory), REPORT_DIR)
    return run_id
