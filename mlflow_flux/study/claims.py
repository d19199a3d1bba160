"""The paper's two claims (arXiv 2511.10435), as data the study attaches to each of its runs.

The report checks whatever claims the runs it compares declare (see :mod:`mlflow_flux.report.claims`), so these
reach it through the runs' tags, never through an import of the study.
"""

from __future__ import annotations

from ..report.claims import ClaimSpec
from ..report.loading import READINGS

__all__ = ["PAPER_CLAIMS"]

PAPER_CLAIMS = (
    ClaimSpec(
        name="a",
        text="lr 0.01 reconstructs best (lowest final reconstruction loss)",
        metric="loss_final",
        group_by="lr",
        better="lower",
        subject=0.01,
        against=None,
        label="final loss",
    ),
    ClaimSpec(
        name="b",
        text=("lr 0.01 leaves more neurons inactive, lr 0.0001 engages more "
              "(participating fraction of the hidden units)"),
        metric="all/participating_frac",
        group_by="lr",
        better="higher",
        subject=0.0001,
        against=0.01,
        label="participating fraction",
        also=(("all/dead_frac", "dead fraction"),),
        # The paper publishes no formula: the claim is judged under the other readings too (docs/metrics.md).
        readings=tuple(r for r in READINGS if r[1] != "all/participating_frac_absolute"),
    ),
)
