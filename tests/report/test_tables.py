"""The report's pure functions, table in and table out, on runs built here (no MLflow store): the run and group
tables, the verdicts and their notes, verdicts over epochs, early rankings, the spec a study declares, and the
readable tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mlflow_flux.report.analysis import group_table, run_table
from mlflow_flux.report.claims import ClaimSpec, evaluate
from mlflow_flux.report.diagnosis import claim_notes
from mlflow_flux.report.loading import Comparison, RunData
from mlflow_flux.report.render import _applicable, _groups_for_display, _md_table, _runs_for_display, md_escape
from mlflow_flux.report.spec import ReportSpec, RunFigure, SeriesSection, spec_declared_by, spec_tag_value
from mlflow_flux.report.timeline import early_ranking, verdicts_over_time, where_claims_hold

EPOCHS = 60


def _summaries(participating: float, dead: float, epochs: int = EPOCHS, window: int = 10) -> pd.DataFrame:
    index = pd.Index(range(window - 1, epochs), name="epoch")
    values = {"all/participating_frac": participating, "all/participating": participating * 100, "all/dead_frac": dead,
              "all/sos_median": 0.1, "all/bias_fluct_median": 0.01, "fc/participating": participating * 100}
    return pd.DataFrame({k: np.full(len(index), v) for k, v in values.items()}, index=index)


def _run(name: str, lr: float, seed: int, loss: float, participating: float, dead: float, facet: str = "",
         loss_curve: np.ndarray | None = None, summaries: pd.DataFrame | None = None, series=None) -> RunData:
    curve = loss_curve if loss_curve is not None else np.linspace(1.0, loss, EPOCHS)
    return RunData(run_id=name, name=name, group=str(lr), seed=str(seed),
                   params={"lr": str(lr), "seed": str(seed), "epochs": str(EPOCHS), "optimizer": facet or "adam"},
                   final_loss=loss, loss=pd.Series(curve, index=range(EPOCHS)),
                   summaries=_summaries(participating, dead) if summaries is None else summaries,
                   tau_curve=pd.Series(dtype=float), layers=["fc"], facet=facet, series=series or {})


STUDY_LIKE = ReportSpec(group_by="lr", descending=True)


def _comparison(runs, facet=None, claims=(), spec=STUDY_LIKE) -> Comparison:
    return Comparison(runs, [], "test", None, "sqlite://", tuple(claims), {}, "lr", "loss", facet, spec)


LOWER_LOSS = ClaimSpec("a", "0.01 reconstructs best", "loss_final", "lower", 0.01, label="final loss")
MORE_ACTIVE = ClaimSpec("b", "0.0001 engages more", "all/participating_frac", "higher", 0.0001, against=0.01)


def test_the_run_table_holds_each_runs_final_window_and_a_group_table_its_intervals():
    runs = [_run(f"r{i}", lr, i, 0.1 + 0.01 * i, 0.5 + 0.01 * i, 0.2) for i, lr in enumerate([0.01, 0.01, 0.0001])]
    table = run_table(_comparison(runs))
    assert table["all/frozen_frac"].round(6).tolist() == [0.3, 0.29, 0.28]
    assert table["diverged_at"].tolist() == [-1, -1, -1]
    groups = group_table(table, "lr")
    first = groups[groups["lr"] == 0.01].iloc[0]
    assert first["n"] == 2 and math.isclose(first["loss_final"], 0.105)
    assert first["loss_final ci_low"] < 0.105 < first["loss_final ci_high"]
    assert math.isnan(groups[groups["lr"] == 0.0001].iloc[0]["loss_final ci_low"])  # one run: no interval


def test_a_run_shorter_than_a_window_counts_with_its_loss_and_has_no_participation():
    short = _run("short", 0.01, 0, 0.1, 0.5, 0.2, summaries=pd.DataFrame(index=pd.Index([], name="epoch")))
    other = _run("other", 0.0001, 0, 0.2, 0.7, 0.1)
    table = run_table(_comparison([short, other]))
    assert math.isnan(table.loc[0, "all/participating_frac"]) and math.isnan(table.loc[0, "all/frozen_frac"])
    groups = group_table(table, "lr")
    claim = evaluate(MORE_ACTIVE, groups, "lr")
    assert claim.verdict == "not testable" and "fewer snapshots than one window" in claim.evidence
    assert evaluate(LOWER_LOSS, groups, "lr").verdict == "agrees"


def test_a_diverged_group_is_named_in_the_notes_with_the_best_loss_verdict():
    curve = np.r_[np.linspace(1.0, 0.01, 30), np.full(30, 0.5)]  # learned, then diverged
    runs = [_run("fast", 0.01, 0, 0.5, 0.3, 0.5, loss_curve=curve), _run("slow", 0.0001, 0, 0.1, 0.8, 0.1)]
    table = run_table(_comparison(runs))
    assert table.loc[0, "diverged_at"] > 0
    notes = claim_notes(LOWER_LOSS, table, "lr")
    assert any("diverged in 1 of 1 runs" in note for note in notes)
    assert any(note.startswith("on the best loss during training instead") and "agree" in note for note in notes)


def test_verdicts_over_epochs_per_facet_value_and_the_sentences_they_make():
    runs = [_run(f"{o}{lr}{s}", lr, s, loss, part, 0.1, facet=o)
            for o in ("adam", "sgd") for s in (0, 1)
            for lr, loss, part in ((0.01, 0.1 + 0.001 * s, 0.2 + 0.01 * s), (0.0001, 0.3 + 0.001 * s, 0.8 + 0.01 * s))]
    comparison = _comparison(runs, facet="optimizer", claims=[MORE_ACTIVE])
    table = verdicts_over_time(comparison, [MORE_ACTIVE], every=20)
    assert list(table.columns[:4]) == ["claim", "optimizer", "epoch", "verdict"]
    assert sorted(set(table["epoch"])) == [19, 39, 59] and set(table["verdict"]) == {"agrees"}
    lines = where_claims_hold(table, {"b": MORE_ACTIVE.text})
    assert lines == [f"(b) {MORE_ACTIVE.text} under {o}: agrees at epochs 19-59; at the last epoch (59): agrees"
                     for o in ("adam", "sgd")]


def test_an_early_value_ranks_the_final_losses():
    runs = [_run(f"r{i}", 0.01, i, loss, 0.5, 0.1, series={"twin/lyapunov": pd.Series(np.full(EPOCHS, rate))})
            for i, (loss, rate) in enumerate([(0.1, 0.01), (0.2, 0.02), (0.3, 0.03), (0.4, 0.05)])]
    ranking = early_ranking(_comparison(runs), "twin/lyapunov", 0.1)
    assert ranking["rho"] == 1.0 and ranking["runs"] == 4 and ranking["early_epoch"] == 5
    assert early_ranking(_comparison(runs[:2]), "twin/lyapunov") is None  # fewer than three runs


def test_only_claims_whose_groups_the_runs_have_apply():
    runs = [_run("a", 0.01, 0, 0.1, 0.5, 0.1), _run("b", 0.001, 0, 0.2, 0.5, 0.1)]
    comparison = _comparison(runs, claims=[LOWER_LOSS, MORE_ACTIVE])
    groups = group_table(run_table(comparison), "lr")
    assert [spec.name for spec in _applicable(comparison, groups)] == ["a"]  # no 0.0001 group for (b)


def test_a_spec_travels_as_a_tag_and_comes_back_equal():
    class Run:
        def __init__(self, tags):
            self.data = type("Data", (), {"tags": tags})()
            self.info = type("Info", (), {"run_id": "r"})()

    spec = ReportSpec(group_by="lr", descending=True, facet="optimizer", final_loss_keys=("f",),
                      loss_history_keys=("h",), figures=(RunFigure("figures/x.png", "X"),),
                      sections=(SeriesSection("twin/lyapunov", "T", "l", early=0.1),), claims=(MORE_ACTIVE,))
    runs = [Run({}), Run({"mlflow_flux.report": "not json"}), Run({"mlflow_flux.report": spec_tag_value(spec)})]
    assert spec_declared_by(runs) == spec
    assert spec_declared_by([Run({})]) is None


def test_the_readable_tables_escape_what_came_from_a_run():
    runs = [_run("<b>x</b> | y", 0.01, 0, 0.1, 0.5, 0.1)]
    table = run_table(_comparison(runs))
    shown = _runs_for_display(table, "lr", None)
    assert shown.iloc[0]["participating"] == "50.0%"
    markdown = _md_table(shown)
    assert "&lt;b&gt;x&lt;/b&gt; \\| y" in markdown
    assert md_escape("*a* [b](c)") == "\\*a\\* \\[b\\](c)"
    grouped = _groups_for_display(group_table(table, "lr"), "lr", None)
    assert grouped.iloc[0]["runs"] == "1 (seed 0)"
