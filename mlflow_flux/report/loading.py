"""Load the selected runs into memory: each run's loss history and the summaries recomputed from its trace.

The summaries are recomputed with the same functions the recorder logged them with (:mod:`mlflow_flux.fluctuation`),
with each run's own window and tau, so the report and the runs' metrics agree to the last digit. Only the key
columns and those the summaries read are fetched.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from .. import fluctuation, reshape
from ..errors import FluxError
from ..settings import recorder_setting_of, run_thresholds
from ..traces import mlflow_adapter
from ..traces.reader import missing_trace, opened_trace, run_resets
from ..traces.runs import ACTIVATIONS_PARAM, parse_activations
from ..traces.schema import KEY_COLUMNS, SUMMARY_COLUMNS
from ..traces.server import check_reachable
from .claims import ClaimSpec, claims_declared_by
from .selection import select_runs
from .spec import DEFAULT_SPEC, ReportSpec, spec_declared_by

_log = logging.getLogger(__name__)

__all__ = ["RunData", "Comparison", "load_comparison", "group_value", "TAU_GRID", "TAU_GRID_RELATIVE", "RUN_GROUPS",
           "READINGS", "FRACTION_COLUMNS"]

TAU_GRID = tuple(float(t) for t in np.logspace(-6, -1, 16))  # absolute tau on the relative fluctuation
TAU_GRID_RELATIVE = tuple(float(t) for t in np.logspace(-2, 1, 16))  # tau_relative: times the layer's mean
# Each reading of "engaged" at the final window: (label, column of the run table, the direction "engages more" is).
# Ours under either threshold, and the literature's dormant fractions (docs/metrics.md).
READINGS = (
    ("our participation (absolute tau)", "all/participating_frac_absolute", "higher"),
    ("our participation (layer-relative tau)", "all/participating_frac_relative", "higher"),
    ("ReDo dormant, tau = 0", "all/redo_dormant0_frac", "lower"),
    ("ReDo dormant, tau = dormant_tau", "all/redo_dormant_frac", "lower"),
    ("GraMa dormant, tau = dormant_tau", "all/grama_dormant_frac", "lower"),
    ("GraMa dormant, its authors' reading", "all/grama_ref_dormant_frac", "lower"),
)
# Columns that are fractions of the network's counted units (their intervals are drawn inside [0, 1]); the authors'
# GraMa counts every unit.
FRACTION_COLUMNS = ("all/participating_frac", "all/dead_frac", "all/frozen_frac", *(c for _, c, _ in READINGS))
# The runs load in many threads, so that their requests overlap; their arithmetic (decoding, the summaries of every
# epoch) runs in as many at a time as there are cores: more only contend for them (on 2 cores, 8 at once took ~40%
# more CPU for the same runs).
_COMPUTE_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 1)


@dataclass
class RunData:
    """One variant run: its identity, its loss, and the summaries recomputed from its trace."""

    run_id: str
    name: str
    group: str  # the run's value of the grouping parameter (or its name when runs are not grouped)
    params: dict
    final_loss: float
    loss: pd.Series  # the loss metric's history, by step
    summaries: pd.DataFrame  # reshape.summaries_over_epochs
    tau_curve: pd.Series  # participating fraction (all) at the final window, by absolute tau
    layers: list[str]
    facet: str = ""  # the run's value of the spec's facet, when the runs have it: claims are judged per value
    series: dict[str, pd.Series] = field(default_factory=dict)  # the spec's sections' metrics, by epoch
    figures: dict[str, bytes] = field(default_factory=dict)  # the spec's run figures (PNG), for a group's first run
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, read, compute
    window: int = fluctuation.DEFAULT_WINDOW
    thresholds: fluctuation.Thresholds = field(default_factory=fluctuation.Thresholds)
    tau_curve_relative: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))  # ... by tau_relative
    readings: dict[str, float] = field(default_factory=dict)  # participation under both thresholds, final window
    entity: object = None  # the MLflow run (its trace is opened again for the explorer page)
    layout: fluctuation.Layout = field(default_factory=lambda: fluctuation.Layout(()))
    sizes: list[int] = field(default_factory=list)  # units per layer, in the layout's order
    replicate: str = ""  # the run's value of the spec's replicate key (its seed): runs sharing it are paired

    @property
    def units(self) -> int:
        """The units the network-level fractions count."""
        return sum(self.sizes[i] for i in self.layout.counted) if self.sizes else 0

    @property
    def output_layer(self) -> str | None:
        """The network's output layer (the last watched), reported on its own line; None for a single layer."""
        return self.layers[-1] if len(self.layers) > 1 else None

    @property
    def measured(self) -> bool:
        """Whether the trace held a full window (else the run has a loss and no participation measure)."""
        return not self.summaries.empty


