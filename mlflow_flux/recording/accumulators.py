"""Per-neuron sums of one watched layer between two snapshots, the reductions that add into them, and the
statistics they give.

State, declared once (:data:`SUM_ROWS`), on the layer's device, zeroed by one reset, merged across steps by adding
and across ranks by :mod:`.distributed`:

- ``sums``: float64 ``(6, neurons)``: sample count, sum and sum of squares of ``output - shift``, outputs above
  zero, sum of squared gradient norms, gradient passes;
- ``shift``: float32 ``(neurons,)``: the mean of the window's first batch. Shifted sums keep the variance exact
  whatever the outputs' common offset (E[x^2] - E[x]^2 over plain sums loses every digit of a spread of 1e-3 around
  1e3). Every path takes the first batch as "the count is still zero", read from ``sums`` itself, so the C taps,
  the eager torch path and a compiled graph always agree on it.

Three ways in, one definition per statistic: the C taps (CPU float32 and bfloat16 tensors, one fused pass, no
Python frame), the torch path (any device or dtype; a ``torch.compile`` graph calls it as one custom operator,
``mlflow_flux::accumulate_outputs``, that declares the sums it mutates), and, with ``optimizer=``, the gradients
the optimizer applies.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn

from ..traces.schema import STAT_COLUMNS
from . import fastpath as kernels
from .layers import WatchedLayer

__all__ = ["LayerAccumulator", "SUM_ROWS", "FAST_POSITIONS", "weight_and_bias"]

SUM_ROWS = ("count", "shifted_sum", "shifted_sumsq", "positive", "grad_sumsq", "grad_passes")
COUNT, SHIFTED_SUM, SHIFTED_SUMSQ, POSITIVE, GRAD_SUMSQ, GRAD_PASSES = range(len(SUM_ROWS))

# Where layer_statistics (C) writes each statistic within a snapshot row.
FAST_POSITIONS = tuple(STAT_COLUMNS.index(c) for c in ("w_mean", "w_std", "w_norm", "w_step", "bias", "act_mean",
                                                       "act_std", "act_rate", "grad_norm", "w_dist0"))


def weight_and_bias(module: nn.Module, weight_axis: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight with one row per neuron (a transposed copy for a column-major layer), and the bias (read only:
    ``.data`` skips building a detached view, which costs more than the check it serves)."""
    weight = module.weight.data
    if weight_axis == 1:
        weight = weight.t().contiguous()
    bias = getattr(module, "bias", None)
    return weight, bias.data if isinstance(bias, torch.Tensor) else None


def _accumulate_with_torch(output: torch.Tensor, sums: torch.Tensor, shift: torch.Tensor, planes: bool,
                           weight_dim: int) -> None:
    """The torch path: any device or dtype."""
    size = sums.shape[1]
    if planes:
        if output.dim() == weight_dim - 1:  # an unbatched input: one sample
            output = output.unsqueeze(0)
        dims = (0, *range(2, output.dim()))
        view = (1, size, *([1] * (output.dim() - 2)))
    else:
        output = output.reshape(-1, size)
        dims, view = (0,), (1, size)
    x = output.float()  # bfloat16/float16 under autocast: reduced in float32, added into float64
    samples = x.numel() // size
    if samples == 0:
        return
    # A tensor select, not a Python branch: no host sync on an accelerator.
    shift.copy_(torch.where(sums[COUNT, 0] == 0, x.mean(dims), shift))
    d = x - shift.reshape(view)
    sums[COUNT].add_(samples)
    sums[SHIFTED_SUM].add_(d.sum(dims))
    sums[SHIFTED_SUMSQ].add_((d * d).sum(dims))
    sums[POSITIVE].add_((x > 0).sum(dims))


