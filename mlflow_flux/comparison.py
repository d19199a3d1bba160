"""The read side: query the tracking server for a sweep's runs, read their traces, recompute the summaries.

load (MlflowClient.search_runs + projected trace reads) -> tidy tables -> pure comparisons -> report.render.
The summaries are recomputed with the same functions the recorder logged them with (mlflow_flux.fluctuation),
with each run's own window and tau, so the report and the runs' metrics agree to the last digit.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from . import fluctuation, tracking
from .errors import FluxError, InvalidParameter, NoRunsMatch
from .traces import opened_trace

_log = logging.getLogger(__name__)

__all__ = ["RunData", "Comparison", "select_runs", "load_comparison", "group_table", "claims", "compare",
           "TAU_GRID", "check_reachable"]

SUMMARY_COLUMNS = ["w_std", "bias", "act_rate", "w_step"]
TAU_GRID = tuple(float(t) for t in np.logspace(-6, -1, 16))
# Two-sided 95% Student t quantiles by degrees of freedom; beyond 30 the normal 1.96 is close enough.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


@dataclass
class RunData:
    """One variant run: its identity, its loss, and the summaries recomputed from its trace."""

    run_id: str
    name: str
    lr: float
    seed: str
    params: dict
    final_loss: float
    loss: pd.Series  # loss/train by epoch
    summaries: pd.DataFrame  # fluctuation.summaries_over_epochs
    tau_curve: pd.Series  # participating fraction (all) at the final window, by tau
    layers: list[str]
    reconstruction_png: bytes | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # fetch, read, compute


@dataclass
class Comparison:
    runs: list[RunData]
    skipped: list[tuple[str, str, str]]  # (run id, name, reason)
    selection: str
    sweep_id: str | None
    tracking_uri: str
    timings: dict[str, float] = field(default_factory=dict)


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds, naming the URI, when an HTTP tracking server does not answer.

    MLflow's client alone retries for minutes against a dead address.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    from mlflow.utils.rest_utils import http_request
    from mlflow.utils.credentials import get_default_host_creds

    try:
        response = http_request(get_default_host_creds(tracking_uri), "/health", "GET", max_retries=0,
                                timeout=timeout)
    except Exception as exc:  # noqa: BLE001: any failure to connect means the same thing to the user
        raise FluxError(f"cannot reach the tracking server at {tracking_uri}: {type(exc).__name__}") from None
    if response.status_code != 200:
        raise FluxError(f"the tracking server at {tracking_uri} answered /health with HTTP {response.status_code}")


def _experiment_ids(client: MlflowClient, experiment: str | None) -> list[str]:
    import mlflow

    if experiment is None:
        from mlflow.tracking.fluent import _get_experiment_id

        return [_get_experiment_id()]
    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            found = client.get_experiment(experiment)
        except Exception:  # noqa: BLE001
            found = None
    if found is None:
        raise NoRunsMatch(f"no experiment named {experiment!r} at {mlflow.get_tracking_uri()}")
    return [found.experiment_id]


def select_runs(
    client: MlflowClient, sweep_id: str | None = None, experiment: str | None = None, filter_string: str | None = None
) -> tuple[list, str, str | None]:
    """The variant runs to compare, a description of the choice, and the sweep they belong to (if one).

    By sweep (a parent run id), by experiment, by filter string; by default the latest sweep of the experiment.
    """
    variant = f"tags.`{tracking.ROLE_TAG}` = 'variant'"
    if sweep_id is not None:
        try:
            sweep = client.get_run(sweep_id)
        except Exception:  # noqa: BLE001
            raise NoRunsMatch(f"no run with id {sweep_id!r}") from None
        ids = [sweep.info.experiment_id]
        query = f"{variant} and tags.`{tracking.SWEEP_TAG}` = '{sweep_id}'"
        description = f"sweep {sweep_id}"
    else:
        ids = _experiment_ids(client, experiment)
        if filter_string:
            # MLflow's filter grammar has AND only and no parentheses, so joining needs no grouping.
            query = filter_string if tracking.ROLE_TAG in filter_string else f"{variant} and {filter_string}"
            description = f"filter {filter_string!r}"
        elif experiment is not None:
            query, description = variant, f"experiment {experiment!r}"
        else:
            latest = client.search_runs(ids, f"tags.`{tracking.ROLE_TAG}` = 'sweep'", max_results=1,
                                        order_by=["attributes.start_time DESC"])
            if not latest:
                raise NoRunsMatch("no sweep runs in the experiment: pass --sweep, --experiment or --filter")
            sweep_id = latest[0].info.run_id
            query = f"{variant} and tags.`{tracking.SWEEP_TAG}` = '{sweep_id}'"
            description = f"latest sweep {sweep_id}"
    try:
        runs = client.search_runs(ids, query, max_results=5000, order_by=["attributes.start_time ASC"])
    except Exception as exc:  # noqa: BLE001: a malformed filter string is the usual cause
        message = getattr(exc, "message", str(exc))
        if filter_string:
            raise InvalidParameter("filter", filter_string, message) from None
        raise FluxError(f"the run search failed ({description}): {message}") from None
    if not runs:
        raise NoRunsMatch(f"no variant runs match {description}")
    return runs, description, sweep_id


def _load_run(client: MlflowClient, run, window: int | None, tau: float | None) -> RunData:
    run_id = run.info.run_id
    if run.info.status != "FINISHED":
        raise FluxError(f"run status {run.info.status}")
    params = run.data.params
    window = window or int(params.get("flux.window", fluctuation.DEFAULT_WINDOW))
    tau = tau or float(params.get("flux.tau", fluctuation.DEFAULT_TAU))
    clock = time.perf_counter()
    seconds = {}
    with opened_trace(client, run) as source:
        try:
            # Only the key columns and the four the summaries need are fetched (one range per row group).
            table = pq.ParquetFile(source, pre_buffer=True).read(columns=["epoch", "layer", "neuron", *SUMMARY_COLUMNS])
        except Exception as exc:  # noqa: BLE001: a corrupt file is a skipped run, not a failed report
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
    last = {name: {c: a[-window:][None] for c, a in arrays.items() if c != "w_step"} | {"w_step": arrays["w_step"][-1:]}
            for name, arrays in layers.items()}
    tau_curve = pd.Series({t: float(fluctuation.summarize(last, t)["all/participating_frac"][0]) for t in TAU_GRID},
                          name=run_id)
    seconds["compute"] = time.perf_counter() - clock
    history = client.get_metric_history(run_id, "loss/train")
    loss = pd.Series({m.step: m.value for m in history}, dtype=float).sort_index()
    return RunData(
        run_id=run_id,
        name=run.data.tags.get("mlflow.runName", run_id[:8]),
        lr=float(params.get("lr", "nan")),
        seed=params.get("seed", "?"),
        params=dict(params),
        final_loss=float(run.data.metrics.get("loss/final", math.nan)),
        loss=loss,
        summaries=summaries,
        tau_curve=tau_curve,
        layers=list(layers),
        seconds=seconds,
    )


def _attach_reconstruction(client: MlflowClient, run: RunData) -> None:
    path = "figures/reconstructions.png"
    try:
        if any(f.path == path for f in client.list_artifacts(run.run_id, "figures")):
            with tempfile.TemporaryDirectory(prefix="mlflow-flux-") as tmp:
                run.reconstruction_png = Path(client.download_artifacts(run.run_id, path, tmp)).read_bytes()
    except Exception as exc:  # noqa: BLE001: a missing picture leaves a gap in the grid, not a failed report
        _log.warning("no reconstruction figure for run %s: %s", run.run_id, exc)


def load_comparison(
    sweep_id: str | None = None,
    experiment: str | None = None,
    filter_string: str | None = None,
    window: int | None = None,
    tau: float | None = None,
    workers: int = 8,
) -> Comparison:
    """Select the runs and load them (in parallel threads: the time is network and Parquet decoding)."""
    import mlflow

    tracking_uri = mlflow.get_tracking_uri()
    check_reachable(tracking_uri)
    client = MlflowClient()
    started = time.perf_counter()
    runs, description, sweep_id = select_runs(client, sweep_id, experiment, filter_string)
    queried = time.perf_counter()

    def load(run):
        try:
            return _load_run(client, run, window, tau), None
        except FluxError as exc:
            return None, (run.info.run_id, run.data.tags.get("mlflow.runName", ""), str(exc))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load, runs))
    loaded = [r for r, _ in results if r is not None]
    skipped = [s for _, s in results if s is not None]
    firsts = {}
    for run in loaded:  # the report shows one reconstruction per learning rate
        firsts.setdefault(run.lr, run)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda run: _attach_reconstruction(client, run), firsts.values()))
    done = time.perf_counter()
    if not loaded:
        reasons = "; ".join(f"{name or rid}: {why}" for rid, name, why in skipped)
        raise FluxError(f"none of the {len(runs)} runs of {description} has a readable trace ({reasons})")
    loaded.sort(key=lambda r: (-r.lr, r.seed))
    return Comparison(loaded, skipped, description, sweep_id, tracking_uri,
                      {"query": queried - started, "load": done - queried})


# -- pure comparisons ------------------------------------------------------------------------------------------


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% Student-t confidence interval; NaN bounds with fewer than two values."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    df = len(values) - 1
    t = _T95.get(df) or next((v for k, v in sorted(_T95.items(), reverse=True) if k <= df), 1.96)
    half = t * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def run_table(comparison: Comparison) -> pd.DataFrame:
    """One row per run: the values of its final window, exactly as the recorder's metrics would give them."""
    rows = []
    for run in comparison.runs:
        last = run.summaries.iloc[-1]
        row = {"run_id": run.run_id, "name": run.name, "lr": run.lr, "seed": run.seed,
               "epochs": int(run.params.get("epochs", run.summaries.index[-1] + 1)),
               "final_epoch": int(run.summaries.index[-1]), "loss_final": run.final_loss}
        for key in ("participating", "participating_frac", "dead_frac", "sos_median", "bias_fluct_median"):
            row[f"all/{key}"] = float(last[f"all/{key}"])
        for layer in run.layers:
            row[f"{layer}/participating"] = float(last[f"{layer}/participating"])
        rows.append(row)
    return pd.DataFrame(rows)


