"""``compare``'s options, declared once (:mod:`mlflow_flux.settings`): the CLI's ``mlflow-flux compare`` options and
help, and the MLproject's ``compare`` entry point, are both made from :class:`CompareSettings`. Every option may be
empty (``mlflow run`` passes each parameter, given or not): empty means "not given"."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import Integer, Number, Optional, Settings, Text, setting

__all__ = ["CompareSettings", "SELECTIONS"]

SELECTIONS = ("sweep", "experiment", "filter")  # which runs: at most one of these


@dataclass(frozen=True)
class CompareSettings(Settings):
    """How ``compare`` selects and reads runs."""

    sweep: str | None = setting(None, Optional(Text("a run id")),
                                "the sweep's parent run (default: the latest sweep, else every watched run)")
    experiment: str | None = setting(None, Optional(Text("a name or id")),
                                     "every run of this experiment (name or id) that holds a trace")
    filter: str | None = setting(None, Optional(Text("an MLflow filter string")),
                                 "an MLflow filter string over the runs that hold a trace")
    output: str | None = setting(None, Optional(Text("a directory")), "also write the report files here")
    window: int | None = setting(None, Optional(Integer(2, 100_000)),
                                 "override each run's window (its metrics then differ from the report's)")
    tau: float | None = setting(None, Optional(Number()),
                                "override each run's tau (its metrics then differ from the report's)")
    group_by: str | None = setting(None, Optional(Text("a parameter's name")),
                                   "the parameter whose values form the groups (default: the runs' spec's, e.g. lr "
                                   "for the study; else each run on its own)")
    loss_key: str | None = setting(None, Optional(Text("a metric's name")),
                                   "the metric reported as the loss (default: the spec's final loss key, else the "
                                   "last value of its loss history)")
