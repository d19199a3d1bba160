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
    facets=("optimizer", "activation", "recycle"),  # the paper's claims may hold under one and not another
    replicate="seed",  # same seed, same initial weights at every learning rate: the comparison is paired
    final_loss_keys=(FINAL_LOSS_KEY,),
    loss_history_keys=(LOSS_KEY,),
    figures=(RunFigure(RECONSTRUCTIONS, "Reconstructions"),),
    # The early window is fixed here, before any atlas is run: the first 10% of the epochs (docs/decisions.md).
    sections=(SeriesSection(
        "twin/lyapunov", "Twin runs: the largest finite-time Lyapunov exponent per window (Benettin)",
        "lambda_1 per epoch, per window", early=0.1,
        sentence="rho > 0: runs whose twins separate faster early end with higher losses."),),
    claims=PAPER_CLAIMS,
    claims_heading="The paper's claims against our runs",
    readings_note=("The paper publishes no formula for \"participating\": each claim about it is judged again under "
                   "the layer-relative threshold and under the literature's dormant-neuron measures (ReDo, Sokar et "
                   "al. 2023; GraMa, Liu et al. 2025, as we average it and as its authors' code reads it), on the "
                   "same runs and the same (hidden) units; nothing is tuned to agree (docs/metrics.md)."),
)

EXPERIMENT_DESCRIPTION = (
    "Neuron participation runs recorded by mlflow-flux (https://arxiv.org/abs/2511.10435 reproduced).\n\n"
    "- a sweep run (named `sweep <optimizer> lr×N seed×M <epochs>ep`) holds one child run per variant "
    "(optimizer, learning rate, seed): its loss, `flux/` participation metrics, the per-neuron trace under "
    "`traces/`, the explorer page, figures and model;\n"
    "- `report of <sweep>` runs hold the comparison report: `report/report.html`, and `report/explorer.html`.\n\n"
    "Filter one sweep with `tags.mlflow_flux.sweep_id = '<sweep run id>'`."
)
