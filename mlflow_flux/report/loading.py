"""Load the selected runs into memory: each run's loss history and the summaries recomputed from its trace.

The summaries are recomputed with the same functions the recorder logged them with (:mod:`mlflow_flux.fluctuation`),
with each run's own window and tau, so the report and the runs' metrics agree to the last digit. Only the key
columns and the four the summaries read are fetched.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .. import fluctuation
from ..errors import FluxError
from ..traces.reader import opened_trace
from ..traces.schema import KEY_COLUMNS, SUMMARY_COLUMNS
from .claims import ClaimSpec, claims_declared_by
from ..traces.server import check_reachable
from .selection import select_runs

_log = logging.getLogger(__name__)

__all__ = ["RunData", "Comparison", "load_comparison", "group_value", "TAU_GRID", "FACET"]

TAU_GRID = tuple(float(t) for t in np.logspace(-6, -1, 16))


@dataclass
class RunData:
    """One variant run: its identity, its loss, and the summaries recomputed from its trace."""

    run_id: str
    name: str
    group: str  # the run's value of the grouping parameter (or its name when runs are not grouped)
    seed: str
    params: dict
    final_loss: float
    loss: pd.Series  # the loss metric's history, by step
    summaries: pd.DataFrame  # fluctuation.summaries_over_epochs
    tau_curve: pd.Series  # participating fraction (all) at the final window, by tau
    layers: list[str]
    facet: str = ""  # the run's optimizer, when the runs have one: claims are judged per optimizer
    twin_lyapunov: pd.Series | None = None  # twin/lyapunov by epoch, for runs trained with twins=true
    reconstruction_png: bytes | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, read, compute


# Without loss_key=: the final loss is the first of these a run has, else the last value of its loss history, the
# first of LOSS_HISTORY_KEYS it has. The study logs flux/loss_*, so that its loss charts open beside the flux/ ones.
FINAL_LOSS_KEYS = ("flux/loss_final", "loss/final")
LOSS_HISTORY_KEYS = ("flux/loss_train", "loss/train")
# Claims are judged per value of this parameter when the runs have it: the paper's claims may hold under one
# optimizer and not another.
FACET = "optimizer"
TWIN_LYAPUNOV_KEY = "twin/lyapunov"
DEFAULT_LOSS_LABEL = "loss"


@dataclass
class Comparison:
    """The loaded runs, the ones skipped with a reason, and how they were chosen."""

    runs: list[RunData]
    skipped: list[tuple[str, str, str]]  # (run id, name, reason)
    selection: str
    sweep_id: str | None
    tracking_uri: str
    claims: tuple[ClaimSpec, ...] = ()  # what the runs say should hold between their groups
    timings: dict[str, float] = field(default_factory=dict)
    group_by: str = "lr"  # the parameter whose values form the groups; "run": every run is its own group
    loss_key: str = DEFAULT_LOSS_LABEL  # the metric shown as the loss
    facet: str | None = None  # FACET when the runs have it: groups, claims and verdicts are per value of it

    @property
    def facets(self) -> list[str]:
        """The facet's values in order of appearance (``[""]`` without a facet)."""
        return list(dict.fromkeys(run.facet for run in self.runs))

    def group_order(self, values) -> list:
        """Groups in display order: learning rates from large to small (the study's order), other numbers from
        small to large, text alphabetically."""
        return sorted(set(values), key=lambda v: _sort_key(v, descending=self.group_by == "lr"))


def _sort_key(value: str, descending: bool) -> tuple:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
    return (0, -number if descending else number, "")


