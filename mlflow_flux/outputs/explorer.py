"""The run's explorer page (``explorer.html`` at the root of its artifacts), while it trains and when it closes.

The trace is pooled as it is written (on the trace's writer thread, :class:`~mlflow_flux.explorer.LivePooler`).
There, at the end of a segment, the page is rendered and uploaded again when ``explorer_interval`` seconds have
passed since the last one (the first segment's page at once): a live page, which says up to which snapshot it goes
and when it was written, with bands only for layers wider than the neuron budget. Once the run's server holds a
page, the tag :data:`PAGE_SNAPSHOT_TAG` names its last snapshot. At close the final page replaces it, an interrupted
run's too if the deadline leaves time. Like a figure, a page that cannot be built never fails the run.
"""

from __future__ import annotations

import datetime
import logging
import numbers
import shutil
import time

import numpy as np
import pandas as pd

from .base import Closing, RunOutput, Step, WatchedRun

__all__ = ["ExplorerPage", "PAGE_SNAPSHOT_TAG"]

_log = logging.getLogger(__name__)

PAGE_SNAPSHOT_TAG = "mlflow_flux.explorer_snapshot"  # the last snapshot of the page the run's store holds


class ExplorerPage(RunOutput):
    """Pools every segment of the trace as it is written; renders the page live and at close. The loss curves it
    draws are the metrics passed to ``end_epoch`` whose name says ``loss``."""

    @classmethod
    def from_settings(cls, settings) -> ExplorerPage:
        return cls(settings)

    def __init__(self, settings) -> None:
        self.settings = settings
        self.interval = settings.explorer_interval
        self.run: WatchedRun | None = None
        self.pooler = None
        self._snapshots = self._observed = 0
        self._losses: dict[str, list[tuple[int, float]]] = {}
        self._resets: list[tuple] = []
        self._last_page = None  # monotonic time of the last live page
        self._pages = 0
        self.refresh_seconds: list[float] = []  # what each live page cost (rendering, on the writer thread)

    def start(self, run: WatchedRun) -> None:
        from ..explorer import LivePooler

        self.run = run
        self.pooler = LivePooler(self.settings.window, self.settings.thresholds)
        run.trace.observe(self._observe)

    def _observe(self, snapshots) -> None:
        """A segment of the trace (writer thread): pooled, then the live page if it is time."""
        self.pooler(snapshots)
        self._observed += len(snapshots)
        due = self._last_page is None or time.monotonic() - self._last_page >= self.interval
        if self.interval > 0 and due:
            self._last_page = time.monotonic()
            self._live_page(int(snapshots[-1].epoch))

    def __repr__(self) -> str:
        return "the explorer's pooling"

    def end_epoch(self, step: Step) -> None:
        if step.snapshot is not None:
            self._snapshots += 1
        for layer, units in step.resets.items():  # marked on the page where an action reset units
            self._resets.extend((step.epoch, layer, int(unit), "reset", False) for unit in units)
        for name, value in step.metrics.items():
            if "loss" in str(name).lower() and isinstance(value, numbers.Real):
                self._losses.setdefault(str(name), []).append((step.epoch, float(value)))

    def _input(self):
        from ..explorer import RunInput

        # Copies first: a live page is built on the writer thread while the training thread appends.
        histories = {key: list(points) for key, points in list(self._losses.items())}
        losses = {key: (np.array([s for s, _ in points]), np.array([v for _, v in points], dtype=np.float32))
                  for key, points in histories.items() if len(points) > 1}
        resets = list(self._resets)
        table = (pd.DataFrame(resets, columns=["epoch", "layer", "neuron", "policy", "dry_run"]) if resets else None)
        return RunInput(self.run.run_id, self.run.run_name, None, self.settings.window, self.settings.thresholds,
                        losses=losses, fingerprint=self.run.fingerprint, resets=table)

    def _live_page(self, epoch: int) -> None:
        from ..explorer import PAGE_FILE, render_page

        started = time.perf_counter()
        self._pages += 1
        directory = self.run.spool / "live" / str(self._pages)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            live = {"snapshot": epoch, "snapshots": self.pooler.snapshots,
                    "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            page = render_page([self.pooler.pooled(self._input(), None)], f"mlflow-flux explorer: {self.run.run_name}",
                               f"run {self.run.run_id}", live=live)
            (directory / PAGE_FILE).write_text(page, encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - a page is worth less than the trace
            _log.warning("the live explorer page of run %s was not built: %s", self.run.run_id, exc)
            return
        self.refresh_seconds.append(time.perf_counter() - started)
        self._upload(directory / PAGE_FILE, epoch)
        for older in (self.run.spool / "live").iterdir():  # what an earlier refresh left, once this one is queued
            if older.name.isdigit() and int(older.name) < self._pages - 1:
                shutil.rmtree(older, ignore_errors=True)

    def _upload(self, path, epoch: int) -> None:
        client, run_id = self.run.client, self.run.run_id

        def confirmed() -> bool:  # on the upload thread, once the store took this version of the page
            client.set_tag(run_id, PAGE_SNAPSHOT_TAG, str(epoch))
            return True

        self.run.uploads.upload(path, None, confirm=confirmed)

    def close(self, closing: Closing) -> None:
        if closing.failed or (closing.interrupted and closing.left <= 0):
            return
        from ..explorer import PAGE_FILE, pool_run, render_page  # imported only where a page is built

        trace = self.run.trace
        given = self._input()
        path = self.run.spool / PAGE_FILE
        try:
            # Pooled as it was written, unless that stopped short (the pooling of a segment failed): then read back
            # from the file, a chunk at a time.
            if trace.segments_written(closing.left) and self._observed == self._snapshots > 0:
                pooled = self.pooler.pooled(given, trace.compacted)
            else:
                given.trace = trace.compacted()
                if given.trace is None:
                    return
                pooled = pool_run(given)
            path.write_text(render_page([pooled], f"mlflow-flux explorer: {self.run.run_name}",
                                        f"run {self.run.run_id}"), encoding="utf-8")
        except Exception as exc:  # noqa: BLE001 - a page is worth less than the trace
            _log.warning("the explorer page of run %s was not built: %s", self.run.run_id, exc)
            return
        self._upload(path, int(pooled.epochs[-1]))