def group_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per learning rate: means and 95% intervals over seeds."""
    rows = []
    numeric = [c for c in runs.columns if c not in ("run_id", "name", "lr", "seed", "final_epoch")]
    for lr, group in runs.groupby("lr", sort=False):
        row = {"lr": lr, "seeds": ",".join(map(str, group["seed"])), "n": len(group)}
        for column in numeric:
            mean, low, high = interval(group[column].to_numpy(dtype=float))
            row[column] = mean
            if column in ("loss_final", "all/participating_frac", "all/dead_frac", "all/participating"):
                row[f"{column} ci_low"], row[f"{column} ci_high"] = low, high
        rows.append(row)
    return pd.DataFrame(rows).sort_values("lr", ascending=False).reset_index(drop=True)


@dataclass(frozen=True)
class Claim:
    name: str
    text: str
    verdict: str  # agrees | disagrees | inconclusive | not testable
    evidence: str


def _row(groups: pd.DataFrame, lr: float) -> pd.Series | None:
    hit = groups[np.isclose(groups["lr"], lr, rtol=1e-9)]
    return hit.iloc[0] if len(hit) else None


def _overlap(a: pd.Series, b: pd.Series, column: str) -> bool | None:
    lows = (a[f"{column} ci_low"], b[f"{column} ci_low"])
    if any(not np.isfinite(v) for v in lows):
        return None
    return a[f"{column} ci_low"] <= b[f"{column} ci_high"] and b[f"{column} ci_low"] <= a[f"{column} ci_high"]


def _fmt(row: pd.Series, column: str, digits: int = 4) -> str:
    low, high = row.get(f"{column} ci_low", math.nan), row.get(f"{column} ci_high", math.nan)
    text = f"{row[column]:.{digits}g}"
    if np.isfinite(low):
        text += f" [{low:.{digits}g}, {high:.{digits}g}]"
    return text


def _verdict(ours: float, other: float, overlap: bool | None, lower: bool) -> str:
    """agrees when ``ours`` beats ``other`` in the claimed direction; a tie or overlapping intervals decide nothing."""
    if overlap or ours == other or not (np.isfinite(ours) and np.isfinite(other)):
        return "inconclusive"
    return "agrees" if (ours < other) == lower else "disagrees"


def claims(groups: pd.DataFrame) -> list[Claim]:
    """The paper's two claims, each with our numbers and a plain verdict."""
    out = []
    best, others = _row(groups, 0.01), groups[~np.isclose(groups["lr"], 0.01, rtol=1e-9)]
    text_a = "lr 0.01 reconstructs best (lowest final reconstruction loss)"
    if best is None or others.empty:
        out.append(Claim("a", text_a, "not testable", "the runs need lr 0.01 and at least one other lr"))
    else:
        rival = others.loc[others["loss_final"].idxmin()]
        evidence = f"loss/final: lr 0.01 {_fmt(best, 'loss_final')}; best other, lr {rival['lr']:g}, {_fmt(rival, 'loss_final')}"
        overlap = _overlap(best, rival, "loss_final")
        verdict = _verdict(best["loss_final"], rival["loss_final"], overlap, lower=True)
        if overlap is None:
            evidence += " (one seed per lr: no interval, verdict on the means)"
        out.append(Claim("a", text_a, verdict, evidence))

    low, high = _row(groups, 0.0001), _row(groups, 0.01)
    text_b = "lr 0.01 leaves more neurons inactive, lr 0.0001 engages more (participating fraction, all layers)"
    if low is None or high is None:
        out.append(Claim("b", text_b, "not testable", "the runs need both lr 0.01 and lr 0.0001"))
    else:
        column = "all/participating_frac"
        evidence = (f"participating fraction: lr 0.0001 {_fmt(low, column)}, lr 0.01 {_fmt(high, column)}; "
                    f"dead fraction: lr 0.0001 {_fmt(low, 'all/dead_frac')}, lr 0.01 {_fmt(high, 'all/dead_frac')}")
        overlap = _overlap(low, high, column)
        verdict = _verdict(low[column], high[column], overlap, lower=False)
        if overlap is None:
            evidence += " (one seed per lr: no interval, verdict on the means)"
        out.append(Claim("b", text_b, verdict, evidence))
    return out


def compare(
    sweep_id: str | None = None,
    *,
    experiment: str | None = None,
    filter_string: str | None = None,
    output: str | Path | None = None,
    log_run: bool = True,
    window: int | None = None,
    tau: float | None = None,
):
    """Build the cross-run participation report.

    Args:
        sweep_id: the parent run of a sweep; by default the latest sweep of the current experiment.
        experiment: compare every variant run of this experiment (name or id) instead.
        filter_string: an MLflow filter over the variant runs, e.g. ``"params.optimizer = 'adam'"``.
        output: also write the report files into this directory.
        log_run: log the report to a new run tagged ``mlflow_flux.role=report`` (a child of the sweep).
        window, tau: override each run's own settings (the metrics then no longer match the report).

    Returns:
        A :class:`mlflow_flux.report.Report` with the tables, the claims, the run id and the paths written.

    Raises:
        FluxError: no runs match, no run has a readable trace, or the server is unreachable.
    """
    from . import report

    comparison = load_comparison(sweep_id, experiment, filter_string, window, tau)
    return report.build(comparison, output=output, log_run=log_run)
