"""Twin runs: a copy of the model whose initial weights differ by a relative ``twin_perturbation`` (TrainConfig's,
1e-6 by default), trained on the same batches in the same process, and the distance between the two after each
epoch (arXiv 2405.00743's finite-time Lyapunov exponents; "The Butterfly Effect" (2025) on how training
trajectories from nearly equal starts diverge).

The twin is not watched: only the distance and :func:`mlflow_flux.dynamics.lyapunov` of it are logged, per
layer and overall, as ``twin/...`` metrics.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .. import dynamics

__all__ = ["make_twin", "TwinDistance"]


def make_twin(model: nn.Module, relative: float, seed: int) -> nn.Module:
    """A deep copy of ``model`` whose every parameter tensor ``p`` is moved by ``relative * ||p||`` in a random
    direction (seeded): ``relative=0`` gives an identical twin."""
    twin = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in twin.parameters():
            direction = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            size = float(direction.norm())
            if size > 0 and relative > 0:
                p.add_((direction * (relative * float(p.double().norm()) / size)).to(p.dtype))
    return twin


class TwinDistance:
    """Distances between the model and its twin, per layer (the modules that hold parameters of their own) and
    overall, and the Lyapunov estimates against the distances at the start."""

    def __init__(self, model: nn.Module, twin: nn.Module) -> None:
        twins = dict(twin.named_modules())
        self.layers = [(name, list(module.parameters(recurse=False)), list(twins[name].parameters(recurse=False)))
                       for name, module in model.named_modules() if any(True for _ in module.parameters(recurse=False))]
        self.initial = self.distances()

    def distances(self) -> dict[str, float]:
        """``{layer: d, ..., "all": d}``, float64 sums of squared differences of the float32 parameters."""
        out, total = {}, 0.0
        with torch.no_grad():
            for name, ours, theirs in self.layers:
                squared = sum(float((a.double() - b.double()).square().sum()) for a, b in zip(ours, theirs))
                out[name] = squared**0.5
                total += squared
        out["all"] = total**0.5
        return out

    def metrics(self, epochs_done: int) -> dict[str, float]:
        """``twin/<layer>/distance`` and ``twin/<layer>/lyapunov`` (``twin/distance``, ``twin/lyapunov`` overall)
        after ``epochs_done`` epochs."""
        now = self.distances()
        names = list(now)
        rates = dynamics.lyapunov(np.array([now[n] for n in names]), np.array([self.initial[n] for n in names]),
                                     epochs_done)
        out = {}
        for name, rate in zip(names, rates):
            prefix = "twin" if name == "all" else f"twin/{name}"
            out[f"{prefix}/distance"] = now[name]
            out[f"{prefix}/lyapunov"] = float(rate)
        return out
