"""Which layers of a model are watched, and what a neuron of each is.

A neuron is an output unit of a ``Linear`` layer (a row of its weight), an output channel of a ``Conv1d/2d/3d``
layer, or an output unit of ``transformers``' ``Conv1D`` (GPT-2's linear maps, whose weight is stored as (in, out):
a column). Every leading position of a Linear's input is a sample (a token counts as one); every position of a
conv's output is a sample of its channel. Any other kind of module is refused when it is named, with one error,
before a hook is attached: never an error inside the user's forward or backward pass. By default
``nn.MultiheadAttention``'s ``out_proj`` is left out: its weight is used without calling its forward.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..errors import FluxError

__all__ = ["LayerKind", "WatchedLayer", "LayerSpec", "SUPPORTED", "layer_kind", "select_layers"]

LayerSpec = str | type
SUPPORTED = "Linear, Conv1d, Conv2d, Conv3d and transformers' Conv1D"


@dataclass(frozen=True)
class LayerKind:
    """How the recorder reads one kind of layer.

    Attributes:
        name: the kind, as errors and docs name it.
        outputs: ``"rows"`` (neurons on the last axis: Linear, Conv1D) or ``"planes"`` (channels on axis 1: conv).
        weight_axis: the weight's neuron axis: 0 (a row per neuron) or 1 (a column per neuron: Conv1D).
    """

    name: str
    outputs: str
    weight_axis: int


LINEAR = LayerKind("Linear", "rows", 0)
CONV = LayerKind("Conv", "planes", 0)
TRANSFORMERS_CONV1D = LayerKind("transformers Conv1D", "rows", 1)


def layer_kind(module: nn.Module) -> LayerKind | None:
    """The kind of a module the recorder supports, or None."""
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return CONV
    cls = type(module)
    # Recognised by name so that the core never imports transformers (an optional extra).
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.") and module.weight.dim() == 2:
        return TRANSFORMERS_CONV1D
    return None


@dataclass(frozen=True)
class WatchedLayer:
    """A layer to watch: its qualified name, the module, its kind, and how many neurons it has."""

    name: str
    module: nn.Module
    kind: LayerKind

    @property
    def size(self) -> int:
        return self.module.weight.shape[self.kind.weight_axis]


def _supported_type(cls: type) -> bool:
    if issubclass(cls, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return True
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.")


def _refusal(name: str, module: nn.Module) -> FluxError:
    return FluxError(f"layer {name!r} is a {type(module).__name__}, which mlflow-flux does not record: it records "
                     f"{SUPPORTED} layers, where a neuron is an output unit or channel")


def select_layers(model: nn.Module, layers: Sequence[LayerSpec] | None = None) -> list[WatchedLayer]:
    """The layers to watch, in model order.

    Args:
        model: the model.
        layers: names, glob patterns (``"encoder.*"``) or module types; ``None`` watches every supported layer.

    Raises:
        FluxError: nothing to watch, a name or pattern that matches nothing, or a layer (or type) named that the
            recorder does not support (``nn.Embedding``, ``nn.LayerNorm``, a custom module).
    """
    modules = [(name or type(module).__name__, module) for name, module in model.named_modules()]
    supported = [(name, module) for name, module in modules if layer_kind(module) is not None]
    if layers is None:
        # nn.MultiheadAttention uses its out_proj's weight in a functional call, never through out_proj.forward: by
        # default it would be a layer with gradients and no activity. Named explicitly, it is watched.
        skipped = {id(m.out_proj) for _, m in modules if isinstance(m, nn.MultiheadAttention)}
        supported = [(name, module) for name, module in supported if id(module) not in skipped]
        if not supported:
            raise FluxError(f"{type(model).__name__} has no layer to watch: mlflow-flux records {SUPPORTED} layers; "
                            "pass layers=[...] to name them")
        return [WatchedLayer(name, module, layer_kind(module)) for name, module in supported]
    chosen: set[str] = set()
    for spec in layers:
        if isinstance(spec, type):
            if not _supported_type(spec):
                raise FluxError(f"layers=[{spec.__name__}]: mlflow-flux does not record {spec.__name__} layers; it "
                                f"records {SUPPORTED} layers, where a neuron is an output unit or channel")
            hits = [(n, m) for n, m in modules if isinstance(m, spec)]
        else:
            hits = [(n, m) for n, m in modules if n == spec or fnmatch.fnmatchcase(n, spec)]
        # A pattern keeps the supported layers it matches (encoder.* also matches encoder.act1); a name that
        # matches only modules the recorder cannot read is refused.
        refused = [(n, m) for n, m in hits if layer_kind(m) is None]
        if refused and len(refused) == len(hits):
            raise _refusal(*refused[0])
        hits = [(n, m) for n, m in hits if layer_kind(m) is not None]
        if not hits:
            names = ", ".join(n for n, _ in supported) or "none"
            label = spec.__name__ if isinstance(spec, type) else repr(spec)
            raise FluxError(f"layer {label} matches no watchable layer of the model; watchable: {names}")
        chosen.update(n for n, _ in hits)
    return [WatchedLayer(name, module, layer_kind(module)) for name, module in supported if name in chosen]
