"""The paper's claims as pure functions of the per-lr table."""

import math

import pandas as pd

from mlflow_flux.comparison import claims, group_table, interval


def _runs(rows):
    return pd.DataFrame([{"run_id": f"r{i}", "name": "", "lr": lr, "seed": str(i), "epochs": 10, "final_epoch": 9,
                          "loss_final": loss, "all/participating": part * 100, "all/participating_frac": part,
                          "all/dead_frac": 1 - part, "all/sos_median": 0.1, "all/bias_fluct_median": 0.1}
                         for i, (lr, loss, part) in enumerate(rows)])


def _verdicts(rows):
    return {c.name: c.verdict for c in claims(group_table(_runs(rows)))}


def test_interval_is_a_student_t_95_percent_interval():
    mean, low, high = interval([1.0, 3.0])
    assert mean == 2.0 and math.isclose(high - mean, 12.706 * math.sqrt(2) / math.sqrt(2))
    assert math.isnan(interval([1.0])[1])


def test_clear_agreement_and_disagreement_with_seeds():
    agree = [(0.01, 0.10, 0.2), (0.01, 0.11, 0.21), (0.0001, 0.30, 0.8), (0.0001, 0.31, 0.81)]
    assert _verdicts(agree) == {"a": "agrees", "b": "agrees"}
    disagree = [(0.01, 0.30, 0.8), (0.01, 0.31, 0.81), (0.0001, 0.10, 0.2), (0.0001, 0.11, 0.21)]
    assert _verdicts(disagree) == {"a": "disagrees", "b": "disagrees"}


def test_overlapping_intervals_and_ties_are_inconclusive():
    overlapping = [(0.01, 0.10, 0.5), (0.01, 0.30, 0.7), (0.0001, 0.20, 0.4), (0.0001, 0.25, 0.8)]
    assert _verdicts(overlapping) == {"a": "inconclusive", "b": "inconclusive"}
    tie = [(0.01, 0.1, 0.0), (0.0001, 0.2, 0.0)]
    assert _verdicts(tie)["b"] == "inconclusive"


def test_one_seed_decides_on_the_means_and_says_so():
    result = claims(group_table(_runs([(0.01, 0.1, 0.2), (0.0001, 0.2, 0.9)])))
    assert [c.verdict for c in result] == ["agrees", "agrees"]
    assert all("one seed per lr" in c.evidence for c in result)


def test_missing_learning_rates_make_a_claim_not_testable():
    assert _verdicts([(0.001, 0.1, 0.5), (0.0001, 0.2, 0.6)]) == {"a": "not testable", "b": "not testable"}
