"""The explorer page: pooled runs in, one self-contained HTML page out (its data, script and style inline; nothing
fetched). Pure: no MLflow, no file I/O beyond the page's own script and style, read from this package.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from importlib import resources

import numpy as np

from .. import fluctuation
from ..statistics import STATISTICS
from ..version import __version__
from .build import PooledRun
from .encoding import RELATIVE_RESOLUTION, Blob, manifest_json
from .pooling import BANDS, DEAD, FROZEN, NEVER, NO_WINDOW, PARTICIPATING, STATES

__all__ = ["render_page", "FORMAT_VERSION", "LINEAR_COLUMNS", "SCRIPTS", "RISE"]

FORMAT_VERSION = 2  # 2: live pages, pairs of runs, resets, the state codes in the metadata
# Drawn on a linear scale whatever their spread: bounded fractions.
LINEAR_COLUMNS = ("act_rate",)
_INT32_NEVER = np.iinfo(np.int32).max
SCRIPTS = ("flux-core.js", "explorer.js")  # inlined in this order: the pure core, then the page
RISE = 0.1  # a layer's dead fraction "first rises" at its first bin this far above its first window's value


def _range(values: np.ndarray, column: str) -> list:
    """``[low, high, lowest positive, log]`` of the finite values (0.5th-99.5th percentiles: one outlier does not
    flatten the colour scale); log when nothing is negative and the positive values span two decades or more."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return [0.0, 1.0, 1.0, False]
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    positive = finite[finite > 0]
    positive_low = float(np.percentile(positive, 0.5)) if positive.size else 1.0
    log = (column not in LINEAR_COLUMNS and finite.min() >= 0 and positive.size > 0
           and float(positive.max()) >= 100 * positive_low)
    return [low, high, positive_low, bool(log)]


def _epochs32(values: np.ndarray) -> np.ndarray:
    return np.where(values >= NEVER, _INT32_NEVER, values).astype(np.int32)


def _layer(blob: Blob, prefix: str, layer) -> dict:
    rows = layer.neurons.astype(np.int32)
    values = dict(layer.values)
    states = layer.states
    stops, dies = layer.stops_participating, layer.dies
    if layer.banded:  # quantile bands first (rows -1 .. -len(BANDS)), then the extreme neurons
        count = len(BANDS)
        rows = np.concatenate([-(np.arange(count, dtype=np.int32) + 1), rows])
        values = {c: np.concatenate([layer.bands[c], values[c]], axis=1) if c in values else layer.bands[c]
                  for c in layer.bands}
        states = np.concatenate([np.zeros((states.shape[0], count), dtype=np.uint8), states], axis=1)
        stops = np.concatenate([np.full(count, NEVER), stops])
        dies = np.concatenate([np.full(count, NEVER), dies])
    entry = {
        "name": layer.name, "width": int(layer.width), "banded": layer.banded,
        "rows": blob.add(f"{prefix}/rows", rows, "i32"),
        "values": {c: blob.add(f"{prefix}/{c}", v, "bf16") for c, v in values.items()},
        "ranges": {c: _range(v, c) for c, v in values.items()},
        "states": blob.add(f"{prefix}/states", states, "u8"),
        "fractions": blob.add(f"{prefix}/fractions", layer.fractions, "f32"),
        "stops": blob.add(f"{prefix}/stops", _epochs32(stops), "i32"),
        "dies": blob.add(f"{prefix}/dies", _epochs32(dies), "i32"),
    }
    return entry


def _resets(blob: Blob, prefix: str, resets) -> dict:
    """Where the run's policy reset units: per layer, epochs and neurons (a layer reset as a whole: neuron -1)."""
    if resets is None or not len(resets):
        return {}
    out = {}
    for k, (layer, rows) in enumerate(resets.groupby("layer", sort=False)):
        out[str(layer)] = {"epochs": blob.add(f"{prefix}/reset{k}/epochs", rows["epoch"].to_numpy(), "i32"),
                           "neurons": blob.add(f"{prefix}/reset{k}/neurons", rows["neuron"].to_numpy(), "i32"),
                           "policy": str(rows["policy"].iloc[0]), "dry_run": bool(rows["dry_run"].any())}
    return out


def _run(blob: Blob, index: int, pooled: PooledRun) -> dict:
    prefix = f"r{index}"
    first, last = pooled.bins
    run = pooled.run
    thresholds = fluctuation.Thresholds.of(run.tau)
    return {
        "id": run.run_id, "name": run.name, "group": run.group, "window": run.window,
        "fingerprint": run.fingerprint, "resets": _resets(blob, prefix, run.resets),
        "tau": thresholds.participation_tau, "tau_mode": thresholds.tau_mode,
        "epochs": blob.add(f"{prefix}/epochs", pooled.epochs, "i32"),
        "bins": {"first": blob.add(f"{prefix}/bin_first", first, "i32"),
                 "last": blob.add(f"{prefix}/bin_last", last, "i32")},
        "width": pooled.width,
        "fractions": blob.add(f"{prefix}/fractions", pooled.fractions, "f32"),
        "loss": [{"key": key, "steps": blob.add(f"{prefix}/loss{k}/steps", steps, "i32"),
                  "values": blob.add(f"{prefix}/loss{k}/values", values, "f32")}
                 for k, (key, (steps, values)) in enumerate(run.losses.items())],
        "layers": [_layer(blob, f"{prefix}/L{k}", layer) for k, layer in enumerate(pooled.layers.values())],
    }


