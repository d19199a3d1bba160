"""Synthetic traces for what no test can train here: models of a hundred layers, GPT-2-small's shapes. Snapshots are
made as the recorder makes them (:class:`~mlflow_flux.traces.schema.Snapshot`) from seeded random statistics, with
planted deaths: the units of a layer that stop firing from a given snapshot on."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from mlflow_flux.traces.schema import STAT_COLUMNS, Snapshot

ACT_RATE = STAT_COLUMNS.index("act_rate")
ACT_STD = STAT_COLUMNS.index("act_std")

# GPT-2 small as transformers builds it: 12 blocks of Conv1D maps, then the tied LM head (133,201 neurons).
GPT2_SMALL = [*(layer for block in range(12) for layer in (
    (f"transformer.h.{block}.attn.c_attn", 2304), (f"transformer.h.{block}.attn.c_proj", 768),
    (f"transformer.h.{block}.mlp.c_fc", 3072), (f"transformer.h.{block}.mlp.c_proj", 768))), ("lm_head", 50257)]


def snapshots(layers: Sequence[tuple[str, int]], count: int, deaths: Mapping[str, tuple[int, float]] = {},
              seed: int = 0) -> Iterator[Snapshot]:
    """``count`` snapshots of ``layers`` (name, width). ``deaths[name] = (snapshot, share)``: from that snapshot on,
    the first ``share`` of the layer's units neither fire nor vary (dead)."""
    names = [name for name, _ in layers]
    widths = np.array([width for _, width in layers])
    layer_index = np.repeat(np.arange(len(layers), dtype=np.int32), widths)
    neuron = np.concatenate([np.arange(width, dtype=np.int32) for width in widths])
    starts = np.concatenate([[0], np.cumsum(widths)])
    rng = np.random.default_rng(seed)
    base = rng.random((len(STAT_COLUMNS), len(neuron)), dtype=np.float32) + np.float32(0.5)
    for epoch in range(count):
        stats = base * (1 + np.float32(0.2) * rng.standard_normal(base.shape, dtype=np.float32))
        for name, (at, share) in deaths.items():
            if epoch >= at:
                k = names.index(name)
                dead = slice(starts[k], starts[k] + int(share * widths[k]))
                stats[ACT_RATE, dead] = 0.0
                stats[ACT_STD, dead] = 0.0
        yield Snapshot(epoch, names, layer_index, neuron, stats, 0)


def live_page(layers: Sequence[tuple[str, int]], count: int, deaths: Mapping[str, tuple[int, float]] = {},
              window: int = 3, segment: int = 50, name: str = "synthetic") -> str:
    """The live explorer page of such a run, pooled segment by segment as a watched run pools it."""
    from mlflow_flux.explorer import LivePooler, RunInput, render_page

    pooler = LivePooler(window, 1e-3)
    pending = []
    for snapshot in snapshots(layers, count, deaths):
        pending.append(snapshot)
        if len(pending) == segment:
            pooler(pending)
            pending = []
    pooler(pending)
    live = {"snapshot": count - 1, "snapshots": count, "written": "2026-01-01T00:00:00+00:00"}
    run = RunInput(name, name, None, window, 1e-3)
    return render_page([pooler.pooled(run, None)], f"mlflow-flux explorer: {name}", "synthetic", live=live)