RUN_GROUPS = "run"  # group_by when every run is its own group
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
    group_by: str = RUN_GROUPS  # the parameter whose values form the groups; "run": every run is its own group
    loss_key: str = DEFAULT_LOSS_LABEL  # the metric shown as the loss
    facet: str | None = None  # the spec's facet when the runs have it: groups, claims and verdicts per value of it
    spec: ReportSpec = DEFAULT_SPEC

    @property
    def facets(self) -> list[str]:
        """The facet's values in order of appearance (``[""]`` without a facet)."""
        return list(dict.fromkeys(run.facet for run in self.runs))

    def group_order(self, values) -> list:
        """Groups in display order: numbers from small to large (from large to small where the spec says so for
        its grouping), text alphabetically."""
        descending = self.spec.descending and self.group_by == self.spec.group_by
        return sorted(set(values), key=lambda v: _sort_key(v, descending=descending))


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


def _load_run(client, run, window: int | None, tau: float | None, group_by: str, loss_key: str | None,
              spec: ReportSpec) -> RunData:
    run_id = run.info.run_id
    params = run.data.params
    name = run.data.tags.get("mlflow.runName", run_id[:8])
    if group_by != RUN_GROUPS and group_by not in params:
        raise FluxError(f"no parameter {group_by!r} to group by")
    if run.info.status != "FINISHED":
        raise FluxError(f"run status {run.info.status}")
    missing = missing_trace(run)
    if missing:
        raise FluxError(f"results kept locally: {missing}")
    window = window or int(recorder_setting_of(params, "window") or fluctuation.DEFAULT_WINDOW)
    thresholds = run_thresholds(params, tau)
    units = recorder_setting_of(params, "network_units") or "hidden"
    clock = time.perf_counter()
    seconds = {}
    with opened_trace(client, run) as source:
        try:
            # Only the key columns and those the summaries read are fetched (one range per row group).
            parquet = pq.ParquetFile(source, pre_buffer=True)
            # A trace written before a column existed lacks it: its summaries are NaN (fluctuation fills them).
            held = set(parquet.schema_arrow.names)
            table = parquet.read(columns=[c for c in (*KEY_COLUMNS, *SUMMARY_COLUMNS) if c in held])
        except Exception as exc:  # noqa: BLE001 -- a corrupt file is a skipped run, not a failed report
            raise FluxError(f"unreadable trace ({type(exc).__name__}: {exc})") from None
    resets = run_resets(client, run)  # empty, without a request, for a run that recycled nothing
    seconds["fetch"] = time.perf_counter() - clock
    with _COMPUTE_SLOTS:
        clock = time.perf_counter()
        trace = table.to_pandas()
        seconds["read"] = time.perf_counter() - clock
        summaries, tau_curve, tau_curve_relative, readings, layers, layout, sizes = _summaries(
            trace, window, thresholds, run_id, params.get(ACTIVATIONS_PARAM), units, resets)
        seconds["compute"] = time.perf_counter() - clock - seconds["read"]
    metrics = run.data.metrics
    history_key = loss_key or next((k for k in spec.loss_history_keys if k in metrics), spec.loss_history_keys[-1])
    loss = _history(client, run_id, history_key)
    series = {section.key: _history(client, run_id, section.key) for section in spec.sections if section.key in metrics}
    if loss_key is not None:
        final = metrics.get(loss_key, math.nan)
    else:  # the final evaluation where the runs log one; else the last value of the loss history
        final = next((metrics[k] for k in (*spec.final_loss_keys, history_key) if k in metrics), math.nan)
    return RunData(
        run_id=run_id,
        name=name,
        group=name if group_by == RUN_GROUPS else params[group_by],
        params=dict(params),
        final_loss=float(final),
        loss=loss,
        summaries=summaries,
        tau_curve=tau_curve,
        tau_curve_relative=tau_curve_relative,
        readings=readings,
        layers=layers,
        facet=", ".join(params.get(name, "?") for name in spec.facets),
        series=series,
        seconds=seconds,
        window=window,
        thresholds=thresholds,
        entity=run,
        layout=layout,
        sizes=sizes,
        replicate=params.get(spec.replicate, "") if spec.replicate else "",
    )


