"""The report as one document: its sections, in order, each a list of blocks (paragraphs, lists, tables, figures,
foldable details, definitions), built once from the analysis and rendered to Markdown and to HTML by
:mod:`.render`. A section added here appears in both, in the same order.

Every text that came from a run (names, params, tags, claims) stays plain text here; each renderer escapes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from .. import fluctuation
from ..traces.names import sanitize_key
from ..traces.runs import LAYERS_PARAM
from .analysis import Report
from .claims import Claim
from .intervals import REPLICATE_COLUMN, is_fraction
from .loading import DEFAULT_LOSS_LABEL, RUN_GROUPS, Comparison
from .timeline import MAIN_READING, where_claims_hold

__all__ = ["Paragraph", "Bullets", "Item", "Table", "FigureRef", "Details", "Definitions", "Section", "Document",
           "report_document", "section_name", "figure_name", "label", "comparison_made"]


class _Block:
    """What the templates dispatch on: the block's kind, its class's name."""

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Paragraph(_Block):
    text: str


@dataclass(frozen=True)
class Item:
    """A list item: an optional bold lead, the text, an optional verdict (coloured in HTML), sub-items."""

    text: str
    lead: str = ""
    verdict: str = ""
    sub: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bullets(_Block):
    items: tuple[Item, ...]


@dataclass(frozen=True)
class Table(_Block):
    frame: pd.DataFrame


@dataclass(frozen=True)
class FigureRef(_Block):
    """A figure the report computed (``<name>.png``)."""

    name: str
    wide: bool = False


@dataclass(frozen=True)
class Details(_Block):
    """A block folded away (HTML ``<details>``) behind ``summary``."""

    summary: str
    blocks: tuple = ()


@dataclass(frozen=True)
class Definitions(_Block):
    terms: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple = ()


@dataclass
class Document:
    title: str
    intro: tuple = ()
    sections: list[Section] = field(default_factory=list)

    @property
    def headings(self) -> list[str]:
        return [self.title, *(section.title for section in self.sections)]


# Readable names for the tables people read; the CSV files keep the raw keys.
_COLUMN_NAMES = {
    "name": "run", REPLICATE_COLUMN: "replicate", "loss_final": "final loss", "loss_best": "best training loss",
    "diverged_at": "diverged at step", "all/participating_frac": "participating", "all/frozen_frac": "frozen",
    "all/dead_frac": "dead", "all/participating": "participating neurons", "all/sos_median": "spread of spread",
    "all/bias_fluct_median": "bias fluctuation", "all/participating_frac_relative": "participating (layer-relative)",
    "all/redo_dormant0_frac": "dormant (ReDo, tau 0)", "all/redo_dormant_frac": "dormant (ReDo)",
    "all/grama_dormant_frac": "dormant (GraMa)", "all/grama_ref_dormant_frac": "dormant (GraMa, authors')",
    "all/reduced_width_0": "reduced width (eps 0)", "all/reduced_width_1e-3": "reduced width (eps 1e-3)",
    "all/reduced_width_1e-2": "reduced width (eps 1e-2)", "output/participating_frac": "output: participating",
    "output/dead_frac": "output: dead", "output/redo_dormant_frac": "output: dormant (ReDo)",
    "output/grama_dormant_frac": "output: dormant (GraMa)",
}
_FRACTIONS = ("all/participating_frac", "all/frozen_frac", "all/dead_frac", "all/participating_frac_relative",
              "all/redo_dormant0_frac", "all/redo_dormant_frac", "all/grama_dormant_frac",
              "all/grama_ref_dormant_frac")
_WIDTHS = ("all/reduced_width_0", "all/reduced_width_1e-3", "all/reduced_width_1e-2")
_OUTPUT = ("output/participating_frac", "output/dead_frac", "output/redo_dormant_frac", "output/grama_dormant_frac")

_TIMELINE_NOTE = ("Each claim judged again every 50 epochs from the traces and loss histories (no re-training), under "
                  "each reading: at epoch e a run counts with its training loss at e and its window ending at e, "
                  "unless it diverged by then; same intervals and rule as above.")
_VERDICT_NOTE = ("Verdicts read a 95% t-interval on the differences between the two groups, paired by replicate "
                 "where the runs share one (same seed: same initial weights), with n - 1 degrees of freedom: agrees or "
                 "disagrees when it excludes 0, inconclusive when it holds 0, 'inconclusive (n = 1)' with one pair. "
                 "A diverged run is left out and counted. Displayed intervals of fractions are t-intervals on logits "
                 "(inside [0, 1]); of losses, on logs. Network-level readings count the hidden units (every watched "
                 "layer but the output layer, which has its own table).")


def label(comparison: Comparison, value: str, facet: str = "") -> str:
    """A group as the figures name it: ``lr 0.01``, or ``sgd lr 0.01`` when the runs span several facet values."""
    from .loading import group_value

    prefix = f"{facet} " if facet and len(comparison.facets) > 1 else ""
    if comparison.group_by == RUN_GROUPS:
        return prefix + value
    shown = group_value(value)
    return prefix + comparison.group_by + " " + (f"{shown:g}" if isinstance(shown, float) else str(shown))


def figure_name(figure) -> str:
    """A run figure's file stem in the report: ``figures/reconstructions.png`` gives ``reconstructions``."""
    return figure.path.rsplit("/", 1)[-1].removesuffix(".png")


