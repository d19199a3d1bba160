"""The paper's two claims (arXiv 2511.10435), as data the study attaches to each of its runs.

The report checks whatever claims the runs it compares declare (see :mod:`mlflow_flux.report.claims`), so these
reach it through the runs' tags, never through an import of the study.
"""

from __future__ import annotations

from ..report.claims import ClaimSpec

__all__ = ["PAPER_CLAIMS"]

PAPER_CLAIMS = (
    ClaimSpec(
        name="a",
        text="lr 0.01 reconstructs best (lowest final reconstruction loss)",
        metric="loss_final",
        better="lower",
        subject=0.01,
        against=None,
        label="final loss",
    ),
    ClaimSpec(
        name="b",
        text="lr 0.01 leaves more neurons inactive, lr 0.0001 engages more (participating fraction, all layers)",
        metric="all/participating_frac",
        better="higher",
        subject=0.0001,
        against=0.01,
        label="participating fraction",
        also=(("all/dead_frac", "dead fraction"),),
    ),
)
