"""Resetting units of a watched layer, exactly and in place: new incoming weights and bias, the next layer's columns
zeroed (its bias compensated first where a policy asks), the optimizer's moments of those entries zeroed. As in
dopamine's NeuronRecycler, every layer's incoming weights are reset first and every outgoing column zeroed after:
a weight that is both (the incoming weight of one reset unit from another) ends at 0. In place
(``index_put_`` under ``no_grad``): the parameters keep their identity, so an optimizer, DDP and a ``torch.compile``
graph go on with them (no recompilation). Under FSDP2 each rank changes the rows of its own shard.

The random weights come from one stream per layer and reset (:func:`reset_draws`: numpy's PCG64 seeded by the run's
seed, the reset's number and the layer's place), drawn for every reset unit of the layer in ascending order, on every
rank alike, whatever rows a rank holds; so every rank makes the same reset, and a layer's draws do not depend on the
other layers (they may be reset side by side). numpy rather than a ``torch.Generator``: its raw bits, two draws to
64, come ~3x faster on a CPU (at GPT-2 small torch's draws were a third of a large reset), without holding the GIL.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..errors import FluxError
from . import fastpath as kernels
from .accumulators import _is_cpu_float32_block, _local, write_along, zero_along
from .distributed import is_dtensor

__all__ = ["INITIALISERS", "SUPPORTED_OPTIMIZERS", "check_optimizer", "reset_draws", "new_incoming", "reset_incoming",
           "reset_incoming_in_c", "zero_outgoing", "shrink_and_perturb", "incoming_rows", "outgoing_columns_view"]

INITIALISERS = ("xavier_uniform", "kaiming_uniform", "cbp_kaiming", "default")
SUPPORTED_OPTIMIZERS = ("Adam", "AdamW", "SGD")
# Which state tensors of an optimizer hold per-entry moments (zeroed for a reset entry); a step count is kept.
_MOMENTS = {"Adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), "AdamW": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
            "SGD": ("momentum_buffer",)}

OptimizerReset = Callable[[torch.optim.Optimizer, torch.Tensor, tuple], None]


def check_optimizer(optimizer: torch.optim.Optimizer | None, custom: OptimizerReset | None) -> None:
    """Refuse an optimizer whose state a reset cannot set right, in one line, unless the user resets it."""
    if optimizer is None:
        raise FluxError("recycle needs watch(model, optimizer=optimizer): a reset also zeroes the optimizer's moments "
                        "of the entries it changes")
    name = type(optimizer).__name__
    if custom is None and name not in SUPPORTED_OPTIMIZERS:
        raise FluxError(f"recycle resets the moments of {', '.join(SUPPORTED_OPTIMIZERS)}; for {name} pass "
                        "watch(..., outputs=[Recycling(policy, optimizer_reset=fn)]), fn(optimizer, parameter, "
                        "index) zeroing its state at index (docs/recycling.md)")


def reset_draws(seed: int, reset: int, layer: int) -> np.random.BitGenerator:
    """The random bits of one layer's draws at one reset: a PCG64 stream of its own, seeded by the run's ``seed``,
    the reset's number (0 for the first reset decision) and the layer's place among the watched layers."""
    return np.random.PCG64([seed, reset, layer])


def _raw_bits(count: int, bits: np.random.BitGenerator) -> torch.Tensor:
    """``count`` draws of 32 random bits as an int32 CPU tensor (two draws per 64 bits; an odd count leaves 32)."""
    return torch.from_numpy(bits.random_raw((count + 1) // 2).view(np.int32)[:count])


def _uniform(shape: tuple[int, ...], bound: float, bits: np.random.BitGenerator) -> torch.Tensor:
    """U(-bound, bound) as a float32 CPU tensor: each value from 32 random bits, their top 24 as a signed integer k
    in [-2^23, 2^23), times bound / 2^23 (exact in float32; the resolution of torch's own float32 draws). Raw bits
    and one conversion rather than numpy's ``random(dtype=float32)``: 1.4x faster. (The C extension's
    ``reset_units`` draws the same bits and converts them to the same floats.)"""
    raw = _raw_bits(math.prod(shape), bits)
    # In place: ``raw >> 8`` as an operator took 7x longer than this whole function at GPT-2's widths.
    return raw.bitwise_right_shift_(8).float().mul_(bound / 2**23).reshape(shape)


def _fans(weight: torch.Tensor, weight_axis: int) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight as torch's initialisers count them (a Conv1D's stored (in, out) transposed)."""
    shape = weight.shape if weight_axis == 0 else weight.t().shape
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def new_incoming(module: nn.Module, weight_axis: int, units: int, init: str,
                 generator: np.random.BitGenerator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``units`` new rows of incoming weights (one row per unit, float32 on the CPU; for a Conv1D a transposed view:
    drawn in its stored (in, out) layout, so that writing them back reads contiguous memory) and their new bias
    (None: the layer has none), drawn from ``generator``.

    ``xavier_uniform``: U(-b, b), b = sqrt(6 / (fan_in + fan_out)), bias 0 (dopamine's ReDo). ``cbp_kaiming``:
    b = gain(relu) sqrt(3 / fan_in), bias 0 (continual backprop's ``init="kaiming"``). ``kaiming_uniform``: torch's
    ``kaiming_uniform_`` for ReLU (b = sqrt(6 / fan_in)), bias 0. ``default``: the layer's own ``reset_parameters``
    draws: ``kaiming_uniform(a=sqrt(5))``, b = 1 / sqrt(fan_in), its bias from the same U(-b, b).
    """
    weight = module.weight  # the whole layer's shape (a DTensor's global one): every rank draws as one model
    row_shape = (units, *(weight.shape[1:] if weight_axis == 0 else weight.t().shape[1:]))
    bound = _bound(module, weight_axis, init)

    def draw(bound: float) -> torch.Tensor:
        return _uniform(row_shape, bound, generator) if weight_axis == 0 else \
            _uniform(row_shape[::-1], bound, generator).t()

    return draw(bound), _new_bias(module, units, init, bound, generator)


def _bound(module: nn.Module, weight_axis: int, init: str) -> float:
    """The bound b of the initialiser's U(-b, b) for the layer's incoming weights (:func:`new_incoming`)."""
    fan_in, fan_out = _fans(module.weight, weight_axis)
    if init == "default":  # what nn.Linear / nn.ConvNd.reset_parameters draw: kaiming_uniform(a=sqrt(5)), its bias
        return 1 / math.sqrt(fan_in) if fan_in else 0.0
    if init == "xavier_uniform":
        return math.sqrt(6.0 / (fan_in + fan_out))
    if init == "cbp_kaiming":
        return nn.init.calculate_gain("relu") * math.sqrt(3.0 / fan_in)
    if init == "kaiming_uniform":
        return math.sqrt(6.0 / fan_in)
    raise FluxError(f"unknown initialiser {init!r}; expected one of {', '.join(INITIALISERS)}")


def _new_bias(module: nn.Module, units: int, init: str, bound: float,
              generator: np.random.BitGenerator) -> torch.Tensor | None:
    """The reset units' new bias, drawn after their weights (``default``: the same U(-b, b); else 0); None without
    a bias."""
    if not isinstance(getattr(module, "bias", None), torch.Tensor):
        return None
    return _uniform((units,), bound, generator) if init == "default" else torch.zeros(units)


def incoming_rows(weight: torch.Tensor, weight_axis: int) -> torch.Tensor:
    """The weight viewed with one row per unit (a Conv1D's columns as rows): writing into it writes the weight."""
    return weight if weight_axis == 0 else weight.t()


def outgoing_columns_view(next_weight: torch.Tensor, next_axis: int) -> torch.Tensor:
    """The next layer's weight viewed as (its units, ..., inputs): a reset unit is an input index (dim 1)."""
    return next_weight if next_axis == 0 else next_weight.t()


def _local_rows(global_rows: torch.Tensor, shard: slice | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the reset units (global indices), those this rank holds, as local indices, and their positions."""
    if shard is None:
        return global_rows, torch.arange(len(global_rows))
    held = (global_rows >= shard.start) & (global_rows < shard.stop)
    return global_rows[held] - shard.start, torch.nonzero(held)[:, 0]


def _zero_moments(optimizer: torch.optim.Optimizer | None, parameter: torch.Tensor, dim: int, index: torch.Tensor,
                  custom: OptimizerReset | None) -> None:
    """Zero the optimizer's per-entry moments of ``parameter`` at ``index`` along ``dim`` (a step count is kept)."""
    if optimizer is None:
        return
    if custom is not None:
        custom(optimizer, parameter, (index,) if dim == 0 else (slice(None), index))
        return
    for value in _moments(optimizer, parameter):
        zero_along(_local(value), dim, index.to(value.device))


def _moments(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> list[torch.Tensor]:
    """The optimizer's per-entry moments of ``parameter`` (none before its first step; its step count is not one)."""
    state = optimizer.state.get(parameter) or {}
    return [state[name] for name in _MOMENTS.get(type(optimizer).__name__, ())
            if isinstance(state.get(name), torch.Tensor) and state[name].shape == parameter.shape]


@torch.no_grad()
def reset_incoming(module: nn.Module, weight_axis: int, units: torch.Tensor, incoming: torch.Tensor,
                   bias: torch.Tensor | None, optimizer: torch.optim.Optimizer | None, *, reset_bias_moments: bool,
                   shard: slice | None = None, optimizer_reset: OptimizerReset | None = None) -> None:
    """Give ``units`` (global indices, ascending) of ``module`` new incoming weights ``incoming`` (rows in the same
    order) and bias ``bias``, in place, and zero the optimizer's moments of those weights (and of the bias with
    ``reset_bias_moments``: dopamine leaves them, continual backprop does not). ``shard``: under FSDP2, the rows this
    rank holds."""
    local, positions = _local_rows(units, shard)
    if not len(local):
        return
    weight = _local(module.weight.data)
    index = local.to(weight.device)
    new = (incoming if shard is None else incoming[positions]).to(device=weight.device, dtype=weight.dtype)
    write_along(weight, weight_axis, index, new if weight_axis == 0 else new.t())
    _zero_moments(optimizer, module.weight, weight_axis, index, optimizer_reset)
    _reset_bias(module, index, None if bias is None else bias[positions], optimizer, reset_bias_moments,
                optimizer_reset)


def _reset_bias(module: nn.Module, index: torch.Tensor, bias: torch.Tensor | None,
                optimizer: torch.optim.Optimizer | None, reset_bias_moments: bool,
                optimizer_reset: OptimizerReset | None) -> None:
    """The reset units' (local ``index``) new bias, and its moments zeroed with ``reset_bias_moments``."""
    own_bias = getattr(module, "bias", None)
    if isinstance(own_bias, torch.Tensor) and bias is not None:
        local_bias = _local(own_bias.data)
        local_bias.index_copy_(0, index, bias.to(device=local_bias.device, dtype=local_bias.dtype))
        if reset_bias_moments:
            _zero_moments(optimizer, own_bias, 0, index, optimizer_reset)


@torch.no_grad()
def reset_incoming_in_c(module: nn.Module, weight_axis: int, units: torch.Tensor, init: str,
                        generator: np.random.BitGenerator, optimizer: torch.optim.Optimizer | None,
                        copies: tuple[torch.Tensor, ...], *, reset_bias_moments: bool) -> bool:
    """:func:`new_incoming` and :func:`reset_incoming` at once, with the recorder's ``copies`` of the weight (blocks
    of the stored weight's layout) taking the new weights too: one C sweep over the layer, where three to five passes
    (the draws' conversion, the weight, each moment, the copies) each touched every cache line of a transformers
    Conv1D whose units are columns. The sweep steps ``generator`` (numpy's PCG64) itself, so the draws are made
    while it waits on memory and never fill a buffer; the same draws give the same floats as the two calls, and
    ``generator`` ends where they leave it.

    Returns:
        False, having drawn and changed nothing, where it cannot: no extension (or one built without 128-bit
        integers), a generator other than PCG64, a big-endian host, a weight, moment or copy that is not a whole
        CPU float32 contiguous block (a DTensor's shard, another device or dtype), an optimizer other than Adam,
        AdamW or SGD.
    """
    extension = kernels.fastpath()
    weight = module.weight
    if extension is None or not hasattr(extension, "reset_units") or not isinstance(generator, np.random.PCG64) \
            or sys.byteorder != "little" or is_dtensor(weight) or not _is_cpu_float32_block(weight.data) \
            or weight.dim() < 2:  # (the sweep splits each 64-bit draw as _raw_bits' int32 view does on little-endian)
        return False
    by_column = weight_axis == 1
    if by_column and weight.dim() != 2:
        return False
    rows, cols = weight.shape[0], weight.numel() // weight.shape[0]
    if optimizer is not None and type(optimizer).__name__ not in _MOMENTS:
        return False
    moments = [] if optimizer is None else _moments(optimizer, weight)
    if not all(_is_cpu_float32_block(t) and t.numel() == weight.numel() and t.shape[0] == rows
               for t in (*moments, *copies)):
        return False
    bound = _bound(module, weight_axis, init)
    index = units.to(torch.int64).contiguous()
    draws = len(index) * (rows if by_column else cols)  # in new_incoming's order, from the generator's state
    state = generator.state["state"]
    extension.reset_units(tuple(t.data_ptr() for t in (weight.data, *copies)), tuple(t.data_ptr() for t in moments),
                          _halves(state["state"]), _halves(state["inc"]), bound / 2**23, index.data_ptr(),
                          len(index), rows, cols, by_column)
    generator.advance((draws + 1) // 2)  # past what the sweep drew, as _raw_bits leaves it: the bias draws next
    _reset_bias(module, index, _new_bias(module, len(index), init, bound, generator), optimizer, reset_bias_moments,
                None)
    return True


def _halves(value: int) -> tuple[int, int]:
    """A 128-bit integer as its (high, low) 64-bit halves."""
    return value >> 64, value & (2**64 - 1)


@torch.no_grad()
def zero_outgoing(units: torch.Tensor, layer_units: int, following: nn.Module, following_axis: int,
                  optimizer: torch.optim.Optimizer | None, *, compensation: torch.Tensor | None = None,
                  shard: slice | None = None, optimizer_reset: OptimizerReset | None = None) -> None:
    """Zero the following layer's weights that read ``units`` (of a layer of ``layer_units`` units), in place, after
    adding ``compensation`` (one value per following unit) to its bias, and zero their optimizer moments. ``shard``:
    under FSDP2, the following layer's rows (its own units) this rank holds; it reads every input."""
    weight = _local(following.weight.data)
    device = weight.device
    if compensation is not None and isinstance(getattr(following, "bias", None), torch.Tensor):
        added = compensation if shard is None else compensation[shard]
        _local(following.bias.data).add_(added.to(device=device, dtype=following.bias.dtype))
    inputs = 1 if following_axis == 0 else 0  # the dimension of the following layer's inputs
    per_unit = weight.shape[inputs] // layer_units  # a flattened conv's positions, per channel
    cols = (units[:, None] * per_unit + torch.arange(per_unit)[None, :]).reshape(-1).to(device)
    zero_along(weight, inputs, cols)
    _zero_moments(optimizer, following.weight, inputs, cols, optimizer_reset)


@torch.no_grad()
def shrink_and_perturb(module: nn.Module, weight_axis: int, shrink: float, noise: float,
                       generator: np.random.BitGenerator, shard: slice | None = None) -> None:
    """``p <- shrink p + noise e`` for the layer's weight and bias, ``e`` a fresh draw of the layer's default
    initialisation (:func:`new_incoming`'s ``default``), drawn for the whole layer so that every rank draws alike;
    under FSDP2 a rank keeps the rows it holds."""
    units = module.weight.shape[weight_axis]  # a DTensor's shape is the whole layer's
    rows, bias_rows = new_incoming(module, weight_axis, units, "default", generator)
    weight = incoming_rows(_local(module.weight.data), weight_axis)
    fresh = rows if shard is None else rows[shard]
    weight.mul_(shrink).add_(noise * fresh.to(device=weight.device, dtype=weight.dtype))
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) and bias_rows is not None:
        local = _local(bias.data)
        part = bias_rows if shard is None else bias_rows[shard]
        local.mul_(shrink).add_(noise * part.to(device=local.device, dtype=local.dtype))
