"""The run's figures: gathered snapshot by snapshot (:class:`~mlflow_flux.figures.data.RunFigureData`, numpy only),
drawn as PNGs when the run closes and logged under ``figures/``. A figure is worth less than the trace: one that
cannot be drawn or saved never fails the close, and an interrupted run skips them."""

from __future__ import annotations

import logging

from ..figures.data import RunFigureData
from .base import Closing, RunOutput, Step, WatchedRun

__all__ = ["RunFigures"]

_log = logging.getLogger(__name__)


class RunFigures(RunOutput):
    """Draws ``figures/*.png`` at close from what it gathered."""

    def __init__(self) -> None:
        self.run: WatchedRun | None = None
        self.data: RunFigureData | None = None

    def start(self, run: WatchedRun) -> None:
        self.run = run
        self.data = RunFigureData(list(zip(run.recorder.layer_names, run.recorder.layer_sizes)))

    def end_epoch(self, step: Step) -> None:
        if step.snapshot is not None:
            self.data.add(step.snapshot)
        if step.summaries:
            self.data.add_summaries(step.epoch, step.summaries)

    def close(self, closing: Closing) -> None:
        if closing.interrupted or closing.failed:
            return
        from ..figures.draw import run_figures, save_png  # matplotlib: imported only by a run that draws figures

        directory = self.run.spool / "figures"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _log.warning("figures of run %s not saved: %s", self.run.run_id, exc)
            return
        for name, draw in run_figures(self.data).items():
            path = directory / f"{name}.png"
            try:
                save_png(draw(), path)
            except Exception as exc:  # noqa: BLE001 - matplotlib's errors have no common base but Exception
                _log.warning("figure %s of run %s not saved: %s", name, self.run.run_id, exc)
                continue
            self.run.uploads.upload(path, "figures")