def section_name(section) -> str:
    """A section figure's file stem: ``twin/lyapunov`` gives ``lyapunov``."""
    return sanitize_key(section.key).rsplit("/", 1)[-1]


def comparison_made(comparison: Comparison) -> str:
    spec = comparison.spec
    if comparison.loss_key == DEFAULT_LOSS_LABEL:
        loss = (f"the final loss from {' or '.join(spec.final_loss_keys)}, else the last value of "
                f"{' or '.join(spec.loss_history_keys)}")
    else:
        loss = f"the loss from {comparison.loss_key}"
    if comparison.group_by == RUN_GROUPS:
        return f"each run on its own (pass group_by=... to group runs by a parameter), {loss}"
    return f"grouped by the parameter {comparison.group_by}, {loss}"


def _with_interval(row: pd.Series, column: str, percent: bool) -> str:
    def fmt(v: float) -> str:
        return f"{v:.1%}" if percent else f"{v:.4g}"

    if pd.isna(row.get(column)):
        return "n/a"
    text = fmt(row[column])
    low, high = row.get(f"{column} ci_low", math.nan), row.get(f"{column} ci_high", math.nan)
    if pd.notna(low) and pd.notna(high):
        text += f" [{fmt(low)}, {fmt(high)}]"
    return text


def _group_columns(groups: pd.DataFrame, group_by: str, facet: str | None) -> pd.DataFrame:
    out = pd.DataFrame({group_by: groups[group_by]})
    if facet and facet in groups and group_by != facet:  # the runs span the facet's values: each group is one's
        out.insert(0, facet, groups[facet])
    out["n"] = [f"{n}" + (f" ({d} diverged, left out)" if d else "")
                for n, d in zip(groups["n"], groups["diverged"])]
    return out


def _groups_for_display(groups: pd.DataFrame, group_by: str, facet: str | None, columns) -> pd.DataFrame:
    """One row per group, readable: value, runs counted, means with their 95% intervals."""
    out = _group_columns(groups, group_by, facet)
    if "replicates" in groups and groups["replicates"].astype(str).str.len().any():
        out["replicates"] = groups["replicates"]
    for column in columns:
        if column in groups and groups[column].notna().any():
            out[_COLUMN_NAMES.get(column, column)] = [_with_interval(row, column, is_fraction(column))
                                                      for _, row in groups.iterrows()]
    return out


def _runs_for_display(runs: pd.DataFrame, group_by: str, facet: str | None) -> pd.DataFrame:
    """One row per run, readable; the per-layer columns go to runs.csv."""
    columns = ["name", *([facet] if facet else []), group_by, REPLICATE_COLUMN, "loss_final", "loss_best",
               "diverged_at", *_FRACTIONS, "all/sos_median", "all/bias_fluct_median", "all/reduced_width_1e-3"]
    out = runs[[c for c in dict.fromkeys(columns) if c in runs]].copy()
    if REPLICATE_COLUMN in out and not out[REPLICATE_COLUMN].astype(str).str.len().any():
        out = out.drop(columns=[REPLICATE_COLUMN])
    for column in _FRACTIONS:
        if column in out:
            out[column] = [f"{v:.1%}" if pd.notna(v) else "n/a" for v in out[column]]
    if "diverged_at" in out:
        out["diverged_at"] = ["no" if v < 0 else str(int(v)) for v in out["diverged_at"]]
    return out.rename(columns=_COLUMN_NAMES)


def _layers_for_display(runs: pd.DataFrame, group_by: str, suffix: str) -> pd.DataFrame:
    """One per-layer column per run (wide: shown folded)."""
    layer_columns = [c for c in runs.columns if c.endswith(f"/{suffix}") and not c.startswith(("all/", "output/"))]
    out = runs[["name", group_by, *layer_columns]].rename(columns={"name": "run"})
    return out.rename(columns={c: c.removesuffix(f"/{suffix}") for c in layer_columns})