def _summaries(trace: pd.DataFrame, window: int, thresholds: fluctuation.Thresholds, run_id: str,
               activations: str | None, network_units: str, resets: pd.DataFrame | None = None):
    """A trace's summaries at every epoch (with the network's participation under both tau modes), its
    participation at the final window by tau (absolute and relative), both readings at the run's thresholds; its
    layers' names, their layout (activations, counted units) and sizes."""
    try:
        epochs, layers = reshape.layer_arrays(trace)
    except ValueError as exc:
        raise FluxError(f"unusable trace: {exc}") from None
    names = tuple(layers)
    units = network_units if network_units in fluctuation.NETWORK_UNITS else "hidden"
    layout = fluctuation.Layout(names, parse_activations(activations, len(names)), units)
    sizes = [np.shape(layers[name]["w_std"])[-1] for name in names]
    # A trace shorter than one window has no participation measure: the run still counts with its loss.
    summaries = reshape.summaries_from_arrays(epochs, layers, window, thresholds, layout, readings=True,
                                              resets=resets)
    tau_curve = tau_curve_relative = pd.Series(dtype=float, name=run_id)
    readings = {}
    if not summaries.empty:
        # The final window, judged under every tau of both curves.
        last = {name: {c: arrays[c][-window:][None] for c in fluctuation.WINDOW_COLUMNS}
                for name, arrays in layers.items()}
        judged = [*(replace(thresholds, tau=t, tau_mode="absolute") for t in TAU_GRID),
                  *(replace(thresholds, tau_relative=t, tau_mode="relative") for t in TAU_GRID_RELATIVE)]
        fractions = fluctuation.participation_curve(last, judged, layout)[:, 0].tolist()
        tau_curve = pd.Series(dict(zip(TAU_GRID, fractions)), name=run_id)
        tau_curve_relative = pd.Series(dict(zip(TAU_GRID_RELATIVE, fractions[len(TAU_GRID):])), name=run_id)
        final = summaries.iloc[-1]
        readings = {key: float(final[key]) for key in ("all/participating_frac_absolute",
                                                      "all/participating_frac_relative")}
    return summaries, tau_curve, tau_curve_relative, readings, list(layers), layout, sizes


def _history(client, run_id: str, key: str) -> pd.Series:
    """A metric's history by step, as floats (MLflow's stores give -inf back as itself)."""
    values = {m.step: mlflow_adapter.metric_value(m.value) for m in client.get_metric_history(run_id, key)}
    return pd.Series(values, dtype=float).sort_index()


def _attach_figures(client, run: RunData, figures) -> None:
    for figure in figures:
        folder = figure.path.rsplit("/", 1)[0] if "/" in figure.path else ""
        try:
            if any(f.path == figure.path for f in client.list_artifacts(run.run_id, folder or None)):
                with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
                    run.figures[figure.path] = Path(client.download_artifacts(run.run_id, figure.path,
                                                                              tmp)).read_bytes()
        except Exception as exc:  # noqa: BLE001 -- a missing picture leaves a gap in the grid, not a failed report
            _log.warning("no figure %s for run %s: %s", figure.path, run.run_id, exc)


def load_comparison(
    sweep_id: str | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    window: int | None = None,
    tau: float | None = None,
    group_by: str | None = None,
    loss_key: str | None = None,
    workers: int = 8,
    spec: ReportSpec | None = None,
) -> Comparison:
    """Select the runs and load them (in parallel threads: the time is network and Parquet decoding).

    ``spec`` says how to read them (default: the one the runs declare, else :data:`~.spec.DEFAULT_SPEC`);
    ``group_by`` names the parameter whose values form the groups (default: the spec's, else every run is its own
    group); ``loss_key`` the metric reported as the loss (default: the spec's final keys, else the last value of its
    history keys).
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking_uri = mlflow.get_tracking_uri()
    check_reachable(tracking_uri)
    client = MlflowClient()
    started = time.perf_counter()
    runs, description, sweep_id = select_runs(client, sweep_id, experiment, filter_string)
    queried = time.perf_counter()
    spec = spec or spec_declared_by(runs) or DEFAULT_SPEC
    claims = tuple({c.name: c for c in (*claims_declared_by(runs), *spec.claims)}.values())
    if group_by is None:
        grouping = spec.group_by or next((c.group_by for c in claims if c.group_by), None)
        group_by = grouping if grouping and any(grouping in run.data.params for run in runs) else RUN_GROUPS

    def load(run):
        try:
            return _load_run(client, run, window, tau, group_by, loss_key, spec), None
        except FluxError as exc:
            return None, (run.info.run_id, run.data.tags.get("mlflow.runName", ""), str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, runs))
    loaded = [r for r, _ in results if r is not None]
    skipped = [s for _, s in results if s is not None]
    firsts = {}
    for run in loaded:  # the report shows each run figure once per group
        firsts.setdefault(run.group, run)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda run: _attach_figures(client, run, spec.figures), firsts.values()))
    done = time.perf_counter()
    if not loaded:
        reasons = "; ".join(f"{name or rid}: {why}" for rid, name, why in skipped)
        raise FluxError(f"none of the {len(runs)} runs of {description} has a readable trace ({reasons})")
    # The spec's facets the runs vary (a facet all runs share would only lengthen every label).
    facets = tuple(name for name in spec.facets
                   if name != group_by and len({r.params[name] for r in loaded if name in r.params}) > 1)
    facet = ", ".join(facets) or None
    for run in loaded:
        run.facet = ", ".join(run.params.get(name, "?") for name in facets)
    comparison = Comparison(loaded, skipped, description, sweep_id, tracking_uri, claims,
                            {"query": queried - started, "load": done - queried}, group_by,
                            loss_key or DEFAULT_LOSS_LABEL, facet, spec)
    order = {value: index for index, value in enumerate(comparison.group_order(r.group for r in loaded))}
    loaded.sort(key=lambda r: (r.facet, order[r.group], _sort_key(r.replicate, False), r.name))
    return comparison
