"""Traces as arrays: a long trace (one row per snapshot x layer x neuron, as ``load_traces`` returns it) reshaped into
per-layer ``(snapshots, neurons)`` arrays, and the fluctuation summaries recomputed at every snapshot of a whole trace.

The report and the explorer read traces through these; the summaries themselves are :mod:`mlflow_flux.fluctuation`'s
(numpy in, numbers out), the same the recorder logs live.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .fluctuation import DEFAULT_TAU, DEFAULT_WINDOW, INPUT_COLUMNS, Layout, Thresholds, window_summaries

__all__ = ["layer_arrays", "summaries_from_arrays", "summaries_over_epochs", "restarts_of"]


def layer_arrays(trace: pd.DataFrame, columns: tuple[str, ...] = INPUT_COLUMNS):
    """A long trace as ``(epochs, {layer: {column: (E, N) float32 array}})``, layers in order of appearance; of
    ``columns``, those the trace holds.

    Raises:
        ValueError: a layer misses neurons at some epoch, or layers were snapshot at different epochs.
    """
    columns = tuple(c for c in columns if c in trace.columns)  # a trace written before a column existed lacks it
    layer = trace["layer"]
    codes, names = pd.factorize(layer.astype(str) if not isinstance(layer.dtype, pd.CategoricalDtype) else layer)
    epoch = trace["epoch"].to_numpy()
    neuron = trace["neuron"].to_numpy()
    fast = _epoch_major_layout(codes, epoch, neuron)
    if fast is not None:
        return _split_epoch_major(trace, names, fast, columns)
    order = np.lexsort((neuron, epoch, codes))
    codes, epoch = codes[order], epoch[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    epochs: np.ndarray | None = None
    out: dict[str, dict[str, np.ndarray]] = {}
    for rows in np.split(np.arange(len(order)), bounds):
        if rows.size == 0:
            continue
        name = str(names[codes[rows[0]]])
        layer_epochs = np.unique(epoch[rows])
        if rows.size % layer_epochs.size:
            raise ValueError(f"layer {name!r} does not have the same neurons at every epoch")
        if epochs is None:
            epochs = layer_epochs
        elif not np.array_equal(epochs, layer_epochs):
            raise ValueError(f"layer {name!r} has snapshots at other epochs than the first layer")
        shape = (layer_epochs.size, rows.size // layer_epochs.size)
        out[name] = {c: trace[c].to_numpy(dtype=np.float32)[order[rows]].reshape(shape) for c in columns}
    return (epochs if epochs is not None else np.array([], dtype=np.int64)), out


def _epoch_major_layout(codes: np.ndarray, epoch: np.ndarray, neuron: np.ndarray):
    """``(epochs, codes of one epoch, neurons of one epoch)`` when every epoch repeats one row layout, as the
    recorder writes it; None otherwise. Checking is one vectorised comparison; sorting would be a lexsort."""
    if len(epoch) == 0:
        return None
    per_epoch = int(np.searchsorted(epoch, epoch[0], side="right"))
    if per_epoch == 0 or len(epoch) % per_epoch:
        return None
    shape = (len(epoch) // per_epoch, per_epoch)
    epochs_2d, codes_2d, neuron_2d = epoch.reshape(shape), codes.reshape(shape), neuron.reshape(shape)
    epochs = epochs_2d[:, 0]
    if (
        (epochs_2d != epochs[:, None]).any()
        or (np.diff(epochs) <= 0).any()
        or (codes_2d != codes_2d[0]).any()
        or (neuron_2d != neuron_2d[0]).any()
    ):
        return None
    first_codes, first_neurons = codes_2d[0], neuron_2d[0]
    # each layer must be one contiguous block of neurons 0..N-1 within the epoch
    starts = np.flatnonzero(np.r_[True, np.diff(first_codes) != 0])
    if len(np.unique(first_codes)) != len(starts):
        return None
    return epochs, first_codes, first_neurons, starts, shape


def _split_epoch_major(trace, names, layout, columns):
    epochs, first_codes, first_neurons, starts, shape = layout
    bounds = list(starts) + [shape[1]]
    out: dict[str, dict[str, np.ndarray]] = {}
    wide = {c: trace[c].to_numpy(dtype=np.float32).reshape(shape) for c in columns}
    for begin, end in zip(bounds[:-1], bounds[1:]):
        block = first_neurons[begin:end]
        order = np.argsort(block, kind="stable")
        columns_of_layer = slice(begin, end) if (order == np.arange(len(order))).all() else begin + order
        out[str(names[first_codes[begin]])] = {
            c: np.ascontiguousarray(wide[c][:, columns_of_layer]) for c in columns
        }
    return epochs, out


def summaries_from_arrays(epochs: np.ndarray, layers: dict, window: int, tau: float | Thresholds,
                          layout: Layout | None = None, readings: bool = False,
                          resets: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`summaries_over_epochs` on what :func:`layer_arrays` returned (``readings``: with the network's
    participation under both tau modes, see :func:`~mlflow_flux.fluctuation.window_summaries`; ``resets``: the run's
    reset table, whose units start their windows again)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 snapshots, got {window}")
    if len(epochs) < window:
        return pd.DataFrame(index=pd.Index([], name="epoch"))
    restarts = restarts_of(epochs, layers, resets) if resets is not None and len(resets) else ()
    return pd.DataFrame(window_summaries(layers, window, tau, layout, readings, restarts),
                        index=pd.Index(epochs[window - 1 :], name="epoch"))


def restarts_of(epochs: np.ndarray, layers: dict, resets: pd.DataFrame) -> list[tuple[int, int]]:
    """The reset table's unit resets as ``(snapshot index, unit among all layers side by side)`` (rows of a layer
    reset as a whole, neuron -1, restart nothing; a row the trace does not hold is skipped)."""
    offsets, start = {}, 0
    for name, arrays in layers.items():
        offsets[name] = start
        start += np.shape(arrays["w_std"])[-1]
    out = []
    for epoch, layer, neuron in zip(resets["epoch"], resets["layer"], resets["neuron"]):
        index = int(np.searchsorted(epochs, epoch))
        if neuron < 0 or layer not in offsets or index >= len(epochs) or epochs[index] != epoch:
            continue
        out.append((index, offsets[layer] + int(neuron)))
    return out


def summaries_over_epochs(trace: pd.DataFrame, window: int = DEFAULT_WINDOW,
                          tau: float | Thresholds = DEFAULT_TAU, layout: Layout | None = None,
                          resets: pd.DataFrame | None = None) -> pd.DataFrame:
    """Recompute the live summaries at every snapshot of a trace whose window is full.

    Args:
        trace: a long trace with columns ``epoch``, ``layer``, ``neuron``, ``w_std``, ``bias``, ``act_rate``,
            ``w_step`` (as :func:`mlflow_flux.load_traces` returns it).
        window: snapshots per window.
        tau: participation threshold, or the run's :class:`~mlflow_flux.fluctuation.Thresholds`.
        layout: the layers' activations and the network's counted units (:class:`~mlflow_flux.fluctuation.Layout`;
            default: every layer but the last, activations unknown).
        resets: the run's reset table (:func:`mlflow_flux.load_resets`), when it recycled neurons.

    Returns:
        One row per epoch (index ``epoch``) and one column per summary key (``"<layer>/<key>"``, ``"all/<key>"``),
        equal to the ``flux/...`` metrics the recorder logged for the same settings.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2 snapshots, got {window}")
    epochs, layers = layer_arrays(trace)
    return summaries_from_arrays(epochs, layers, window, tau, layout, resets=resets)