@torch.library.custom_op("mlflow_flux::accumulate_outputs", mutates_args=("sums", "shift"))
def accumulate_outputs(output: torch.Tensor, sums: torch.Tensor, shift: torch.Tensor, planes: bool,
                       weight_dim: int) -> None:
    """Add one call's outputs into ``sums``: what a ``torch.compile`` graph calls.

    A Linear's output counts every leading position as a sample (``planes`` false); a conv's counts every position
    of every plane (``planes`` true; ``weight_dim - 1`` dimensions is an unbatched sample). The window's first
    batch sets ``shift`` (the count is still zero). On CPU the C tap does it in one pass over the output, writing
    into the tensors this call was given (the compiler may hand a copy of the buffers); elsewhere the torch path.
    """
    extension = kernels.fastpath()
    if extension is not None and sums.device.type == "cpu" and sums.dtype is torch.float64 and sums.is_contiguous():
        def fallback(out: torch.Tensor) -> None:
            _accumulate_with_torch(out, sums, shift, planes, weight_dim)

        kind = kernels.TAP_PLANES if planes else kernels.TAP_ROWS
        extension.Tap(kind, sums.shape[1], sums.data_ptr(), shift.data_ptr(), fallback, weight_dim)(output)
        return
    _accumulate_with_torch(output, sums, shift, planes, weight_dim)


@accumulate_outputs.register_fake
def _(output, sums, shift, planes, weight_dim) -> None:
    return None