def _readings_for_display(claims: list[Claim]) -> pd.DataFrame:
    """One row per claim judged under several definitions: its verdict and n under each."""
    rows = []
    for claim in claims:
        if claim.readings:
            main = f"{claim.metric_label or 'main measure'} (the verdict above)"
            rows.append({"claim": claim.label, main: _verdict_with_n(claim.verdict, claim.evidence),
                         **{label: _verdict_with_n(verdict, evidence) for label, verdict, evidence in claim.readings}})
    return pd.DataFrame(rows)


def _verdict_with_n(verdict: str, evidence: str) -> str:
    """A verdict with the pairs behind it, read from its evidence (``(paired, n = 3)``)."""
    for marker in ("paired, n = ", "unpaired, n = "):
        if marker in evidence and "(n = " not in verdict:
            n = evidence.split(marker, 1)[1].split(")", 1)[0].split(":", 1)[0]
            return f"{verdict} (n = {n})"
    return verdict


def _timeline_for_display(timeline: pd.DataFrame, facet_column: str) -> pd.DataFrame:
    """One row per (claim, reading, facet value, epoch): the verdict, both sides' means and n, the difference."""
    if timeline.empty or "subject mean" not in timeline:
        return pd.DataFrame()
    ready = timeline.dropna(subset=["subject mean"])

    def side(row, role: str) -> str:
        text = f"{row[f'{role} mean']:.4g}"
        if pd.notna(row[f"{role} ci_low"]):
            text += f" [{row[f'{role} ci_low']:.4g}, {row[f'{role} ci_high']:.4g}]"
        return f"{row[role]}: {text} (n = {int(row[f'{role} runs'])})"

    out = pd.DataFrame({"claim": ready["claim"], "reading": ready["reading"].replace(MAIN_READING, "its own"),
                        facet_column: ready[facet_column], "epoch": ready["epoch"], "verdict": ready["verdict"]})
    out["subject"] = [side(row, "subject") for _, row in ready.iterrows()]
    out["rival"] = [side(row, "rival") for _, row in ready.iterrows()]
    out["difference"] = [f"{row['difference']:+.4g} [{row['difference ci_low']:+.4g}, {row['difference ci_high']:+.4g}]"
                         f" (n = {int(row['pairs'])})" if pd.notna(row["difference ci_low"]) else
                         f"{row['difference']:+.4g} (n = {int(row['pairs'])})" for _, row in ready.iterrows()]
    return out


def _settings(comparison: Comparison) -> pd.DataFrame:
    """The runs' other parameters: one row per setting, its value(s) across the runs."""
    params = pd.DataFrame([r.params for r in comparison.runs])
    skip = (comparison.group_by, comparison.spec.replicate, "threads", LAYERS_PARAM)
    keep = [c for c in params.columns if c not in skip]
    return pd.DataFrame({"setting": sorted(keep),
                         "value(s)": [", ".join(sorted(set(params[c].dropna().astype(str)))) for c in sorted(keep)]})


def _window_note(comparison: Comparison) -> str | None:
    """Runs whose trace is shorter than one window, said once: they count with their loss only."""
    short = [run for run in comparison.runs if not run.measured]
    if not short:
        return None
    windows = sorted({run.window for run in short})
    return (f"{len(short)} of {len(comparison.runs)} runs hold fewer snapshots than one window "
            f"({', '.join(map(str, windows))}): they count with their loss, and have no participation measure "
            "(train longer, or pass a smaller window).")


def _ranking_line(section, ranking: dict | None) -> str | None:
    """How a section's early value ranks the final losses, in a sentence."""
    if not ranking:
        return None
    return (f"Early {section.key} ({ranking['early']}) ranks the final losses of {ranking['runs']} runs with "
            f"Spearman's rho = {ranking['rho']:.3f} (p = {ranking['p']:.3g}); {section.sentence}")


