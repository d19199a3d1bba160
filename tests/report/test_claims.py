"""Claims checked as pure functions of the run table: the paper's two, declared as data by the study."""

import math

import pandas as pd
import pytest

from mlflow_flux.report.analysis import interval
from mlflow_flux.report.claims import ClaimSpec, claims_declared_by, claims_tag_value, evaluate
from mlflow_flux.report.intervals import fraction_interval
from mlflow_flux.study.claims import PAPER_CLAIMS


def _runs(rows):
    """Runs given as (lr, loss, participating); the i-th run of each lr is replicate i (paired across lrs)."""
    seen: dict[float, int] = {}
    out = []
    for i, (lr, loss, part) in enumerate(rows):
        replicate = seen.setdefault(lr, 0)
        seen[lr] += 1
        out.append({"run_id": f"r{i}", "name": "", "lr": lr, "replicate": str(replicate), "epochs": 10,
                    "final_epoch": 9, "loss_final": loss, "all/participating": part * 100,
                    "all/participating_frac": part, "all/dead_frac": 1 - part, "all/sos_median": 0.1,
                    "all/bias_fluct_median": 0.1, "units": 100, "diverged_at": -1})
    return pd.DataFrame(out)


def _claims(runs):
    return [evaluate(spec, runs, "lr") for spec in PAPER_CLAIMS]


def _verdicts(rows):
    return {c.name: c.verdict for c in _claims(_runs(rows))}


def test_interval_is_a_student_t_95_percent_interval():
    mean, _, high = interval([1.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 12.706 * math.sqrt(2) / math.sqrt(2), rel_tol=1e-4)
    assert math.isnan(interval([1.0])[1])
    # Past 30 degrees of freedom the quantile keeps falling towards 1.96: t(0.975, 40) = 2.0211 (printed tables).
    values = [0.0, 2.0] * 20 + [1.0]  # 41 values, mean 40/41, sample std computed below
    mean, _, high = interval(values)
    std = float(pd.Series(values).std())
    assert math.isclose((high - mean) / (std / math.sqrt(41)), 2.0211, rel_tol=1e-4)


def test_clear_agreement_and_disagreement_with_seeds():
    agree = [(0.01, 0.10, 0.2), (0.01, 0.11, 0.21), (0.0001, 0.30, 0.8), (0.0001, 0.31, 0.81)]
    assert _verdicts(agree) == {"a": "agrees", "b": "agrees"}
    disagree = [(0.01, 0.30, 0.8), (0.01, 0.31, 0.81), (0.0001, 0.10, 0.2), (0.0001, 0.11, 0.21)]
    assert _verdicts(disagree) == {"a": "disagrees", "b": "disagrees"}


def test_differences_that_change_sign_and_ties_are_inconclusive():
    overlapping = [(0.01, 0.10, 0.5), (0.01, 0.30, 0.7), (0.0001, 0.20, 0.4), (0.0001, 0.25, 0.8)]
    assert _verdicts(overlapping) == {"a": "inconclusive", "b": "inconclusive"}
    tie = [(0.01, 0.1, 0.0), (0.01, 0.1, 0.0), (0.0001, 0.2, 0.0), (0.0001, 0.2, 0.0)]
    assert _verdicts(tie)["b"] == "inconclusive"


def test_one_seed_is_inconclusive_and_says_n():
    result = _claims(_runs([(0.01, 0.1, 0.2), (0.0001, 0.2, 0.9)]))
    assert [c.verdict for c in result] == ["inconclusive (n = 1)"] * 2
    assert all("(paired, n = 1: no interval)" in c.evidence for c in result)


def test_displayed_intervals_of_fractions_stay_inside_zero_and_one():
    # Three seeds at 0%, 40% and 100%: the plain t-interval reaches far past both ends.
    mean, low, high = fraction_interval([0.0, 0.4, 1.0], 656)
    plain = interval([0.0, 0.4, 1.0])
    assert plain[1] < 0 and plain[2] > 1
    assert 0.0 <= low < mean < high <= 1.0
    assert fraction_interval([0.0, 0.0, 0.0], 656) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)


def test_missing_learning_rates_make_a_claim_not_testable():
    assert _verdicts([(0.001, 0.1, 0.5), (0.0001, 0.2, 0.6)]) == {"a": "not testable", "b": "not testable"}


def test_claims_travel_as_a_tag_and_come_back_equal():
    class Run:  # what MlflowClient.search_runs returns, as far as claims are concerned
        def __init__(self, tags):
            self.data = type("Data", (), {"tags": tags})()
            self.info = type("Info", (), {"run_id": "r"})()

    value = claims_tag_value(PAPER_CLAIMS)
    runs = [Run({"mlflow_flux.claims": value}), Run({}), Run({"mlflow_flux.claims": "not json"})]
    assert claims_declared_by(runs) == PAPER_CLAIMS


def test_a_claim_about_any_grouping_and_its_evidence():
    runs = pd.DataFrame([{"run_id": f"r{i}", "name": "", "lr": width, "seed": str(i), "epochs": 3, "final_epoch": 2,
                          "loss_final": loss} for i, (width, loss) in enumerate([(64, 0.2), (64, 0.201), (256, 0.1),
                                                                                   (256, 0.101)])])
    wide_wins = ClaimSpec("w", "wider is better", metric="loss_final", better="lower", subject=256, label="loss")
    claim = evaluate(wide_wins, runs, "lr")
    assert claim.verdict == "agrees"  # unpaired (no replicate column): Welch's interval on the difference
    assert claim.evidence.startswith("loss: lr 256 0.1005 [") and "best other, lr 64 0.2005 [" in claim.evidence
    assert "(unpaired, n = 2)" in claim.evidence
