"""Where a watched layer sits in a chain of layers: the activation that follows it and the next watched layer, which
the redundant-unit readings (a unit's fan-out is its column of the next layer) and neuron resets (a reset unit's
outgoing weights are the next layer's column) need.

Found where unambiguous: the model's modules, in the order they were registered, hold a watched layer, an activation
module (``nn.ReLU``, ``nn.Tanh``, ...; dropout and identity modules between are skipped) and the next watched layer,
as an ``nn.Sequential`` does, **and** the first training forward pass shows the data taking that path (the activation
module is called on the layer's output, the next layer on the activation's output; object identity, eager mode
only). A link the pass contradicts, or that only ``torch.compile``'s graph saw, is dropped with a warning. A user
declares the others (``watch(model, activations={...}, next_layers={...})``); a declared link is trusted as given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import FluxError
from .layers import WatchedLayer

__all__ = ["Link", "ACTIVATIONS", "find_links", "LinkProbe", "outgoing_columns"]

_log = logging.getLogger(__name__)

ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.SiLU: "silu",
               nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Softplus: "softplus"}
ACTIVATION_NAMES = tuple(dict.fromkeys(ACTIVATIONS.values()))
_SKIPPED = (nn.Dropout, nn.Identity)


@dataclass
class Link:
    """A watched layer's place in a chain: the activation after it and the next watched layer (None: not known).

    ``verified``: True once the first training pass showed it (or the user declared it), None until then.
    """

    layer: str
    activation: str | None = None
    next: str | None = None
    module: nn.Module | None = None  # the activation module, watched by the probe
    verified: bool | None = None


def _declared(name: str, option: str, mapping: Mapping[str, str] | None, known: set[str]) -> dict[str, str]:
    out = {}
    for layer, value in (mapping or {}).items():
        if layer not in known:
            raise FluxError(f"{option}: {layer!r} is not a watched layer")
        out[layer] = value
    return out


def find_links(model: nn.Module, layers: Sequence[WatchedLayer], activations: Mapping[str, str] | None = None,
               next_layers: Mapping[str, str] | None = None) -> dict[str, Link]:
    """Each watched layer's link, from the modules' order (to be verified by :class:`LinkProbe`) and what the user
    declared.

    Raises:
        FluxError: a declared layer is not watched, an activation is unknown, or a next layer is not watched.
    """
    names = {layer.name for layer in layers}
    declared_act = _declared("activations", "activations", activations, names)
    declared_next = _declared("next_layers", "next_layers", next_layers, names)
    for layer, act in declared_act.items():
        if act not in ACTIVATION_NAMES:
            raise FluxError(f"activations: {act!r} for layer {layer!r} is not one of {', '.join(ACTIVATION_NAMES)}")
    for layer, nxt in declared_next.items():
        if nxt not in names:
            raise FluxError(f"next_layers: {nxt!r}, given as the layer after {layer!r}, is not a watched layer")
    by_module = {id(layer.module): layer.name for layer in layers}
    leaves = [module for _, module in model.named_modules() if not any(True for _ in module.children())
              and not isinstance(module, _SKIPPED)]
    links = {layer.name: Link(layer.name) for layer in layers}
    for index, module in enumerate(leaves[:-1]):
        name = by_module.get(id(module))
        act = ACTIVATIONS.get(type(leaves[index + 1]))
        if name is None or act is None:
            continue
        after = leaves[index + 2] if index + 2 < len(leaves) else None
        links[name] = Link(name, act, by_module.get(id(after)) if after is not None else None, leaves[index + 1])
    for name in names:
        if name in declared_act or name in declared_next:
            found = links[name]
            links[name] = Link(name, declared_act.get(name, found.activation if found.verified is not False else None),
                               declared_next.get(name, found.next), None, True)
    return links


def _same(a, b) -> bool:
    """The same tensor, or the same memory seen alike: FSDP2's hooks hand a module's output on as a new tensor object
    over the same storage."""
    if a is b:
        return True
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.data_ptr() == b.data_ptr()
            and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype)


class LinkProbe:
    """Checks the links found from the modules' order on the first training forward pass: the activation module must
    be called on the layer's output, the next layer on the activation's output. Its hooks go once that pass is seen.

    The watched layers' forward wrappers call :meth:`layer_called`; the probe hooks the activation modules itself.
    """

    def __init__(self, links: Mapping[str, Link]) -> None:
        self.links = dict(links)
        self._pending = {name: link for name, link in self.links.items()
                         if link.verified is None and link.activation is not None}
        self._outputs: dict[str, torch.Tensor] = {}  # this pass: a layer's output
        self._activated: dict[str, torch.Tensor] = {}  # this pass: its activation's output
        self._handles = []
        for name, link in self._pending.items():
            if link.module is not None:
                self._handles.append(link.module.register_forward_hook(self._activation_hook(name)))

    @property
    def done(self) -> bool:
        return not self._pending

    def _activation_hook(self, name: str):
        def hook(module, inputs, output):
            source = self._outputs.get(name)
            if source is None or name not in self._pending:
                return
            if inputs and _same(inputs[0], source):
                self._activated[name] = output
            else:
                self._settle(name, False, "its activation module was not called on its output")
        return hook

    def layer_called(self, name: str, args: tuple, output: torch.Tensor) -> None:
        """A watched layer's training forward: ``args`` its inputs, ``output`` what it returned."""
        for before, link in list(self._pending.items()):
            if link.next == name and before in self._activated:
                holds = bool(args) and _same(args[0], self._activated[before])
                self._settle(before, holds, None if holds else f"{name} was not called on its activation's output")
        if name in self._pending:
            self._outputs[name] = output

    def end_pass(self) -> None:
        """Called at a snapshot, after training passes: a link with no next layer holds when its activation was seen
        on the layer's output; the others still unsettled are dropped (the pass did not show them)."""
        for name, link in list(self._pending.items()):
            if name not in self._outputs:
                continue  # the layer was not called yet: wait for a pass that calls it
            holds = name in self._activated and link.next is None
            self._settle(name, holds, None if holds else "the training pass did not show it")
        self._outputs.clear()
        self._activated.clear()

    def _settle(self, name: str, holds: bool, why: str | None) -> None:
        link = self._pending.pop(name)
        link.verified = holds
        if not holds:
            _log.warning("layer %r: the chain %s -> %s -> %s seen in the model's modules does not hold (%s); its "
                         "redundant-unit readings and resets need watch(activations=..., next_layers=...)",
                         name, name, link.activation, link.next or "(none)", why)
            link.activation, link.next = None, None
        self._outputs.pop(name, None)
        self._activated.pop(name, None)
        if self.done:
            self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def outgoing_columns(next_weight: torch.Tensor, units: int, weight_axis: int = 0) -> torch.Tensor:
    """The next layer's weights grouped by the unit of this layer they read: ``(units, k)``, row i holding every
    weight that multiplies unit i's output.

    ``next_weight`` is the next layer's weight as stored (``weight_axis`` 1: transformers' Conv1D, ``(in, out)``);
    its input dimension is ``units`` (a Linear or a conv reading this layer's channels) or ``units`` times the
    positions of a flattened conv output (channel-major, as ``torch.flatten`` lays it out).

    Raises:
        FluxError: the next layer's inputs are not a whole number of this layer's units.
    """
    weight = next_weight.t() if weight_axis == 1 else next_weight
    inputs = weight.shape[1]
    if inputs % units:
        raise FluxError(f"the next layer reads {inputs} inputs, not a multiple of this layer's {units} units")
    per_unit = inputs // units
    # (out, in, *kernel) -> (in, out, *kernel): the weights reading each input channel together.
    moved = weight.transpose(0, 1).reshape(inputs, -1)
    return moved.reshape(units, per_unit * moved.shape[1])
