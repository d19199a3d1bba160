"""Hooks and per-epoch snapshots of every neuron of a PyTorch model.

A neuron is an output unit of a ``Linear`` layer or an output channel of a ``Conv1d/2d/3d`` layer. Per step the
hooks only reduce over the batch and add in place into preallocated per-neuron buffers on the model's device;
once per snapshot every layer's statistics are stacked into one tensor and copied to the host once.
"""

from __future__ import annotations

import fnmatch
import weakref
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from . import kernels
from .errors import FluxError

__all__ = ["DEFAULT_LAYER_TYPES", "STAT_COLUMNS", "Snapshot", "NeuronRecorder", "select_layers"]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Float columns of a snapshot, in the order the recorder stacks them and the trace stores them. The four the
# fluctuation summaries read come first, so in each row group they are one contiguous byte range that a reader
# fetching over HTTP gets in one request.
STAT_COLUMNS = ("w_std", "bias", "act_rate", "w_step", "w_mean", "w_norm", "act_mean", "act_std", "grad_norm")

# Where layer_statistics (C) writes each statistic within a snapshot row.
_FAST_POSITIONS = tuple(STAT_COLUMNS.index(c) for c in ("w_mean", "w_std", "w_norm", "w_step", "bias", "act_mean",
                                                        "act_std", "act_rate", "grad_norm"))

LayerSpec = Union[str, type]


