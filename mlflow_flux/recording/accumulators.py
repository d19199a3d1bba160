"""Per-neuron sums and counts of one watched layer between two snapshots, and the statistics they give.

Two ways in. With the compiled extension (see :mod:`.fastpath`) on CPU, the hooks are C objects: on float32
contiguous tensors each is one fused pass over the output or gradient while it is still in cache, into float64
sums, with no Python frame; anything else they pass to the torch path's ``on_forward``/``on_grad``.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn

from ..traces.schema import STAT_COLUMNS
from . import fastpath as kernels

__all__ = ["LayerAccumulator", "FAST_POSITIONS"]

# Where layer_statistics (C) writes each statistic within a snapshot row.
FAST_POSITIONS = tuple(STAT_COLUMNS.index(c) for c in ("w_mean", "w_std", "w_norm", "w_step", "bias", "act_mean",
                                                       "act_std", "act_rate", "grad_norm"))


class LayerAccumulator:
    """Per-neuron sums and counts of one layer since the last snapshot; sums merge by adding.

    The C hooks (taps) take CPU float32 tensors; anything else they pass to ``on_forward``/``on_grad``, the torch
    path. There a Linear layer's outputs are copied into a stash and reduced every few steps, because on thin
    layers a reduction's cost is the op dispatch, not the arithmetic.
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
            self.backward_passes, out_address, FAST_POSITIONS,
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


def _detached_state() -> LayerAccumulator:
    state = LayerAccumulator.__new__(LayerAccumulator)
    state.detached = True
    return state