def interval_curves(runs: Sequence[PooledRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A group's network-wide state fractions over the epochs all its runs share: mean and two-sided 95% Student-t
    interval over its runs (NaN bounds with one run)."""
    common = runs[0].epochs
    for run in runs[1:]:
        common = np.intersect1d(common, run.epochs)
    stacked = np.stack([run.fractions[np.searchsorted(run.epochs, common)].astype(np.float64) for run in runs])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice" before the first full window
        mean = np.nanmean(stacked, axis=0)
        n = np.isfinite(stacked).sum(axis=0)
        if not (n > 1).any():  # one run: no interval, and no scipy
            return common, mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan)
        spread = np.nanstd(stacked, axis=0, ddof=1)  # "Degrees of freedom <= 0" where one run has a value: NaN
    # Imported here: scipy.stats costs 0.6-2.3 s of imports, and a watched run's own page (built while it trains,
    # LivePooler imports this package at watch()) never needs it.
    from scipy import stats

    half = np.where(n > 1, stats.t.ppf(0.975, np.maximum(n - 1, 1)) * spread / np.sqrt(np.maximum(n, 1)), np.nan)
    return common, mean, mean - half, mean + half


def _pooled_lines(pooled: Sequence[PooledRun]) -> list[str]:
    """What was pooled or banded, a line per kind (not a clause per layer: a model may have hundreds)."""
    lines = []
    for run in pooled:
        bins = len(run.bins[0])
        lines.append(f"{run.run.name}: {len(run.epochs)} snapshots, not pooled" if run.width == 1 else
                     f"{run.run.name}: {len(run.epochs)} snapshots pooled into {bins} bins of {run.width} (each bin: "
                     "the mean of its snapshots; states: the window ending at its last snapshot)")
    banded: dict[int, list[str]] = {}
    for run in pooled:
        for layer in run.layers.values():
            if layer.banded:
                banded.setdefault(len(layer.neurons), []).append(layer.name)
    for extremes, names in banded.items():
        unique = list(dict.fromkeys(names))
        shown = ", ".join(unique[:3]) + (f" and {len(unique) - 3} more" if len(unique) > 3 else "")
        lines.append(f"banded: {len(unique)} layer{'s' if len(unique) > 1 else ''} wider than the neuron budget "
                     f"({shown}): quantile bands {', '.join(f'{q:g}' for q in BANDS)}" +
                     (f" and {extremes} extreme neurons each" if extremes else
                      "; their extreme neurons are filled in when the run closes"))
    return lines


def _pairs(blob: Blob, pooled: Sequence[PooledRun]) -> tuple[list[dict], str | None]:
    from .pairs import pair_runs

    pairs, why = pair_runs(pooled)
    entries = []
    for k, pair in enumerate(pairs):
        layers = {name: {c: blob.add(f"p{k}/{name}/{c}", values, "bf16") for c, values in quantities.items()}
                  for name, quantities in pair.layers.items()}
        entries.append({"a": pair.a, "b": pair.b, "layers": layers, "skipped": pair.skipped,
                        "ranges": {name: {c: _range(v, c) for c, v in quantities.items()}
                                   for name, quantities in pair.layers.items()}})
    return entries, why


def render_page(pooled: Sequence[PooledRun], title: str, subtitle: str = "",
                groups: Sequence[tuple[str, Sequence[int]]] | None = None, live: dict | None = None) -> str:
    """One explorer page over ``pooled`` runs; ``groups`` (name, run indices) as the report groups them (several runs
    only); ``live`` (``snapshot``, ``snapshots``, ``written``) for a page refreshed while its run trains. Runs that
    share their start (equal fingerprints) are paired neuron by neuron. Everything the page draws is in it."""
    blob = Blob()
    runs = [_run(blob, index, run) for index, run in enumerate(pooled)]
    pairs, unpaired = _pairs(blob, pooled) if len(pooled) > 1 else ([], None)
    group_entries = []
    for g, (name, members) in enumerate(groups or []):
        entry = {"name": name, "runs": list(members)}
        if members:
            epochs, mean, low, high = interval_curves([pooled[i] for i in members])
            entry["curves"] = {"epochs": blob.add(f"g{g}/epochs", epochs, "i32"),
                               "mean": blob.add(f"g{g}/mean", mean, "f32"),
                               "low": blob.add(f"g{g}/low", low, "f32"), "high": blob.add(f"g{g}/high", high, "f32")}
        group_entries.append(entry)
    data = blob.encode()
    meta = {
        "version": FORMAT_VERSION, "title": title, "subtitle": subtitle,
        "generator": f"mlflow-flux {__version__}",
        "pooled": _pooled_lines(pooled),
        "resolution": (f"Values are stored as bfloat16 (8 significant bits): each is within "
                       f"{RELATIVE_RESOLUTION:.2%} of the trace's value where a bin holds one snapshot; NaN is "
                       "'not defined' (docs/traces.md)."),
        "quantities": [{"name": s.name, "meaning": s.meaning} for s in STATISTICS],
        "states": list(STATES), "bands": list(BANDS), "manifest": blob.manifest,
        # The constants the script reads (one source: explorer/pooling.py), never retyped there.
        "codes": {"NO_WINDOW": NO_WINDOW, "PARTICIPATING": PARTICIPATING, "FROZEN": FROZEN, "DEAD": DEAD},
        "never": _INT32_NEVER, "rise": RISE,
        "groups": group_entries, "runs": runs, "pairs": pairs, "unpaired": unpaired, "live": live,
    }
    static = resources.files(__package__) / "static"
    # The pure functions (what node --test checks) first, then the page's script, both inline: nothing is fetched.
    scripts = "".join(f"<script>{(static / name).read_text(encoding='utf-8')}</script>" for name in SCRIPTS)
    style = (static / "explorer.css").read_text(encoding="utf-8")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{style}</style></head><body><div id="app"></div>'
            f'<script type="application/json" id="flux-meta">{manifest_json(meta)}</script>'
            f'<script type="application/octet-stream" id="flux-data">{data}</script>'
            f"{scripts}</body></html>")
