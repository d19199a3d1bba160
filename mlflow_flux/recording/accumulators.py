"""Per-neuron sums of one watched layer between two snapshots, the reductions that add into them, and the
statistics they give.

State, on the layer's device and of O(neurons) size: ``sums``, float64 ``(len(SUMS), neurons)``, the rows declared
once in :mod:`mlflow_flux.statistics` (zeroed by one reset, merged across steps by adding and across ranks by
:mod:`.distributed`); ``shift``, float32 ``(neurons,)``, the mean of the window's first batch. Shifted sums keep the
variance exact whatever the outputs' common offset (E[x^2] - E[x]^2 over plain sums loses every digit of a spread of
1e-3 around 1e3). Every path takes the first batch as "the count is still zero", read from ``sums`` itself, so the C
taps, the eager torch path and a compiled graph always agree on it.

What ``w_step`` and ``w_dist0`` need, a copy of the weights at the previous and at the first snapshot, is the only
state of the size of the weights: it lives in host memory (pinned when the model is on an accelerator), and each
can be switched off (``watch(w_step=False, w_dist0=False)``). A snapshot works through a layer in chunks of rows, so
its temporaries stay under the chunk size set by the recorder (no whole-layer float64 copy).

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

from ..statistics import COMPUTED, STATISTICS, SUMS, sum_row
from . import fastpath as kernels
from .distributed import is_dtensor
from .layers import WatchedLayer

__all__ = ["LayerAccumulator", "weight_and_bias", "applied_by_tap", "DEFAULT_CHUNK_ELEMENTS"]

COUNT, SHIFTED_SUM, SHIFTED_SUMSQ, POSITIVE, RELU_SUM = (sum_row(n) for n in ("count", "shifted_sum", "shifted_sumsq",
                                                                              "positive", "relu_sum"))
GRAD_SUMSQ, GRAD_ABS, GRAD_ABS_PASS, GRAD_PASSES = (sum_row(n) for n in ("grad_sumsq", "grad_abs", "grad_abs_pass",
                                                                         "grad_passes"))
# Weights per chunk of a snapshot's torch path unless the recorder sets another (a quarter of the largest weight).
DEFAULT_CHUNK_ELEMENTS = 1 << 20


def weight_and_bias(module: nn.Module, weight_axis: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight with one row per neuron (a transposed view for a column-major layer), and the bias (read only:
    ``.data`` skips building a detached view, which costs more than the check it serves). Under FSDP2 the local
    shard: the rows of the neurons this rank holds."""
    weight = _local(module.weight.data)
    if weight_axis == 1:
        weight = weight.t()
    bias = getattr(module, "bias", None)
    return weight, _local(bias.data) if isinstance(bias, torch.Tensor) else None


def _in_c(tensors: tuple[torch.Tensor, ...], dim: int, index: torch.Tensor):
    """The C extension when it can write these tensors along ``dim`` at a CPU ``index``, else None: CPU float32
    contiguous blocks, whose whole rows (dim 0, any rank) or columns (dim 1 of matrices of one shape) it sets."""
    extension = kernels.fastpath()
    if extension is None or dim not in (0, 1) or index.device.type != "cpu":
        return None
    shape = tensors[0].shape
    if all(_is_cpu_float32_block(t) and (t.dim() >= 1 if dim == 0 else t.dim() == 2 and t.shape == shape)
           for t in tensors):
        return extension
    return None


