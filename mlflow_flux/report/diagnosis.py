"""Diagnose before judging: what happened to the groups a claim names, in words the verdict carries.

A final loss can be high because a run learned badly or because it diverged after learning well; a neuron can be
"inactive" because it never fires (dead) or because it fires with weights that stopped moving (frozen). The
verdicts in :mod:`.claims` compare numbers; the notes here say which of these drives them.
"""

from __future__ import annotations

import math

import pandas as pd

from .. import dynamics
from .claims import ClaimSpec, _show, matches_group
from .intervals import counted

__all__ = ["claim_notes"]


def _named_groups(spec: ClaimSpec, runs: pd.DataFrame, group_by: str) -> list:
    """The group values a claim is about: its subject and its rival, or every group when the rival is "the best
    other"."""
    values = pd.Series(list(dict.fromkeys(runs[group_by])))
    if spec.against is None:
        return list(values)
    return list(values[matches_group(values, spec.subject) | matches_group(values, spec.against)])


def _which(row: pd.Series) -> str:
    return f"replicate {row['replicate']}" if str(row.get("replicate", "")) else f"run {row.get('name', '')}"


def _divergence_note(rows: pd.DataFrame, label: str) -> str | None:
    diverged = rows[rows["diverged_at"] >= 0]
    if diverged.empty:
        return None
    first = diverged.iloc[0]
    return (f"{label} diverged in {len(diverged)} of {len(rows)} runs (e.g. {_which(first)}: loss rose from its "
            f"minimum {first['loss_best']:.4g} at step {int(first['loss_best_at'])} above "
            f"{dynamics.DIVERGENCE_FACTOR:g}x from step {int(first['diverged_at'])}, ending at "
            f"{first['loss_final']:.4g}): it is left out of the means and verdicts, and counted here")


def _activity_note(rows: pd.DataFrame, label: str) -> str:
    rows = counted(rows)
    if not rows["all/participating_frac"].notna().any():
        return f"{label}: participating, frozen and dead are not defined (no ReLU follows its hidden layers)"
    participating = rows["all/participating_frac"].mean()
    frozen = rows["all/frozen_frac"].mean()
    dead = rows["all/dead_frac"].mean()
    text = (f"{label}: {participating:.1%} participating, {frozen:.1%} frozen (fire, weights still), "
            f"{dead:.1%} dead")
    if frozen > 0 and frozen >= dead and frozen > participating:
        text += "; most of its inactive neurons still fire: they are frozen, not dead"
    return text


def claim_notes(spec: ClaimSpec, runs: pd.DataFrame, group_by: str) -> list[str]:
    """What drives the verdict on ``spec``: divergence for a loss claim (with the verdict on each group's best
    loss when that differs), frozen and dead neurons for an activity claim."""
    if group_by not in runs.columns or "diverged_at" not in runs.columns:
        return []
    notes = []
    activity = spec.metric.startswith("all/")
    for value in _named_groups(spec, runs, group_by):
        rows = runs[matches_group(runs[group_by], value)]
        label = f"{group_by} {_show(value)}"
        divergence = _divergence_note(rows, label)
        if divergence and not activity:
            notes.append(divergence)
        if activity:
            notes.append(_activity_note(rows, label))
    if not activity and spec.metric == "loss_final" and any("diverged" in n for n in notes):
        notes.append(_best_loss_verdict(spec, runs, group_by))
    return notes


def _best_loss_verdict(spec: ClaimSpec, runs: pd.DataFrame, group_by: str) -> str:
    """The claim read on each group's best loss during training instead of its final one."""
    best = runs.groupby(group_by, sort=False)["loss_best"].mean()
    groups = best.index.to_series()
    subject = best[matches_group(groups, spec.subject)]
    if subject.empty:
        return "on the best loss during training the claim cannot be read"
    others = best[~matches_group(groups, spec.subject)]
    if spec.against is not None:
        others = others[matches_group(groups[others.index], spec.against)]
    if others.empty or not math.isfinite(subject.iloc[0]):
        return "on the best loss during training the claim cannot be read"
    rival = others.idxmin() if spec.better == "lower" else others.idxmax()
    wins = (subject.iloc[0] < others[rival]) == (spec.better == "lower")
    return (f"on the best loss during training instead ({group_by} {_show(subject.index[0])} "
            f"{subject.iloc[0]:.4g} against {group_by} {_show(rival)} {others[rival]:.4g}) the claim would "
            f"{'agree' if wins else 'disagree'}")