def _claims_sections(comparison: Comparison, report: Report) -> list[Section]:
    sections = []
    items = tuple(Item(f"{claim.evidence}", lead=f"({claim.label}) {claim.text}", verdict=claim.verdict,
                       sub=claim.notes) for claim in report.claims)
    sections.append(Section(comparison.spec.claims_heading, (Bullets(items), Paragraph(_VERDICT_NOTE))))
    readings = _readings_for_display(report.claims)
    if not readings.empty:
        depends = tuple(Item(claim.depends_on_definition) for claim in report.claims if claim.depends_on_definition)
        blocks = [Paragraph(comparison.spec.readings_note), Table(readings)]
        if depends:
            blocks.append(Bullets(depends))
        sections.append(Section("Under each definition", tuple(blocks)))
    if not report.timeline.empty:
        texts = {spec.name: spec.text for spec in comparison.claims}
        facet_column = comparison.facet or "facet"
        held = tuple(Item(line) for line in where_claims_hold(report.timeline, texts))
        others = tuple(Item(line) for line in where_claims_hold(
            report.timeline[report.timeline["reading"] != MAIN_READING], texts, reading=None))
        blocks = [Bullets(held), Paragraph(_TIMELINE_NOTE), FigureRef("verdicts_over_time", wide=True)]
        if others:
            blocks.append(Details("Under each other reading, over epochs", (Bullets(others),)))
        blocks.append(Details("Every verdict with its numbers (also in verdicts_over_time.csv)",
                              (Table(_timeline_for_display(report.timeline, facet_column)),)))
        sections.append(Section("Where each claim holds, over epochs", tuple(blocks)))
    return sections


def report_document(comparison: Comparison, report: Report, figures: list[str]) -> Document:
    """The report's document: every section, in order, from the analysis (``figures``: the names drawn)."""
    group_by, facet = comparison.group_by, comparison.facet
    intro = [Paragraph(f"Runs: {comparison.selection} at {comparison.tracking_uri} ({len(comparison.runs)} "
                       f"compared, {len(report.skipped)} skipped), {comparison_made(comparison)}.")]
    note = _window_note(comparison)
    if note:
        intro.append(Paragraph(note))
    doc = Document("mlflow-flux participation report", tuple(intro))
    if report.claims:
        doc.sections += _claims_sections(comparison, report)
    for section in comparison.spec.sections:
        if any(section.key in run.series for run in comparison.runs):
            ranking = _ranking_line(section, report.rankings.get(section.key))
            doc.sections.append(Section(section.title, (*([Paragraph(ranking)] if ranking else []),
                                                        FigureRef(section_name(section)))))
    groups = report.groups
    doc.sections.append(Section(f"Per {group_by} (final window)", (Table(_groups_for_display(
        groups, group_by, facet, ("loss_final", *_FRACTIONS))),)))
    if any(column in groups and groups[column].notna().any() for column in _OUTPUT):
        doc.sections.append(Section("The output layer (not counted above)", (
            Paragraph("The network's last watched layer, on its own line: its units are not hidden units (for the "
                      "study, the sigmoid pixels, whose 'firing' means a predicted pixel above 0.5)."),
            Table(_groups_for_display(groups, group_by, facet, _OUTPUT)))))
    if any(column in groups and groups[column].notna().any() for column in _WIDTHS):
        doc.sections.append(Section("Redundant units: reduced widths", (
            Paragraph("Hidden units left after merging each unit within eps of its partner (ReLU: positively "
                      "proportional [weights, bias]; tanh: equal or opposite) and dropping units with zero fan-out "
                      "or zero incoming weights (docs/metrics.md); the sum over the hidden layers at the final "
                      "snapshot, and per layer at eps 1e-3 below."),
            Table(_groups_for_display(groups, group_by, facet, _WIDTHS)),
            Details("Reduced width (eps 1e-3) per layer, per run",
                    (Table(_layers_for_display(report.runs, group_by, "reduced_width_1e-3")),)))))
    doc.sections.append(Section("Per run", (Table(_runs_for_display(report.runs, group_by, facet)),)))
    if report.skipped:
        doc.sections.append(Section("Skipped runs", (Bullets(tuple(Item(f"{name or rid} ({rid}): {why}")
                                                                   for rid, name, why in report.skipped)),)))
    sectioned = {"verdicts_over_time", *(section_name(s) for s in comparison.spec.sections)}
    wide = {figure_name(figure) for figure in comparison.spec.figures}
    doc.sections.append(Section("Figures", tuple(FigureRef(name, wide=name in wide) for name in figures
                                                 if name not in sectioned)))
    doc.sections.append(Section("Participating neurons per layer", (Details(
        "One column per layer (also in runs.csv)", (Table(_layers_for_display(report.runs, group_by,
                                                                               "participating")),)),)))
    doc.sections.append(Section("Definitions (ours; see docs/metrics.md)", (
        Definitions(fluctuation.DEFINITIONS),
        Table(pd.DataFrame([(s.key, s.meaning, s.source) for s in fluctuation.SUMMARIES],
                           columns=["summary key", "meaning", "definition"])))))
    doc.sections.append(Section("Settings of the runs", (Table(_settings(comparison)),)))
    return doc