def group_value(value: str):
    """A group's value as the tables show it: a number when it reads as one."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _load_run(client, run, window: int | None, tau: float | None, group_by: str,
              loss_key: str | None) -> RunData:
    run_id = run.info.run_id
    params = run.data.params
    name = run.data.tags.get("mlflow.runName", run_id[:8])
    if group_by != "run" and group_by not in params:
        raise FluxError(f"no parameter {group_by!r} to group by")
    if run.info.status != "FINISHED":
        raise FluxError(f"run status {run.info.status}")
    # watch() logs flux.window; the study's runs share the sweep's plain names (settings_prefix="").
    window = window or int(params.get("flux.window", params.get("window", fluctuation.DEFAULT_WINDOW)))
    tau = tau or float(params.get("flux.tau", params.get("tau", fluctuation.DEFAULT_TAU)))
    clock = time.perf_counter()
    seconds = {}
    with opened_trace(client, run) as source:
        try:
            # Only the key columns and the four the summaries need are fetched (one range per row group).
            parquet = pq.ParquetFile(source, pre_buffer=True)
            # A trace written before a column existed lacks it: its summaries are NaN (fluctuation fills them).
            held = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in (*KEY_COLUMNS, *SUMMARY_COLUMNS) if c in held])
        except Exception as exc:  # noqa: BLE001 -- a corrupt file is a skipped run, not a failed report
            raise FluxError(f"unreadable trace ({type(exc).__name__}: {exc})") from None
    seconds["fetch"] = time.perf_counter() - clock
    clock = time.perf_counter()
    trace = table.to_pandas()
    seconds["read"] = time.perf_counter() - clock
    clock = time.perf_counter()
    try:
        epochs, layers = fluctuation.layer_arrays(trace)
    except ValueError as exc:
        raise FluxError(f"unusable trace: {exc}") from None
    summaries = fluctuation.summaries_from_arrays(epochs, layers, window, tau)
    if summaries.empty:
        raise FluxError(f"fewer snapshots than one window ({window})")
    # The final window shaped once, then summarised per tau (summaries_from_arrays would rebuild it 16 times).
    last = {name: {c: a[-window:][None] if c in fluctuation.WINDOW_COLUMNS else a[-1:] for c, a in arrays.items()}
            for name, arrays in layers.items()}
    tau_curve = pd.Series({t: float(fluctuation.summarize(last, t)["all/participating_frac"][0]) for t in TAU_GRID},
                          name=run_id)
    seconds["compute"] = time.perf_counter() - clock
    metrics = run.data.metrics
    history_key = loss_key or next((k for k in LOSS_HISTORY_KEYS if k in metrics), LOSS_HISTORY_KEYS[-1])
    history = client.get_metric_history(run_id, history_key)
    loss = pd.Series({m.step: m.value for m in history}, dtype=float).sort_index()
    twin = None
    if TWIN_LYAPUNOV_KEY in metrics:  # MLflow stores -inf (twins that coincide) as the lowest float64
        twin = pd.Series({m.step: (m.value if m.value > -1e308 else -math.inf)
                          for m in client.get_metric_history(run_id, TWIN_LYAPUNOV_KEY)}, dtype=float).sort_index()
    if loss_key is not None:
        final = metrics.get(loss_key, math.nan)
    else:  # the study's final evaluation; anyone else's run: the last value of its loss history
        final = next((metrics[k] for k in (*FINAL_LOSS_KEYS, history_key) if k in metrics), math.nan)
    return RunData(
        run_id=run_id,
        name=name,
        group=name if group_by == "run" else params[group_by],
        seed=params.get("seed", "?"),
        params=dict(params),
        final_loss=float(final),
        loss=loss,
        summaries=summaries,
        tau_curve=tau_curve,
        layers=list(layers),
        facet=params.get(FACET, ""),
        twin_lyapunov=twin,
        seconds=seconds,
    )


def _attach_reconstruction(client, run: RunData) -> None:
    path = "figures/reconstructions.png"
    try:
        if any(f.path == path for f in client.list_artifacts(run.run_id, "figures")):
            with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
                run.reconstruction_png = Path(client.download_artifacts(run.run_id, path, tmp)).read_bytes()
    except Exception as exc:  # noqa: BLE001 -- a missing picture leaves a gap in the grid, not a failed report
        _log.warning("no reconstruction figure for run %s: %s", run.run_id, exc)


def load_comparison(
    sweep_id: str | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    window: int | None = None,
    tau: float | None = None,
    group_by: str | None = None,
    loss_key: str | None = None,
    workers: int = 8,
) -> Comparison:
    """Select the runs and load them (in parallel threads: the time is network and Parquet decoding).

    ``group_by`` names the parameter whose values form the groups (default ``lr`` when any run has it, else every
    run is its own group); ``loss_key`` the metric reported as the loss (default ``flux/loss_final`` or
    ``loss/final``, else the last ``flux/loss_train`` or ``loss/train``).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking_uri = mlflow.get_tracking_uri()
    check_reachable(tracking_uri)
    client = MlflowClient()
    started = time.perf_counter()
    runs, description, sweep_id = select_runs(client, sweep_id, experiment, filter_string)
    queried = time.perf_counter()
    if group_by is None:
        group_by = "lr" if any("lr" in run.data.params for run in runs) else "run"

    def load(run):
        try:
            return _load_run(client, run, window, tau, group_by, loss_key), None
        except FluxError as exc:
            return None, (run.info.run_id, run.data.tags.get("mlflow.runName", ""), str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, runs))
    declared = claims_declared_by(runs)
    loaded = [r for r, _ in results if r is not None]
    skipped = [s for _, s in results if s is not None]
    firsts = {}
    for run in loaded:  # the report shows one reconstruction per group
        firsts.setdefault(run.group, run)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda run: _attach_reconstruction(client, run), firsts.values()))
    done = time.perf_counter()
    if not loaded:
        reasons = "; ".join(f"{name or rid}: {why}" for rid, name, why in skipped)
        raise FluxError(f"none of the {len(runs)} runs of {description} has a readable trace ({reasons})")
    facet = FACET if group_by != FACET and any(run.facet for run in loaded) else None
    if facet is None:
        for run in loaded:
            run.facet = ""
    comparison = Comparison(loaded, skipped, description, sweep_id, tracking_uri, declared,
                            {"query": queried - started, "load": done - queried}, group_by, loss_key or DEFAULT_LOSS_LABEL,
                            facet)
    order = {value: index for index, value in enumerate(comparison.group_order(r.group for r in loaded))}
    loaded.sort(key=lambda r: (r.facet, order[r.group], r.seed, r.name))
    return comparison
