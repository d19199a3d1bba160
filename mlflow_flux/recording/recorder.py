"""The recorder: hooks on the watched layers, and per-epoch snapshots of every neuron.

Per step the hooks only reduce over the batch and add in place into preallocated per-neuron buffers on the
model's device (:mod:`.accumulators`); once per snapshot every layer's statistics are stacked into one tensor and
copied to the host once.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import FluxError
from ..traces.schema import STAT_COLUMNS, Snapshot
from . import fastpath as kernels
from .accumulators import LayerAccumulator
from .layers import LayerSpec, select_layers

__all__ = ["NeuronRecorder"]

class _WrappedForward:
    """The handle of a forward the fast path wraps instead of hooking; ``remove()`` puts the module back.

    Any forward hook sends every call of its module through ``nn.Module``'s slow path, about 2.5% of the
    paper-scale step here; a ``Forward`` in the module's instance dict keeps the fast path. A deep copy or pickle
    of the watched model gets the original forward (see ``_fastpath.Forward``), so the copy is a plain model.
    """

    def __init__(self, module: nn.Module, tap: object, fastpath) -> None:
        self.module_ref = weakref.ref(module)
        self.own = module.__dict__.get("forward")  # a forward set on the instance before us (another wrapper)
        self.wrapper = fastpath.Forward(module.forward, module, tap)
        module.__dict__["forward"] = self.wrapper

    def remove(self) -> None:
        self.wrapper.deactivate()  # harmless wherever a reference to it survives, e.g. inside a later wrapper
        module = self.module_ref()
        if module is not None and module.__dict__.get("forward") is self.wrapper:
            if self.own is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = self.own


class NeuronRecorder:
    """Records per-neuron statistics of a model's layers; a context manager that removes its hooks on exit.

    Args:
        model: the model to watch.
        layers: names, glob patterns or module types (see :func:`select_layers`).
        snapshot_every: take a snapshot on every N-th epoch (epochs are counted by the caller).
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerSpec] | None = None, snapshot_every: int = 1) -> None:
        if snapshot_every < 1:
            raise FluxError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.model = model
        self.layer_specs = layers
        self.snapshot_every = snapshot_every
        self._states: list[LayerAccumulator] = []
        self._handles: list[torch.utils.hooks.RemovableHandle | _WrappedForward] = []
        self._rows: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def layer_names(self) -> list[str]:
        return [state.name for state in self._states]

    @property
    def layer_sizes(self) -> list[int]:
        """Neurons per watched layer, in the order of :attr:`layer_names`."""
        return [state.size for state in self._states]

    @property
    def path(self) -> str:
        """``"c"`` when the compiled fast path serves the layers (CPU), else ``"torch"``."""
        return "c" if any(state.fast is not None for state in self._states) else "torch"

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "NeuronRecorder":
        """Resolve the layers, allocate buffers and register the hooks."""
        if self.attached:
            return self
        self._states = []
        fastpath = kernels.fastpath()
        for name, module in select_layers(self.model, self.layer_specs):
            state = LayerAccumulator(name, module, fastpath)
            self._states.append(state)
            if state.fast is not None:
                self._handles.append(_WrappedForward(module, state.forward_hook, state.fast))
            else:
                self._handles.append(module.register_forward_hook(state.forward_hook))
            if module.weight.requires_grad:
                self._handles.append(module.weight.register_hook(state.grad_hook))
        sizes = [state.size for state in self._states]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        self._rows = (
            np.repeat(np.arange(len(sizes), dtype=np.int32), sizes),
            np.concatenate([np.arange(size, dtype=np.int32) for size in sizes]),
        )
        return self

    def detach(self) -> None:
        """Remove every hook; calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "NeuronRecorder":
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def should_snapshot(self, epoch: int) -> bool:
        return epoch % self.snapshot_every == 0

    def snapshot(self, epoch: int) -> Snapshot:
        """Statistics of every watched neuron since the previous snapshot; resets the per-epoch sums."""
        if self._rows is None:
            raise FluxError("the recorder is not attached: use it as a context manager or call attach() first")
        layer_index, neuron = self._rows
        stats = np.empty((len(neuron), len(STAT_COLUMNS)), dtype=np.float32)
        nonfinite, torch_path = 0, []
        with torch.no_grad():
            for state, start in zip(self._states, self._offsets):
                module = state.module_ref()
                if module is None:
                    raise FluxError(f"layer {state.name!r} no longer exists")
                counted = state.fast_snapshot(module, stats.ctypes.data + start * stats.strides[0])
                if counted is None:
                    torch_path.append((start, *state.stats(module)))
                else:
                    nonfinite += counted
                state.reset()
            if torch_path:
                # The snapshot's one device-to-host copy for every layer the fast path did not take.
                device = torch_path[0][1].device  # a model may span devices
                host = torch.cat([block.to(device) for _, block, _ in torch_path]).cpu().numpy()
                row = 0
                for start, block, mask in torch_path:
                    part = host[row : row + len(block)]
                    row += len(block)
                    stats[start : start + len(block)] = part
                    nonfinite += int((~np.isfinite(part[:, mask])).sum())
        return Snapshot(epoch, self.layer_names, layer_index, neuron, stats, nonfinite)
