"""The report's pure functions, table in and table out, on runs built here (no MLflow store): the run and group
tables, the verdicts and their notes, verdicts over epochs, early rankings, the spec a study declares, and the
readable tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mlflow_flux import fluctuation
from mlflow_flux.report.analysis import analyse, applicable_claims, group_table, run_table
from mlflow_flux.report.claims import ClaimSpec, evaluate
from mlflow_flux.report.diagnosis import claim_notes
from mlflow_flux.report.document import _groups_for_display, _runs_for_display, report_document
from mlflow_flux.report.loading import Comparison, RunData
from mlflow_flux.report.render import _md_table, md_escape, to_html, to_markdown
from mlflow_flux.report.spec import ReportSpec, RunFigure, SeriesSection, spec_declared_by, spec_tag_value
from mlflow_flux.report.timeline import early_ranking, verdicts_over_time, where_claims_hold

EPOCHS = 60


def _summaries(participating: float, dead: float, epochs: int = EPOCHS, window: int = 10) -> pd.DataFrame:
    index = pd.Index(range(window - 1, epochs), name="epoch")
    values = {"all/participating_frac": participating, "all/participating": participating * 100, "all/dead_frac": dead,
              "all/sos_median": 0.1, "all/bias_fluct_median": 0.01, "fc/participating": participating * 100,
              "all/redo_dormant_frac": dead, "all/participating_frac_relative": participating}
    return pd.DataFrame({k: np.full(len(index), v) for k, v in values.items()}, index=index)


def _run(name: str, lr: float, seed: int, loss: float, participating: float, dead: float, facet: str = "",
         loss_curve: np.ndarray | None = None, summaries: pd.DataFrame | None = None, series=None) -> RunData:
    curve = loss_curve if loss_curve is not None else np.linspace(1.0, loss, EPOCHS)
    return RunData(run_id=name, name=name, group=str(lr),
                   params={"lr": str(lr), "seed": str(seed), "epochs": str(EPOCHS), "optimizer": facet or "adam"},
                   final_loss=loss, loss=pd.Series(curve, index=range(EPOCHS)),
                   summaries=_summaries(participating, dead) if summaries is None else summaries,
                   tau_curve=pd.Series(dtype=float), layers=["fc"], facet=facet, series=series or {},
                   layout=fluctuation.Layout(("fc",)), sizes=[100], replicate=str(seed))


STUDY_LIKE = ReportSpec(group_by="lr", descending=True, replicate="seed")


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
    assert 0 < first["loss_final ci_low"] < 0.105 < first["loss_final ci_high"]
    assert 0 <= first["all/participating_frac ci_low"] < first["all/participating_frac ci_high"] <= 1
    assert math.isnan(groups[groups["lr"] == 0.0001].iloc[0]["loss_final ci_low"])  # one run: no interval


def test_a_run_shorter_than_a_window_counts_with_its_loss_and_has_no_participation():
    short = _run("short", 0.01, 0, 0.1, 0.5, 0.2, summaries=pd.DataFrame(index=pd.Index([], name="epoch")))
    other = _run("other", 0.0001, 0, 0.2, 0.7, 0.1)
    table = run_table(_comparison([short, other]))
    assert math.isnan(table.loc[0, "all/participating_frac"]) and math.isnan(table.loc[0, "all/frozen_frac"])
    claim = evaluate(MORE_ACTIVE, table, "lr")
    assert claim.verdict == "not testable" and "fewer snapshots than one window" in claim.evidence
    assert evaluate(LOWER_LOSS, table, "lr").verdict == "inconclusive (n = 1)"  # one seed a side


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
    assert list(table.columns[:5]) == ["claim", "reading", "optimizer", "epoch", "verdict"]
    assert sorted(set(table["epoch"])) == [19, 39, 59] and set(table["verdict"]) == {"agrees"}
    lines = where_claims_hold(table, {"b": MORE_ACTIVE.text})
    assert lines == [f"(b) {MORE_ACTIVE.text} under {o}: agrees at epochs 19-59; at the last epoch (59): agrees"
                     for o in ("adam", "sgd")]
    # Every reading is judged over the epochs too, each under its own label.
    with_readings = ClaimSpec("b", "0.0001 engages more", "all/participating_frac", "higher", 0.0001, against=0.01,
                              readings=(("ReDo", "all/redo_dormant_frac", "lower"),))
    both = verdicts_over_time(_comparison(runs, facet="optimizer", claims=[with_readings]), [with_readings], every=20)
    assert set(both["reading"]) == {"", "ReDo"} and len(both) == 2 * len(table)


def test_an_early_value_ranks_the_final_losses():
    runs = [_run(f"r{i}", 0.01, i, loss, 0.5, 0.1, series={"twin/lyapunov": pd.Series(np.full(EPOCHS, rate))})
            for i, (loss, rate) in enumerate([(0.1, 0.01), (0.2, 0.02), (0.3, 0.03), (0.4, 0.05)])]
    ranking = early_ranking(_comparison(runs), "twin/lyapunov", 0.1)
    assert ranking["rho"] == 1.0 and ranking["runs"] == 4 and "epoch 5" in ranking["early"]
    assert early_ranking(_comparison(runs[:2]), "twin/lyapunov") is None  # fewer than three runs


def test_only_claims_whose_groups_the_runs_have_apply():
    runs = [_run("a", 0.01, 0, 0.1, 0.5, 0.1), _run("b", 0.001, 0, 0.2, 0.5, 0.1)]
    comparison = _comparison(runs, claims=[LOWER_LOSS, MORE_ACTIVE])
    groups = group_table(run_table(comparison), "lr")
    assert [spec.name for spec in applicable_claims(comparison, groups)] == ["a"]  # no 0.0001 group for (b)


def test_a_spec_travels_as_a_tag_and_comes_back_equal():
    class Run:
        def __init__(self, tags):
            self.data = type("Data", (), {"tags": tags})()
            self.info = type("Info", (), {"run_id": "r"})()

    spec = ReportSpec(group_by="lr", descending=True, facets=("optimizer", "activation"), final_loss_keys=("f",),
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
    grouped = _groups_for_display(group_table(table, "lr"), "lr", None, ("all/participating_frac",))
    assert grouped.iloc[0]["n"] == "1" and grouped.iloc[0]["replicates"] == "0"


def test_a_diverged_run_is_left_out_of_the_verdict_and_counted():
    curve = np.r_[np.linspace(1.0, 0.01, 30), np.full(30, 0.5)]  # learned, then diverged
    runs = [_run("fast0", 0.01, 0, 0.5, 0.3, 0.5, loss_curve=curve), _run("fast1", 0.01, 1, 0.05, 0.3, 0.5),
            _run("slow0", 0.0001, 0, 0.1, 0.8, 0.1), _run("slow1", 0.0001, 1, 0.1, 0.8, 0.1)]
    table = run_table(_comparison(runs))
    claim = evaluate(LOWER_LOSS, table, "lr")
    assert claim.verdict == "inconclusive (n = 1)"  # one pair left: seed 1
    assert "(n = 1, 1 diverged, left out)" in claim.evidence
    groups = group_table(table, "lr")
    assert groups.iloc[0]["n"] == 1 and groups.iloc[0]["diverged"] == 1


def test_the_verdict_reads_the_paired_differences():
    # Seeds share their start: differences 0.5, 0.3, 0.7 (mean 0.5, sd 0.2, t(0.975, 2) = 4.3027): [0.0032, 0.9968].
    runs = [_run(f"s{s}", 0.0001, s, 0.1, part, 0.1) for s, part in enumerate((0.8, 0.7, 0.9))]
    runs += [_run(f"f{s}", 0.01, s, 0.1, part, 0.1) for s, part in enumerate((0.3, 0.4, 0.2))]
    claim = evaluate(MORE_ACTIVE, run_table(_comparison(runs)), "lr")
    assert claim.verdict == "agrees"
    assert math.isclose(claim.numbers["difference"], 0.5) and claim.numbers["pairs"] == 3
    assert math.isclose(claim.numbers["difference ci_low"], 0.0032, abs_tol=1e-4)
    assert "[+0.3%, +99.7%] (paired, n = 3)" in claim.evidence
    # The same values with the seeds shuffled against each other: the pairing is what decides, not the means.
    shuffled = [_run(f"f{s}", 0.01, s, 0.1, part, 0.1) for s, part in enumerate((0.9, 0.8, 0.7))]
    worse = evaluate(MORE_ACTIVE, run_table(_comparison(runs[:3] + shuffled)), "lr")
    assert worse.verdict == "inconclusive"


def test_markdown_and_html_carry_the_same_sections_in_the_same_order():
    import re

    runs = [_run(f"r{lr}{s}", lr, s, 0.1 + lr, 0.5 + s / 10, 0.1) for lr in (0.01, 0.0001) for s in (0, 1)]
    comparison = _comparison(runs, claims=[LOWER_LOSS, MORE_ACTIVE])
    report = analyse(comparison)
    doc = report_document(comparison, report, ["participation", "verdicts_over_time"])
    markdown, page = to_markdown(doc), to_html(doc, {})
    md_headings = [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#")]
    html_headings = [re.sub("<[^>]+>", "", h) for h in re.findall(r"<h[12]>(.*?)</h[12]>", page)]
    assert md_headings == html_headings == [md_escape(h) for h in doc.headings]
    assert "Where each claim holds, over epochs" in md_headings


def test_readings_not_applicable_to_any_run_leave_their_figures_out_and_the_rest_draw():
    """Under tanh the ReLU readings are NaN in every run: their figures (a log tau axis among them) are left out
    instead of failing to draw, and every other figure renders."""
    from mlflow_flux.report.figures import report_figures
    from mlflow_flux.report.render import _png

    runs = []
    for lr, loss in ((0.01, 0.02), (0.0001, 0.05)):
        for seed in (0, 1):
            summaries = _summaries(math.nan, math.nan)
            for key in ("all/participating_frac", "all/redo_dormant_frac"):
                summaries[key] = math.nan
            run = _run(f"{lr}-{seed}", lr, seed, loss, math.nan, math.nan, summaries=summaries)
            run.tau_curve = pd.Series(math.nan, index=np.geomspace(1e-6, 1e-2, 5))
            runs.append(run)
    figures = report_figures(_comparison(runs))
    assert not {"participation", "tau_sensitivity", "dormant"} & set(figures)
    assert {"loss", "weight_fluctuation", "bias_fluctuation"} <= set(figures)
    for figure in figures.values():
        assert _png(figure).startswith(b"\x89PNG")