def _is_cpu_float32_block(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype is torch.float32 and tensor.is_contiguous()


def _detached_state() -> "LayerAccumulator":
    state = LayerAccumulator.__new__(LayerAccumulator)
    state.detached = True
    return state


class LayerAccumulator:
    """The sums of one layer since the last snapshot, and the hooks (``forward_tap``, ``grad_tap``) that add to them.

    Args:
        layer: the layer to watch.
        fastpath: the compiled extension, or None for torch ops only.
    """

    def __init__(self, layer: WatchedLayer, fastpath=None) -> None:
        module = layer.module
        self.detached = False
        self.name = layer.name
        self.kind = layer.kind
        self.size = layer.size
        self.module_ref = weakref.ref(module)
        self.weight_dim = module.weight.dim()  # a conv's batched output has its weight's rank
        self.previous_weight: torch.Tensor | None = None
        self.initial_weight: torch.Tensor | None = None  # one row per neuron, as at the first snapshot (w_dist0)
        self.fast = None
        self._allocate(module.weight.device)
        self.forward_tap, self.grad_tap = self.add_output, self.add_gradient
        if fastpath is not None and module.weight.device.type == "cpu":
            self._make_taps(fastpath)

    def _allocate(self, device: torch.device) -> None:
        # MPS has no float64; everything else accumulates in float64.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(len(SUM_ROWS), self.size, dtype=dtype, device=device)
        self.shift = torch.zeros(self.size, dtype=torch.float32, device=device)

    def _make_taps(self, fastpath) -> None:
        # A tap writes at raw addresses: its fallback, a bound method of this accumulator, keeps the buffers alive for
        # as long as the tap lives, and moving the buffers deactivates the taps first (see _move_to).
        sums, shift = self.sums.data_ptr(), self.shift.data_ptr()
        outputs = kernels.TAP_PLANES if self.kind.outputs == "planes" else kernels.TAP_ROWS
        gradients = kernels.TAP_GRADIENT_COLUMNS if self.kind.weight_axis == 1 else kernels.TAP_GRADIENT_ROWS
        self.fast = fastpath
        self.forward_tap = fastpath.Tap(outputs, self.size, sums, shift, self.add_output, self.weight_dim)
        self.grad_tap = fastpath.Tap(gradients, self.size, sums, shift, self.add_gradient)

    def __reduce__(self):
        # A deep copy or a pickle of the watched model is a plain model: the hooks it carries record nothing.
        return (_detached_state, ())

    def _move_to(self, device: torch.device) -> None:
        """The model moved (``.to()`` after ``watch()``): the sums move with it, and the C taps hand over."""
        for tap in (self.forward_tap, self.grad_tap):
            if hasattr(tap, "deactivate"):
                tap.deactivate()
        self.fast = None
        self.sums, self.shift = self.sums.to(device), self.shift.to(device)
        if self.previous_weight is not None:
            self.previous_weight = self.previous_weight.to(device)
        if self.initial_weight is not None:
            self.initial_weight = self.initial_weight.to(device)

    # -- the torch path: any device or dtype, and the operator a compiled graph calls -------------------------------

    def add_output(self, output: torch.Tensor) -> None:
        """Add one call's outputs: every leading position of a Linear's output, every position of a conv's."""
        if self.detached:
            return
        if output.device != self.sums.device:
            self._move_to(output.device)
        _accumulate_with_torch(output.detach(), self.sums, self.shift, self.kind.outputs == "planes",
                               self.weight_dim)

    def add_output_compiled(self, output: torch.Tensor) -> None:
        """What a ``torch.compile`` graph calls: the same reduction as one opaque operator that declares the sums it
        mutates. Inlined as plain tensor ops, Inductor's CPU code generation (torch 2.13) can drop the store of a
        row-wise in-place add into a graph input, and the activations are then never counted."""
        if self.detached:
            return
        if output.device != self.sums.device:
            self._move_to(output.device)
        torch.ops.mlflow_flux.accumulate_outputs(output.detach(), self.sums, self.shift,
                                                 self.kind.outputs == "planes", self.weight_dim)

    def _squared_norms(self, grad: torch.Tensor) -> torch.Tensor:
        g = grad.detach().float()
        if self.kind.weight_axis == 1:
            return (g * g).sum(0)
        g = g.reshape(self.size, -1)
        return (g * g).sum(1)

    def add_gradient(self, grad: torch.Tensor) -> None:
        """Add one backward pass's gradient of the weight (a tensor hook: fires once per pass)."""
        if self.detached:
            return
        if grad.device != self.sums.device:
            self._move_to(grad.device)
        self.sums[GRAD_SUMSQ].add_(self._squared_norms(grad))
        self.sums[GRAD_PASSES].add_(1)

    def add_applied_gradient(self, grad: torch.Tensor, scale: torch.Tensor | None = None,
                             found_inf: torch.Tensor | None = None) -> None:
        """Add the gradient an optimizer step applies. ``scale`` and ``found_inf`` are what a GradScaler hands an
        optimizer that unscales itself (fused Adam): the gradient is still scaled, and a step with an inf adds
        nothing, decided on the device without a host sync."""
        if self.detached:
            return
        if scale is None and found_inf is None:
            self.grad_tap(grad)
            return
        if grad.device != self.sums.device:
            self._move_to(grad.device)
        squared = self._squared_norms(grad).double()
        if scale is not None:
            squared = squared / scale.double().square()
        applied = (found_inf == 0).double() if found_inf is not None else 1.0
        self.sums[GRAD_SUMSQ].add_(squared * applied)
        self.sums[GRAD_PASSES].add_(applied)

    # -- snapshots ----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.sums.zero_()

    def distance_from_start(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The torch path's ``w_dist0``: each neuron's distance ``||w_i - w_i(first snapshot)||`` in float64, from
        ``weight`` with one row per neuron. The first call keeps the weights (in ``dtype``, the module's: exact) as
        the start, distance 0. (The C path computes the same in its one pass over the weights.)"""
        rows = weight.reshape(self.size, -1)
        if self.initial_weight is None or self.initial_weight.shape != rows.shape:
            self.initial_weight = rows.to(dtype, copy=True)
        return torch.linalg.vector_norm(rows.double() - self.initial_weight.double(), dim=1)

    def fast_snapshot(self, module: nn.Module, out_address: int, stride: int) -> int | None:
        """Write this layer's statistics (float32, column-major: ``stride`` values from one statistic to the next)
        at ``out_address`` in C, and zero the sums.

        Returns:
            How many defined values are not finite, or ``None`` when the torch path must take the layer (no
            extension, another device, dtype or memory layout).
        """
        if self.fast is None:
            return None
        weight, bias = weight_and_bias(module, self.kind.weight_axis)
        # The C code reads and writes these by address: only CPU float32 contiguous memory may reach it.
        if not (_is_cpu_float32_block(weight) and (bias is None or _is_cpu_float32_block(bias))):
            return None
        has_previous = self.previous_weight is not None
        fan_in = weight.numel() // self.size
        if not has_previous:
            self.previous_weight = torch.empty(self.size, fan_in, dtype=torch.float32)
            self._row_means = torch.empty(self.size, dtype=torch.float64)  # the C code centres the next snapshot here
        initial = self.initial_weight
        has_initial = initial is not None and initial.shape == (self.size, fan_in) and _is_cpu_float32_block(initial)
        if not has_initial:  # the C code fills it with this snapshot's weights
            self.initial_weight = torch.empty(self.size, fan_in, dtype=torch.float32)
        return self.fast.layer_statistics(
            weight.data_ptr(), self.previous_weight.data_ptr(), self.initial_weight.data_ptr(), self.size, fan_in,
            has_previous, has_initial,
            self._row_means.data_ptr(), bias.data_ptr() if bias is not None else 0, self.sums.data_ptr(), self.shift.data_ptr(), out_address,
            stride, FAST_POSITIONS,
        )

    def stats(self, module: nn.Module) -> torch.Tensor:
        """The torch path's ``(N, len(STAT_COLUMNS) + 2)`` float32 statistics on the layer's device: the trace
        columns, then the sample count and gradient passes (which say where NaN means "not defined"). Zeroes the
        sums."""
        weight, bias = weight_and_bias(module, self.kind.weight_axis)
        weight = weight.reshape(self.size, -1).double()
        fan_in = weight.shape[1]
        w_mean = weight.sum(dim=1) / fan_in
        centred = weight - w_mean[:, None]
        w_var = (centred * centred).sum(dim=1) / fan_in
        nan = torch.full((self.size,), float("nan"), dtype=torch.float64, device=weight.device)
        if self.previous_weight is None or self.previous_weight.shape != weight.shape:
            w_step = nan
        else:
            moved = weight - self.previous_weight.double()
            w_step = (moved * moved).sum(dim=1).sqrt()
        self.previous_weight = weight.to(module.weight.dtype, copy=True)  # .double() of float64 is no copy
        w_dist0 = self.distance_from_start(weight, module.weight.dtype)
        sums = self.sums.double()
        if sums.device != weight.device:
            sums = sums.to(weight.device)
        n, passes = sums[COUNT], sums[GRAD_PASSES]
        centred_mean = sums[SHIFTED_SUM] / n
        act_var = (sums[SHIFTED_SUMSQ] / n - centred_mean * centred_mean).clamp_min(0)
        values = {
            "w_mean": w_mean, "w_std": w_var.sqrt(), "w_norm": (fan_in * (w_var + w_mean * w_mean)).sqrt(),
            "w_step": w_step, "w_dist0": w_dist0, "bias": bias.double() if bias is not None else nan,
            "w_rel_step": nan,  # the recorder derives it for every layer at once
            "act_mean": torch.where(n > 0, self.shift.double().to(n.device) + centred_mean, nan),
            "act_std": torch.where(n > 0, act_var.sqrt(), nan),
            "act_rate": torch.where(n > 0, sums[POSITIVE] / n, nan),
            "grad_norm": torch.where(passes > 0, (sums[GRAD_SUMSQ] / passes).sqrt(), nan),
        }
        block = torch.stack([*(values[c] for c in STAT_COLUMNS), n, passes], dim=1).float()
        self.reset()
        return block

    @staticmethod
    def defined_mask(block: np.ndarray, has_previous: bool, has_bias: bool) -> np.ndarray:
        """Which values of a host copy of :meth:`stats` are defined (NaN also stands for "not defined")."""
        n, passes = block[:, -2] > 0, block[:, -1] > 0
        always = np.ones_like(n)
        columns = {"w_step": always & has_previous, "bias": always & has_bias, "act_mean": n, "act_std": n,
                   "act_rate": n, "grad_norm": passes, "w_rel_step": ~always}  # derived: counted in its inputs
        return np.stack([columns.get(c, always) for c in STAT_COLUMNS], axis=1)
