"""How the study's runs are read by the report, declared as data (a :class:`~mlflow_flux.report.spec.ReportSpec`) and
carried by every run the study makes (the ``mlflow_flux.report`` tag): groups by learning rate from large to small,
one verdict per optimizer, the study's loss keys, the reconstructions figure, the twins' section, the paper's claims.
The report itself speaks none of this; the MLflow experiment's description is the study's too.
"""

from __future__ import annotations

from ..report.spec import ReportSpec, RunFigure, SeriesSection
from .claims import PAPER_CLAIMS

__all__ = ["STUDY_REPORT", "EXPERIMENT_DESCRIPTION", "LOSS_KEY", "FINAL_LOSS_KEY", "RECONSTRUCTIONS"]

# Under flux/, beside the whole-network summaries: MLflow's UI orders chart sections by name, and the study's first
# section then shows the loss with the participation (docs/decisions.md).
LOSS_KEY = "flux/loss_train"
FINAL_LOSS_KEY = "flux/loss_final"
RECONSTRUCTIONS = "figures/reconstructions.png"

STUDY_REPORT = ReportSpec(
    group_by="lr",
    descending=True,  # the paper's order: 0.01, 0.001, 0.0001
    facet="optimizer",  # the paper's claims may hold under one optimizer and not another
    final_loss_keys=(FINAL_LOSS_KEY,),
    loss_history_keys=(LOSS_KEY,),
    figures=(RunFigure(RECONSTRUCTIONS, "Reconstructions"),),
    sections=(SeriesSection(
        "twin/lyapunov", "Twin runs: finite-time Lyapunov estimate ln(d(t)/d(0))/t", "lambda(t) per epoch", early=0.1,
        sentence="rho > 0: runs whose twins separate faster early end with higher losses."),),
    claims=PAPER_CLAIMS,
    claims_heading="The paper's claims against our runs",
)

EXPERIMENT_DESCRIPTION = (
    "Neuron participation runs recorded by mlflow-flux (https://arxiv.org/abs/2511.10435 reproduced).\n\n"
    "- a sweep run (named `sweep <optimizer> lr×N seed×M <epochs>ep`) holds one child run per variant "
    "(optimizer, learning rate, seed): its loss, `flux/` participation metrics, the per-neuron trace under "
    "`traces/`, the explorer page, figures and model;\n"
    "- `report of <sweep>` runs hold the comparison report: `report/report.html`, and `report/explorer.html`.\n\n"
    "Filter one sweep with `tags.mlflow_flux.sweep_id = '<sweep run id>'`."
)
