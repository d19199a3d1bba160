"""Twin runs and the finite-time Lyapunov exponents of the learning map ("On the weight dynamics of learning
networks", arXiv 2405.00743), by Benettin's method.

``k`` twins start from the model's weights moved a distance ``d0`` (``twin_perturbation`` times the weights' norm)
along ``k`` orthonormal, seeded random directions, and train on the same batches as the model, each with its own
optimizer. After every window of ``twin_period`` epochs the differences ``twin_i - model`` (weights and optimizer
state, one vector per twin) are re-orthonormalised by QR and set back to ``d0``
(:func:`mlflow_flux.dynamics.orthonormalise`): ``lambda_i = ln(R_ii / d0) / T`` is the window's i-th exponent, per
epoch. The distance is measured on the weights; the optimizer state's difference is carried by the same linear map
(Adam's second moment clamped at 0, where a combination of differences would take it below).

The twins are not watched; only ``twin/lyapunov`` (the largest exponent), ``twin/lyapunov_<i>`` (i >= 2) and
``twin/distance`` (the first twin's distance before renormalisation) are logged, at the end of every window.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import dynamics

__all__ = ["Twins"]


def _flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors]) if tensors else torch.zeros(0)


def _assign(tensors: Sequence[torch.Tensor], values: torch.Tensor) -> None:
    start = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(values[start:start + t.numel()].reshape(t.shape).to(t.dtype))
            start += t.numel()


def _state_tensors(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The optimizer's floating-point state tensors of the same shape as their parameter (momenta, moments), in a
    fixed order; step counts and scalars are the same in every twin and stay."""
    out = []
    for p in parameters:
        for _, value in sorted(optimizer.state.get(p, {}).items()):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == p.shape:
                out.append(value)
    return out


class Twins:
    """``count`` twins of ``model``, each a deep copy with its own optimizer (``make_optimizer(twin)``).

    Args:
        model: the reference model (the watched one).
        optimizer: its optimizer (read for the state difference at each renormalisation).
        make_optimizer: builds a twin's optimizer.
        count: how many exponents (twins).
        relative: ``d0`` as a fraction of the weights' norm.
        period: epochs per window.
        seed: seeds the initial directions.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], count: int, relative: float,
                 period: int, seed: int) -> None:
        if count < 1 or period < 1:
            raise ValueError(f"twins need count >= 1 and period >= 1, got {count} and {period}")
        self.model, self.optimizer, self.period = model, optimizer, period
        self.parameters = list(model.parameters())
        size = sum(p.numel() for p in self.parameters)
        if count > size:
            raise ValueError(f"{count} twins need at least as many parameters, the model has {size}")
        base = _flat(self.parameters)
        self.d0 = relative * float(base.norm())
        generator = torch.Generator().manual_seed(seed + 1)
        directions = torch.linalg.qr(torch.randn(size, count, generator=generator, dtype=torch.float64))[0]
        self.twins: list[tuple[nn.Module, torch.optim.Optimizer]] = []
        for i in range(count):
            twin = copy.deepcopy(model)
            _assign(list(twin.parameters()), base + self.d0 * directions[:, i])
            self.twins.append((twin, make_optimizer(twin)))
        self._epochs = 0
        self.exponents: list[np.ndarray] = []  # one per window, the log growth per epoch of each direction

    def end_epoch(self) -> dict[str, float]:
        """After an epoch in which the twins took the model's steps: at the end of a window, renormalise and return
        the window's exponents as metrics (else nothing)."""
        self._epochs += 1
        if self._epochs % self.period:
            return {}
        base = _flat(self.parameters)
        twin_parameters = [list(twin.parameters()) for twin, _ in self.twins]
        differences = torch.stack([_flat(ps) - base for ps in twin_parameters], dim=1)
        distance = float(differences[:, 0].norm())
        if self.d0 == 0:  # identical twins: no direction to follow
            exponents = np.full(len(self.twins), -np.inf)
            self.exponents.append(exponents)
            return self._metrics(exponents, distance)
        growth, coefficients = dynamics.orthonormalise(differences.numpy(), self.d0)
        exponents = dynamics.lyapunov_window(growth, self.period)
        self.exponents.append(exponents)
        if np.isfinite(coefficients).all():
            mix = torch.from_numpy(coefficients)
            for twin_index, values in enumerate((differences @ mix).t()):
                _assign(twin_parameters[twin_index], base + values)
            self._carry_states(mix)
        return self._metrics(exponents, distance)

    def _carry_states(self, mix: torch.Tensor) -> None:
        """The optimizer states' differences, renormalised by the same linear map as the weights'."""
        base = _state_tensors(self.optimizer, self.parameters)
        states = [_state_tensors(opt, list(twin.parameters())) for twin, opt in self.twins]
        if not base or any(len(s) != len(base) for s in states):
            return
        reference = _flat(base)
        differences = torch.stack([_flat(s) - reference for s in states], dim=1)
        for twin_index, values in enumerate((differences @ mix).t()):
            _assign(states[twin_index], reference + values)
        for _, opt in self.twins:  # a second moment is a mean of squares: never below 0
            for state in opt.state.values():
                if isinstance(state.get("exp_avg_sq"), torch.Tensor):
                    state["exp_avg_sq"].clamp_(min=0)

    @staticmethod
    def _metrics(exponents: np.ndarray, distance: float) -> dict[str, float]:
        out = {"twin/lyapunov": float(exponents[0]), "twin/distance": distance}
        out.update({f"twin/lyapunov_{i + 1}": float(value) for i, value in enumerate(exponents) if i > 0})
        return out