def zero_along(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    """``tensor``'s entries at ``index`` along ``dim`` set to 0, in place. Along dim 0 (whole rows) by a memset per
    row in C for a CPU float32 block (``index_fill_`` wrote element by element: 1.8x the time on GPT-2's c_proj),
    else ``index_fill_``; along another dim by one multiplication with a 0/1 vector (``index_fill_`` there is a
    strided scatter, ~10x slower on a transformers Conv1D's columns at GPT-2 small's widths), or, for a few columns
    (under a quarter) of a CPU float32 matrix, by a scatter in C that touches only them. (An entry that is not
    finite stays so under the multiplication: a diverged run.)"""
    extension = _in_c((tensor,), dim, index)
    if dim == 0:
        if extension is not None:
            index = index.to(torch.int64).contiguous()
            extension.zero_rows((tensor.data_ptr(),), index.data_ptr(), len(index), tensor.shape[0],
                                tensor.numel() // max(tensor.shape[0], 1))
            return
        tensor.index_fill_(0, index, 0)
        return
    if extension is not None and 4 * len(index) < tensor.shape[1]:
        index = index.to(torch.int64).contiguous()
        extension.set_columns((tensor.data_ptr(),), 0, 0, index.data_ptr(), len(index), *tensor.shape)
        return
    keep = torch.ones(tensor.shape[dim], dtype=tensor.dtype, device=tensor.device)
    keep[index] = 0
    tensor.mul_(keep.view(*([1] * dim), -1, *([1] * (tensor.dim() - dim - 1))))


def write_along(tensor: torch.Tensor, dim: int, index: torch.Tensor, values: torch.Tensor) -> None:
    """``tensor.index_copy_(dim, index, values)``, faster along a dim other than 0: for a CPU float32 matrix in C
    (one sweep), else zeroed, then added (a vectorised ``index_add_``)."""
    if dim == 0:
        tensor.index_copy_(0, index, values)
        return
    extension = _in_c((tensor,), dim, index)
    if extension is not None and values.dtype is torch.float32 and values.device.type == "cpu":
        index, values = index.to(torch.int64).contiguous(), values.contiguous()
        if values.shape == (tensor.shape[0], len(index)):
            extension.set_columns((tensor.data_ptr(),), values.data_ptr(), 1, index.data_ptr(), len(index),
                                  *tensor.shape)
            return
    zero_along(tensor, dim, index)
    tensor.index_add_(dim, index, values)


def copy_columns(targets: tuple[torch.Tensor, ...], source: torch.Tensor, index: torch.Tensor) -> None:
    """``target[:, index] = source[:, index]`` for every target (matrices of ``source``'s shape), in place: in C,
    one sweep, for CPU float32 ones."""
    extension = _in_c((source, *targets), 1, index)
    if extension is not None:
        index = index.to(torch.int64).contiguous()
        extension.set_columns(tuple(t.data_ptr() for t in targets), source.data_ptr(), 2, index.data_ptr(),
                              len(index), *source.shape)
        return
    columns = source.index_select(1, index.to(source.device))
    for target in targets:
        write_along(target, 1, index.to(target.device), columns.to(target.dtype))


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2 shards on dim 0: whole neurons), any other tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None and is_dtensor(tensor) else tensor


def applied_by_tap(grad: torch.Tensor, scale: torch.Tensor | None, found_inf: torch.Tensor | None) -> bool:
    """Whether :meth:`LayerAccumulator.add_applied_gradient` reads ``grad`` with the layer's gradient tap (the C
    pass where there is one): an unscaled gradient that is not a DTensor (whose reductions may involve other
    ranks)."""
    return scale is None and found_inf is None and not is_dtensor(grad)


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
    sums[RELU_SUM].add_(x.clamp_min(0).sum(dims))


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


def _detached_state() -> LayerAccumulator:
    state = LayerAccumulator.__new__(LayerAccumulator)
    state.detached = True
    return state


def _host_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host memory for a copy of the weights: pinned when the weights live on an accelerator (fast, asynchronous
    copies), plain on CPU (where host memory is the weights' own)."""
    if device.type == "cuda":
        return torch.empty(shape, dtype=dtype, pin_memory=True)
    return torch.empty(shape, dtype=dtype)


class LayerAccumulator:
    """The sums of one layer since the last snapshot, and the hooks (``forward_tap``, ``grad_tap``) that add to them.

    Args:
        layer: the layer to watch.
        fastpath: the compiled extension, or None for torch ops only.
        keep_previous: keep the previous snapshot's weights (host memory, the size of the weights) for ``w_step``.
        keep_initial: keep the first snapshot's weights (host memory, the size of the weights) for ``w_dist0``.
        neurons: the neurons recorded (sorted indices into the layer); None: all. The sums cover every neuron (the
            hooks reduce whole outputs), a snapshot only these.
        chunk_elements: weights a snapshot's torch path reads per chunk.
    """

    def __init__(self, layer: WatchedLayer, fastpath=None, *, keep_previous: bool = True, keep_initial: bool = True,
                 neurons: np.ndarray | None = None, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> None:
        module = layer.module
        self.detached = False
        self.name = layer.name
        self.kind = layer.kind
        self.size = layer.size
        self.neurons = None if neurons is None else np.asarray(neurons, dtype=np.int64)
        self.recorded = self.size if self.neurons is None else len(self.neurons)
        self.module_ref = weakref.ref(module)
        self.weight_dim = module.weight.dim()  # a conv's batched output has its weight's rank
        self.keep_previous, self.keep_initial = keep_previous, keep_initial
        self.chunk_elements = max(1, int(chunk_elements))
        # The copies behind w_step and w_dist0: one row per recorded neuron, in host memory, made at the first
        # snapshot (when the weights' dtype and layout are known).
        self.previous_weight: torch.Tensor | None = None
        self.initial_weight: torch.Tensor | None = None
        self.copies_by_column = False  # the copies hold a column per unit (the C pass on a whole Conv1D)
        # Units a reset gave new weights in the initial copy only (their previous copy still holds the old ones):
        # at the next snapshot their step is their distance from those weights, w_dist0 (see took_new_weights).
        self.step_from_start = np.empty(0, dtype=np.int64)
        self._row_means: torch.Tensor | None = None  # the C path centres each row on its mean at the last snapshot
        self._snapshots = 0
        self._skip = False  # torch path: drop the next gradient (its forward was an evaluation pass with gradients)
        self.gradients_per_pass = True  # gradients from tensor hooks (False: as the optimizer applies them)
        # Under FSDP2, the neurons this rank holds (a dim-0 shard of the weight): its snapshots cover only them.
        self.shard: slice | None = None
        self.fast = None
        self._allocate(module.weight.device)
        self.forward_tap, self.grad_tap = self.add_output, self.add_gradient
        if fastpath is not None and module.weight.device.type == "cpu":
            self._make_taps(fastpath)

    def _allocate(self, device: torch.device) -> None:
        # MPS has no float64; everything else accumulates in float64.
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(len(SUMS), self.size, dtype=dtype, device=device)
        self.shift = torch.zeros(self.size, dtype=torch.float32, device=device)
        if self.neurons is not None:
            self._index = torch.as_tensor(self.neurons, device=device)

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

    @property
    def memory(self) -> dict[str, int]:
        """Bytes this layer's recording keeps for the whole run: on the model's device (the sums), and in host
        memory (the weight copies behind ``w_step`` and ``w_dist0``)."""
        host = sum(t.numel() * t.element_size() for t in (self.previous_weight, self.initial_weight) if t is not None)
        device = self.sums.numel() * self.sums.element_size() + self.shift.numel() * self.shift.element_size()
        return {"device": device, "host": host}

    def _move_to(self, device: torch.device) -> None:
        """The model moved (``.to()`` after ``watch()``): the sums move with it, and the C taps hand over."""
        for tap in (self.forward_tap, self.grad_tap):
            if hasattr(tap, "deactivate"):
                tap.deactivate()
        self.fast = None
        self.sums, self.shift = self.sums.to(device), self.shift.to(device)
        if self.neurons is not None:
            self._index = self._index.to(device)

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

    def skip_next_gradient(self, grad: torch.Tensor | None = None) -> None:
        """The next weight gradient belongs to a forward pass that did not count (an evaluation pass with gradients,
        e.g. a saliency map): drop it too. Registered on that pass's output, whose gradient autograd computes just
        before the weight's."""
        if self.fast is not None:
            self.grad_tap.skip = 1
        else:
            self._skip = True

    def _gradient_rows(self) -> slice:
        """Where a gradient's rows go in the sums: all neurons, or this rank's shard under FSDP2."""
        return self.shard if self.shard is not None else slice(None)

    def _squared_and_absolute(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per neuron, the squared L2 norm and the mean absolute value of its incoming weights' gradient."""
        g = _local(grad.detach()).float()
        if self.kind.weight_axis == 1:
            return (g * g).sum(0), g.abs().mean(0)
        g = g.reshape(g.shape[0], -1)
        return (g * g).sum(1), g.abs().mean(1)

    def add_gradient(self, grad: torch.Tensor) -> None:
        """Add one backward pass's gradient of the weight (a tensor hook: fires once per pass)."""
        if self.detached:
            return
        if self._skip:
            self._skip = False
            return
        if grad.device != self.sums.device:
            self._move_to(grad.device)
        squared, absolute = self._squared_and_absolute(grad)
        rows = self._gradient_rows()
        self.sums[GRAD_SUMSQ, rows].add_(squared)
        self.sums[GRAD_ABS, rows].add_(absolute)
        self.sums[GRAD_ABS_PASS, rows].copy_(absolute)
        self.sums[GRAD_PASSES, rows].add_(1)

    def add_applied_gradient(self, grad: torch.Tensor, scale: torch.Tensor | None = None,
                             found_inf: torch.Tensor | None = None) -> None:
        """Add the gradient an optimizer step applies. ``scale`` and ``found_inf`` are what a GradScaler hands an
        optimizer that unscales itself (fused Adam): the gradient is still scaled, and a step with an inf adds
        nothing, decided on the device without a host sync."""
        if self.detached:
            return
        if applied_by_tap(grad, scale, found_inf):
            self.grad_tap(grad)
            return
        if grad.device != self.sums.device:
            self._move_to(grad.device)
        squared, absolute = self._squared_and_absolute(grad)
        squared, absolute = squared.double(), absolute.double()
        if scale is not None:
            squared = squared / scale.double().square()
            absolute = absolute / scale.double()
        applied = (found_inf == 0).double() if found_inf is not None else 1.0
        rows = self._gradient_rows()
        self.sums[GRAD_SUMSQ, rows].add_(squared * applied)
        self.sums[GRAD_ABS, rows].add_(absolute * applied)
        last = self.sums[GRAD_ABS_PASS, rows]
        last.copy_(torch.where(torch.as_tensor(applied, device=last.device) > 0, absolute, last))
        self.sums[GRAD_PASSES, rows].add_(applied)

    # -- snapshots ----------------------------------------------------------------------------------------------

    def reset(self) -> None:
        self.sums.zero_()

    @torch.no_grad()
    def copies_as_stored(self) -> tuple[torch.Tensor, ...] | None:
        """The copies a reset writes as it writes the weight (:func:`~mlflow_flux.recording.resets.
        reset_incoming_in_c`), so that ``w_step`` and ``w_dist0`` count from the new weights, when the copies hold
        every unit in the layout of the stored weight, as CPU float32 blocks; None otherwise (a subset of units, a
        shard, a Conv1D's copies kept a row per unit). With both copies kept, only the initial one: after the reset
        both would hold the same weights, so the next snapshot reads the step from it (:meth:`took_new_weights`),
        and a large reset writes one matrix less. No copy before the first snapshot."""
        copies = tuple(copy for copy in (self.previous_weight, self.initial_weight) if copy is not None)
        if self.neurons is not None or self.shard is not None:
            return None
        if copies and self.kind.weight_axis == 1 and not self.copies_by_column:
            return None
        return copies[-1:] if all(_is_cpu_float32_block(copy) for copy in copies) else None

    def took_new_weights(self, units: np.ndarray) -> None:
        """``units`` took their new weights in :meth:`copies_as_stored`'s copies: where the previous copy was left
        out, their next ``w_step`` is read from ``w_dist0`` (:meth:`settle_steps`)."""
        if self.previous_weight is not None and self.initial_weight is not None:
            self.step_from_start = np.union1d(self.step_from_start, np.asarray(units, dtype=np.int64))

    def settle_steps(self, step: np.ndarray, dist0: np.ndarray) -> int:
        """At a snapshot, after this layer's statistics (``step`` and ``dist0``: its rows of ``w_step`` and
        ``w_dist0``): the units :meth:`took_new_weights` gives the step they would have had from a previous copy
        holding their new weights, which is their distance from the initial copy, to the bit (the same differences
        summed in the same order). The snapshot's pass has written their previous copy since.

        Returns:
            How many more of those steps are not finite than before (a diverged unit's old weights gave an
            infinite step: the snapshot's count of non-finite values takes the difference).
        """
        units = self.step_from_start
        if not len(units):
            return 0
        before = int((~np.isfinite(step[units])).sum())
        step[units] = dist0[units]
        self.step_from_start = np.empty(0, dtype=np.int64)
        return int((~np.isfinite(step[units])).sum()) - before

    def restart(self, module: nn.Module, units: np.ndarray) -> None:
        """Units were given new weights: the copies behind ``w_step`` and ``w_dist0`` take them, so both are
        measured from the reset on (rows of recorded units; under FSDP2 of this rank's shard)."""
        if self.previous_weight is None and self.initial_weight is None:
            return
        weight, _ = weight_and_bias(module, self.kind.weight_axis)
        rows = weight.reshape(weight.shape[0], -1)
        if self.neurons is not None:  # the copies hold the recorded units only, in their order
            positions = np.searchsorted(self.neurons, units)
            keep = (positions < len(self.neurons)) & (self.neurons[np.minimum(positions, len(self.neurons) - 1)]
                                                      == units)
            units, positions = units[keep], positions[keep]
        elif self.shard is not None:
            keep = (units >= self.shard.start) & (units < self.shard.stop)
            units = units[keep]
            positions = units - self.shard.start
        else:
            positions = units
        if not len(units):
            return
        local = torch.as_tensor(units if self.shard is None else positions, device=rows.device)
        copies = tuple(copy for copy in (self.previous_weight, self.initial_weight) if copy is not None)
        stored = _local(module.weight.data)
        if self.copies_by_column:  # the C pass keeps a whole Conv1D's copies in its own (in, out) layout
            copy_columns(copies, stored, local)
            return
        if self.kind.weight_axis == 1:  # a Conv1D's columns: gathered along the stored weight's own dim 1
            new = stored.index_select(1, local).t().detach().cpu()
        else:
            new = rows.index_select(0, local).detach().cpu()
        index = torch.as_tensor(positions)
        for copy in copies:
            write_along(copy, 0, index, new.to(copy.dtype).reshape(len(index), -1))

    def _recorded_rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The recorded neurons' rows of ``weight`` (one row per neuron): a view of all, or a copy of the subset."""
        rows = weight.reshape(weight.shape[0], -1)
        return rows if self.neurons is None else rows.index_select(0, self._index.to(rows.device))

    def _recorded_sums(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shard is not None:
            return self.sums[:, self.shard], self.shift[self.shard]
        if self.neurons is None:
            return self.sums, self.shift
        index = self._index.to(self.sums.device)
        return self.sums.index_select(1, index).contiguous(), self.shift.index_select(0, index).contiguous()

    def fast_snapshot(self, module: nn.Module, out_address: int, stride: int) -> int | None:
        """Write this layer's statistics (float32, column-major: ``stride`` values from one statistic to the next,
        in :data:`~mlflow_flux.statistics.COMPUTED` order) at ``out_address`` in C, and zero the sums.

        Returns:
            How many defined values are not finite, or ``None`` when the torch path must take the layer (no
            extension, another device, dtype or memory layout).
        """
        if self.fast is None or self.shard is not None:
            return None
        weight, bias = weight_and_bias(module, self.kind.weight_axis)
        # A column per neuron (transformers' Conv1D) kept whole: the C pass walks the weight in its own layout. A
        # subset of its neurons is a (small) row-major copy, as for any layer.
        columns = self.kind.weight_axis == 1 and self.neurons is None
        rows = weight.t() if columns else self._recorded_rows(weight)
        if self.neurons is not None and bias is not None:
            bias = bias.index_select(0, self._index)
        # The C code reads and writes these by address: only CPU float32 contiguous memory may reach it.
        if not (_is_cpu_float32_block(rows) and (bias is None or _is_cpu_float32_block(bias))):
            return None
        fan_in = rows.shape[0] if columns else rows.shape[1]
        layout = (fan_in, self.recorded) if columns else (self.recorded, fan_in)
        self.copies_by_column = columns
        has_previous = self.previous_weight is not None
        if self.keep_previous and not has_previous:
            self.previous_weight = torch.empty(layout, dtype=torch.float32)
        has_initial = self.initial_weight is not None
        if self.keep_initial and not has_initial:  # the C code fills it with this snapshot's weights
            self.initial_weight = torch.empty(layout, dtype=torch.float32)
        if self._row_means is None:
            self._row_means = torch.empty(self.recorded, dtype=torch.float64)
        sums, shift = self._recorded_sums()
        counted = self.fast.layer_statistics(
            rows.data_ptr(), self.previous_weight.data_ptr() if self.keep_previous else 0,
            self.initial_weight.data_ptr() if self.keep_initial else 0, self.recorded, fan_in,
            self._snapshots > 0, has_previous, has_initial, self._row_means.data_ptr(),
            bias.data_ptr() if bias is not None else 0, sums.data_ptr(), shift.data_ptr(), out_address, stride,
            columns,
        )
        self._snapshots += 1
        if sums is not self.sums:
            self.reset()
        return counted

    def _weight_statistics(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``w_*`` of every recorded neuron, in float64, chunk by chunk: the torch path's twin of the C pass."""
        count, fan_in = rows.shape
        device = rows.device
        if self.keep_previous and self.previous_weight is None:
            self.previous_weight = _host_buffer((count, fan_in), rows.dtype, device)
            has_previous = False
        else:
            has_previous = self.previous_weight is not None
        if self.keep_initial and self.initial_weight is None:
            self.initial_weight = _host_buffer((count, fan_in), rows.dtype, device)
            has_initial = False
        else:
            has_initial = self.initial_weight is not None
        nan = torch.full((count,), float("nan"), dtype=torch.float64, device=device)
        out = {"w_mean": torch.empty(count, dtype=torch.float64, device=device), "w_std": nan.clone(),
               "w_norm": nan.clone(), "w_step": nan.clone(), "w_dist0": nan.clone()}
        step = max(1, self.chunk_elements // max(1, fan_in))
        for start in range(0, count, step):
            part = slice(start, min(count, start + step))
            # A column per neuron (Conv1D): one copy of the chunk in row order, so every pass after it reads memory
            # in order (on the strided view each costs three times as much); half-precision weights in float32.
            w = rows[part].contiguous()
            if w.dtype not in (torch.float32, torch.float64):
                w = w.float()
            # Centred on a first estimate of each row's mean, the float32 sums lose nothing to cancellation; torch's
            # CPU and CUDA reductions sum in blocks (cascades, trees), so each is float32-accurate: the statistics
            # equal float64 arithmetic on the same weights to float32 rounding, without a float64 copy of the chunk.
            centre = w.sum(dim=1) / fan_in
            centred = w - centre[:, None]
            shifted = centred.sum(dim=1).double() / fan_in
            squares = torch.linalg.vector_norm(centred, dim=1).double().square() / fan_in
            del centred
            mean = centre.double() + shifted
            variance = (squares - shifted * shifted).clamp_min(0)
            out["w_mean"][part] = mean
            out["w_std"][part] = variance.sqrt()
            out["w_norm"][part] = (fan_in * (variance + mean * mean)).sqrt()
            if self.previous_weight is not None:
                before = self.previous_weight[part]
                if has_previous:
                    out["w_step"][part] = torch.linalg.vector_norm(w - before.to(device, non_blocking=True),
                                                                   dim=1).double()
                before.copy_(w)
            if self.initial_weight is not None:
                start_weights = self.initial_weight[part]
                if not has_initial:
                    start_weights.copy_(w)
                out["w_dist0"][part] = torch.linalg.vector_norm(w - start_weights.to(device, non_blocking=True),
                                                                dim=1).double()
        return out

    def stats(self, module: nn.Module) -> torch.Tensor:
        """The torch path's ``(recorded neurons, len(COMPUTED) + 2)`` float32 statistics on the layer's device: the
        computed trace columns, then the sample count and gradient passes (which say where NaN means "not
        defined"). Zeroes the sums."""
        weight, bias = weight_and_bias(module, self.kind.weight_axis)
        rows = self._recorded_rows(weight)
        values = self._weight_statistics(rows)
        self._snapshots += 1
        device = weight.device
        sums, shift = self._recorded_sums()
        sums = sums.double()
        if sums.device != device:
            sums, shift = sums.to(device), shift.to(device)
        if bias is not None and self.neurons is not None:
            bias = bias.index_select(0, self._index.to(bias.device))
        nan = torch.full((len(rows),), float("nan"), dtype=torch.float64, device=device)
        n, passes = sums[COUNT], sums[GRAD_PASSES]
        centred_mean = sums[SHIFTED_SUM] / n
        act_var = (sums[SHIFTED_SUMSQ] / n - centred_mean * centred_mean).clamp_min(0)
        values.update({
            "bias": bias.double() if bias is not None else nan,
            "act_mean": torch.where(n > 0, shift.double() + centred_mean, nan),
            "act_std": torch.where(n > 0, act_var.sqrt(), nan),
            "act_rate": torch.where(n > 0, sums[POSITIVE] / n, nan),
            "act_relu_mean": torch.where(n > 0, sums[RELU_SUM] / n, nan),
            "grad_norm": torch.where(passes > 0, (sums[GRAD_SUMSQ] / passes).sqrt(), nan),
            "grad_abs_mean": torch.where(passes > 0, sums[GRAD_ABS] / passes, nan),
            "grad_abs_last": torch.where(passes > 0, sums[GRAD_ABS_PASS], nan),
        })
        block = torch.stack([*(values[c] for c in COMPUTED), n, passes], dim=1).float()
        self.reset()
        return block

    def defined_mask(self, block: np.ndarray, has_bias: bool) -> np.ndarray:
        """Which values of a host copy of :meth:`stats` are defined (NaN also stands for "not defined")."""
        n, passes = block[:, -2] > 0, block[:, -1] > 0
        always = np.ones_like(n)
        when = {"always": always, "previous": always & (self.keep_previous and self._snapshots > 1),
                "initial": always & self.keep_initial, "bias": always & has_bias, "samples": n, "gradients": passes}
        return np.stack([when[s.defined] for s in STATISTICS if s.name in COMPUTED], axis=1)