def select_layers(model: nn.Module, layers: Sequence[LayerSpec] | None = None) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs to watch, in model order.

    Args:
        model: the model.
        layers: names, glob patterns (``"encoder.*"``) or module types; ``None`` watches every Linear and Conv.

    Raises:
        FluxError: nothing matches, or a given name or pattern matches no watchable layer.
    """
    candidates = [
        (name or type(module).__name__, module)  # a model that is itself one layer goes by its class name
        for name, module in model.named_modules()
        if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2
    ]
    if layers is None:
        chosen = [(n, m) for n, m in candidates if isinstance(m, DEFAULT_LAYER_TYPES)]
        if not chosen:
            raise FluxError(
                f"{type(model).__name__} has no Linear or Conv layer to watch; pass layers=[...] with module names"
            )
        return chosen
    chosen_names: set[str] = set()
    for spec in layers:
        if isinstance(spec, type):
            hits = [n for n, m in candidates if isinstance(m, spec)]
        else:
            hits = [n for n, _ in candidates if n == spec or fnmatch.fnmatchcase(n, spec)]
        if not hits:
            names = ", ".join(n for n, _ in candidates) or "none"
            label = spec.__name__ if isinstance(spec, type) else repr(spec)
            raise FluxError(f"layer {label} matches no watchable layer of the model; watchable: {names}")
        chosen_names.update(hits)
    return [(n, m) for n, m in candidates if n in chosen_names]


@dataclass
class Snapshot:
    """One snapshot of every watched neuron: row ``r`` is neuron ``neuron[r]`` of layer ``layers[layer_index[r]]``."""

    epoch: int
    layers: list[str]
    layer_index: np.ndarray  # int32, one per row
    neuron: np.ndarray  # int32, one per row
    stats: np.ndarray  # float32, (rows, len(STAT_COLUMNS))
    nonfinite: int  # defined values that are NaN or inf

    def column(self, name: str) -> np.ndarray:
        return self.stats[:, STAT_COLUMNS.index(name)]

    def layer_slice(self, name: str) -> slice:
        index = self.layers.index(name)
        rows = np.flatnonzero(self.layer_index == index)
        return slice(int(rows[0]), int(rows[-1]) + 1)


class _LayerState:
    """Per-neuron sums and counts of one layer since the last snapshot; sums merge by adding.

    Two ways in. With the compiled extension (see :mod:`.kernels`) on CPU, the hooks are C objects (the forward
    one wraps the module's forward, see :class:`_WrappedForward`): on float32 contiguous tensors each is one fused
    pass over the output or gradient while it is still in cache, into float64 sums, with no Python frame; anything
    else they pass to ``on_forward``/``on_grad``. Those are the torch path: a Linear layer's outputs are copied
    into a stash and reduced every few steps, because on thin layers a reduction's cost is the op dispatch, not
    the arithmetic.
    """

    STASH_STEPS = 8
    STASH_ELEMENTS = 1 << 21  # 8 MiB of float32 per layer at most

    def __init__(self, name: str, module: nn.Module, fastpath=None) -> None:
        weight = module.weight
        self.detached = False
        self.name = name
        self.module_ref = weakref.ref(module)
        self.size = weight.shape[0]
        self.is_conv = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        self.weight_dim = weight.dim()  # a conv's batched output has its weight's rank
        # Rows: activation sum, sum of squares, positive count, and the gradient's sum of squared norms.
        # float32 keeps each add to one BLAS call; stats() finishes the arithmetic in float64.
        self.sums = torch.zeros(4, self.size, device=weight.device, dtype=torch.float32)
        # Row views made once: slicing in the hook would cost an op per call.
        self._act_sum, self._act_sumsq, self._act_pos = self.sums[0:1], self.sums[1:2], self.sums[2:3]
        self._grad_sumsq = self.sums[3:4]
        # The fast path's sums, same rows, in float64, filled by C hooks (taps) that hand anything else to the
        # Python hooks below; stats() adds both kinds together. A tap writes at a raw address: its fallback, a
        # bound method of this state, keeps these sums alive for as long as the tap itself lives.
        self.fast = fastpath if weight.device.type == "cpu" else None
        self.fast_sums = torch.zeros(4, self.size, dtype=torch.float64) if self.fast is not None else None
        self.forward_hook, self.grad_hook = self.on_forward, self.on_grad
        self._taps = []
        if self.fast is not None:
            address, row_bytes = self.fast_sums.data_ptr(), self.size * self.fast_sums.element_size()
            kind = kernels.TAP_PLANES if self.is_conv else kernels.TAP_ROWS
            self.forward_hook = self.fast.Tap(kind, self.size, address, self.on_forward, weight.dim())
            self.grad_hook = self.fast.Tap(kernels.TAP_GRADIENT, self.size, address + 3 * row_bytes, self.on_grad)
            self._taps = [self.forward_hook, self.grad_hook]
        # Gradient row norms land in one row per backward pass and are reduced every STASH_STEPS passes.
        self._norm_rows = torch.empty(self.STASH_STEPS, self.size, device=weight.device, dtype=torch.float32)
        self._norm_slots = list(self._norm_rows)
        self._norms_filled = 0
        self._stash: torch.Tensor | None = None
        self._slots: list[torch.Tensor] = []  # views of the stash, one per step
        self._filled = 0
        self._ones: torch.Tensor | None = None
        self.act_count = 0
        self.grad_passes = 0
        self.previous_weight: torch.Tensor | None = None

    def __reduce__(self):
        # A deep copy or a pickle of the watched model is a plain model: the hooks it carries record nothing.
        return (_detached_state, ())

    @property
    def samples(self) -> int:
        """Activation samples added since the last reset, by both paths."""
        return self.act_count + (self.forward_hook.count if self._taps else 0)

    @property
    def backward_passes(self) -> int:
        return self.grad_passes + (self.grad_hook.count if self._taps else 0)

    def reset(self) -> None:
        self.sums.zero_()
        if self.fast_sums is not None:
            self.fast_sums.zero_()
        self.act_count = 0
        self.grad_passes = 0
        for tap in self._taps:
            tap.count = 0
        self._norms_filled = 0

    def _reduce(self, rows: torch.Tensor) -> None:
        """Add a ``(samples, neurons)`` block into the sums."""
        if rows.dtype != torch.float32:
            rows = rows.float()  # the sums are float32 whatever the model computes in (float64, half under autocast)
        count = rows.shape[0]
        if self._ones is None or self._ones.shape[1] != count or self._ones.dtype != rows.dtype:
            self._ones = torch.ones(1, count, device=rows.device, dtype=rows.dtype)
        self._act_sum.addmm_(self._ones, rows)
        self._act_sumsq.addmm_(self._ones, rows * rows)
        # relu().sign() counts positives (NaN counts as 0) at a third of the cost of `rows > 0` on CPU.
        self._act_pos.addmm_(self._ones, torch.relu(rows).sign_())
        self.act_count += count

    def drain(self) -> None:
        """Reduce what the stash holds."""
        if self._filled:
            self._reduce(self._stash[: self._filled * self._slots[0].shape[0]])
            self._filled = 0

    def on_forward(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        # Only training steps count: evaluation passes would mix another distribution into the epoch's activity.
        if self.detached or not (module.training and torch.is_grad_enabled()) or not isinstance(output, torch.Tensor):
            return
        out = output.detach()
        if self.is_conv:
            if out.dim() == self.weight_dim - 1:  # an unbatched input: one sample
                out = out.unsqueeze(0)
            # (B, C, *spatial): a channel's every position is one sample of that neuron. Conv outputs are big
            # enough that reducing them directly costs arithmetic, not dispatch.
            dims = (0, *range(2, out.dim()))
            self._act_sum[0].add_(out.sum(dims))
            self._act_sumsq[0].add_((out * out).sum(dims))
            self._act_pos[0].add_(torch.relu(out).sign_().sum(dims))
            self.act_count += out.numel() // self.size
            return
        rows = out if out.dim() == 2 else out.reshape(-1, self.size)  # every skipped op counts at this size
        slots = self._slots
        if not slots or slots[0].shape != rows.shape or slots[0].dtype != rows.dtype:
            self.drain()
            self._make_stash(rows)
            slots = self._slots
        if not slots:  # one step's output is larger than the stash budget
            self._reduce(rows)
            return
        slots[self._filled].copy_(rows)  # a copy: the model may change its output in place (ReLU(inplace))
        self._filled += 1
        if self._filled == len(slots):
            self.drain()

    def _make_stash(self, rows: torch.Tensor) -> None:
        steps = min(self.STASH_STEPS, self.STASH_ELEMENTS // max(1, rows.numel()))
        if steps < 2:
            self._stash, self._slots = None, []
            return
        self._stash = torch.empty(steps * rows.shape[0], self.size, device=rows.device, dtype=rows.dtype)
        self._slots = list(self._stash.split(rows.shape[0]))

    def on_grad(self, grad: torch.Tensor) -> None:
        if self.detached:
            return
        if grad.requires_grad:  # only under backward(create_graph=True); the sums must not join that graph
            grad = grad.detach()
        rows = grad if grad.dim() == 2 else grad.reshape(self.size, -1)
        if rows.dtype != torch.float32:
            rows = rows.float()
        torch.linalg.vector_norm(rows, dim=1, out=self._norm_slots[self._norms_filled])
        self._norms_filled += 1
        self.grad_passes += 1
        if self._norms_filled == self.STASH_STEPS:
            self.drain_norms()

    def drain_norms(self) -> None:
        """Add the stashed gradient norms, squared, into the sums."""
        if self._norms_filled:
            block = self._norm_rows[: self._norms_filled]
            self._grad_sumsq.add_(torch.linalg.vecdot(block, block, dim=0))
            self._norms_filled = 0

    def fast_snapshot(self, module: nn.Module, out_address: int) -> int | None:
        """Write this layer's snapshot rows (float32, ``len(STAT_COLUMNS)`` per neuron) at ``out_address`` in C.

        Returns:
            How many defined values are not finite, or ``None`` when the torch path must take the layer (no
            extension, another device, dtype or memory layout).
        """
        weight, bias = _weight_and_bias(module)
        # The C code reads and writes these by address: only CPU float32 contiguous memory may reach it.
        tensors = [t for t in (weight, bias, self.previous_weight) if t is not None]
        if self.fast is None or not all(_is_cpu_float32_block(t) for t in tensors):
            return None
        self.drain()
        self.drain_norms()
        if self.act_count or self.grad_passes:  # some calls took the torch path (e.g. a non-contiguous output)
            self.fast_sums.add_(self.sums)
        has_previous = self.previous_weight is not None
        fan_in = weight.numel() // self.size
        if not has_previous:
            self.previous_weight = torch.empty(self.size, fan_in, dtype=torch.float32)
        return self.fast.layer_statistics(
            weight.data_ptr(), self.previous_weight.data_ptr(), self.size, fan_in, has_previous,
            bias.data_ptr() if bias is not None else 0, self.fast_sums.data_ptr(), self.samples,
            self.backward_passes, out_address, _FAST_POSITIONS,
        )

    def stats(self, module: nn.Module) -> tuple[torch.Tensor, np.ndarray]:
        """The torch path's ``(N, len(STAT_COLUMNS))`` float32 statistics, on the layer's device, and which columns
        are defined: NaN also stands for "not defined" (no bias, no previous snapshot, no samples)."""
        self.drain()
        self.drain_norms()
        weight, bias = _weight_and_bias(module)
        samples, passes = self.samples, self.backward_passes
        defined = {"w_step": self.previous_weight is not None, "bias": bias is not None, "act_mean": samples > 0,
                   "act_std": samples > 0, "act_rate": samples > 0, "grad_norm": passes > 0}
        mask = np.array([defined.get(c, True) for c in STAT_COLUMNS])
        nan = torch.full((self.size,), float("nan"), device=weight.device)
        values = self._weight_values(weight.reshape(self.size, -1).float(), bias, nan)
        sums = self.sums.double()
        if self.fast_sums is not None:  # calls the taps took before handing this layer to the torch path
            sums += self.fast_sums
        values.update(self._activity_values(sums, samples, passes, nan))
        return torch.stack([values[c].float() for c in STAT_COLUMNS], dim=1), mask

    def _weight_values(self, weight: torch.Tensor, bias: torch.Tensor | None, nan: torch.Tensor) -> dict:
        # Two passes written out (torch.std_mean is ~10x slower on CPU); the norm follows from the same sums.
        fan_in = weight.shape[1]
        w_mean = weight.sum(dim=1) / fan_in
        centred = weight - w_mean[:, None]
        w_var = torch.linalg.vecdot(centred, centred) / fan_in
        if self.previous_weight is None:
            w_step = nan
            self.previous_weight = weight.clone()
        else:
            w_step = torch.linalg.vector_norm(weight - self.previous_weight, dim=1)
            self.previous_weight.copy_(weight)
        return {"w_mean": w_mean, "w_std": w_var.sqrt(), "w_norm": (fan_in * (w_var + w_mean * w_mean)).sqrt(),
                "w_step": w_step, "bias": bias.float() if bias is not None else nan}

    @staticmethod
    def _activity_values(sums, samples: int, passes: int, nan) -> dict:
        """Activation and gradient statistics from the summed rows."""
        values = {"act_mean": nan, "act_std": nan, "act_rate": nan, "grad_norm": nan}
        if samples:
            act_mean = sums[0] / samples
            values["act_mean"] = act_mean
            values["act_std"] = (sums[1] / samples - act_mean * act_mean).clamp_min(0).sqrt()
            values["act_rate"] = sums[2] / samples
        if passes:
            values["grad_norm"] = (sums[3] / passes).sqrt()
        return values


def _weight_and_bias(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    bias = getattr(module, "bias", None)
    return module.weight.detach(), bias.detach() if isinstance(bias, torch.Tensor) else None


def _is_cpu_float32_block(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype is torch.float32 and tensor.is_contiguous()


def _detached_state() -> _LayerState:
    state = _LayerState.__new__(_LayerState)
    state.detached = True
    return state


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
        self._states: list[_LayerState] = []
        self._handles: list[torch.utils.hooks.RemovableHandle | _WrappedForward] = []
        self._rows: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def layer_names(self) -> list[str]:
        return [state.name for state in self._states]

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
            state = _LayerState(name, module, fastpath)
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
