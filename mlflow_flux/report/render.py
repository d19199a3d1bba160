"""The report's files: its document (:mod:`.document`) rendered twice, to Markdown and to HTML, from two Jinja2
templates (``templates/``) that walk the same sections in the same order; its figures as PNG; its tables as CSV.

Jinja2 comes with MLflow; the templates keep the markup out of the Python, and one document keeps the two formats
from drifting apart (a test compares their headings).
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup
from matplotlib.figure import Figure

from ..figures.draw import save_png
from .analysis import Report
from .document import Document
from .loading import Comparison

__all__ = ["REPORT_DIR", "EXPLORER_FILE", "md_escape", "to_markdown", "to_html", "write_report"]

REPORT_DIR = "report"
EXPLORER_FILE = "explorer.html"  # the explorer page over every compared run, beside report.html

# What acts mid-line in Markdown (text from a run never starts a line here): emphasis, code, links, tables.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_\[\]|~])")

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table.t{border-collapse:collapse;font-size:13px;width:100%}
table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}
table.t td:first-child,table.t th:first-child{text-align:left}
.v{font-weight:bold}.agrees{color:#176c2f}.disagrees{color:#a3171e}.inconclusive,.not-testable{color:#8a6100}
figure{display:inline-block;margin:.5em}img{max-width:520px}figure.wide{display:block}figure.wide img{max-width:100%}
dt{font-weight:bold;margin-top:.4em}dd{margin-left:1.5em}.scroll{overflow-x:auto}summary{cursor:pointer}"""


def md_escape(value: object) -> str:
    """Text that came from a run (names, tags, params, layer names), made inert in Markdown: HTML is escaped (a
    renderer would pass ``<img onerror=...>`` through), emphasis, code, link and table marks are backslashed,
    lines are joined.

    >>> print(md_escape("<img src=x onerror=alert(1)> [a](b) | *c* lr 0.01"))
    &lt;img src=x onerror=alert(1)&gt; \\[a\\](b) \\| \\*c\\* lr 0.01
    """
    text = html.escape(str(value), quote=False).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


def _md_table(frame: pd.DataFrame) -> str:
    """A Markdown table (pandas' to_markdown would need the tabulate package); every cell and header escaped."""
    def cell(value) -> str:
        return f"{value:.4g}" if isinstance(value, float) else md_escape(value)

    rows = [[cell(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(md_escape(c) for c in frame.columns) + " |", "|" + "---|" * frame.shape[1]]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _html_table(frame: pd.DataFrame) -> Markup:
    # pandas escapes cell text (escape=True); run names and params come from users and must stay text.
    return Markup(frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}", border=0, classes="t"))


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("mlflow_flux.report", "templates"), autoescape=autoescape,
                             trim_blocks=False, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    env.filters.update(md=md_escape, md_table=_md_table, html_table=_html_table,
                       verdict_class=lambda verdict: str(verdict).split(" (")[0].replace(" ", "-"))
    return env


def to_markdown(doc: Document) -> str:
    """The document as Markdown."""
    text = _environment(False).get_template("report.md.j2").render(doc=doc)
    return re.sub(r"\n{3,}", "\n\n", text)


def to_html(doc: Document, images: dict[str, bytes]) -> str:
    """The document as one HTML page, its figures inline."""
    encoded = {name: base64.b64encode(png).decode() for name, png in images.items()}
    return _environment(True).get_template("report.html.j2").render(doc=doc, images=encoded, style=Markup(_STYLE))


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    save_png(figure, buffer, dpi=110)
    return buffer.getvalue()


def write_report(directory: Path, comparison: Comparison, report: Report, figures: dict[str, Figure]) -> list[str]:
    """Write the report's files into an empty ``directory``; returns their names."""
    from .document import report_document

    images = {name: _png(figure) for name, figure in figures.items()}
    for name, png in images.items():
        (directory / f"{name}.png").write_bytes(png)
    report.groups.to_csv(directory / "summary.csv", index=False, float_format="%.17g")
    report.runs.to_csv(directory / "runs.csv", index=False, float_format="%.17g")
    pd.DataFrame(report.skipped, columns=["run_id", "name", "reason"]).to_csv(directory / "skipped.csv", index=False)
    report.timeline.to_csv(directory / "verdicts_over_time.csv", index=False, float_format="%.17g")
    pd.DataFrame([{"claim": c.label, "definition": label, "verdict": verdict, "evidence": evidence}
                  for c in report.claims
                  for label, verdict, evidence in ((c.metric_label, c.verdict, c.evidence), *c.readings)]
                 ).to_csv(directory / "verdicts_by_definition.csv", index=False)
    doc = report_document(comparison, report, list(images))
    (directory / "report.md").write_text(to_markdown(doc), encoding="utf-8")
    (directory / "report.html").write_text(to_html(doc, images), encoding="utf-8")
    return sorted([*(f"{name}.png" for name in images), "summary.csv", "runs.csv", "skipped.csv",
                   "verdicts_over_time.csv", "verdicts_by_definition.csv", "report.md", "report.html"])
