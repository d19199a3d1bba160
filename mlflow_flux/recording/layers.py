"""Which layers of a model are watched, and what a neuron of each is.

A neuron is an output unit of a ``Linear`` layer or an output channel of a ``Conv1d/2d/3d`` layer.
"""

from __future__ import annotations

import fnmatch
from typing import Sequence, Union

import torch
from torch import nn

from ..errors import FluxError

__all__ = ["DEFAULT_LAYER_TYPES", "LayerSpec", "select_layers"]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

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
