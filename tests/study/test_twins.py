"""The twins' finite-time Lyapunov exponents against a learning map whose exponents are known: gradient descent on a
quadratic, where the map is linear and its exponents are ln|1 - lr * eigenvalue| per step."""

import numpy as np
import pytest
import torch
from torch import nn

from mlflow_flux import dynamics
from mlflow_flux.study.twins import Twins

EIGENVALUES = np.array([18.0, 12.0, 5.0, 1.0, 0.1])  # |1 - lr e| < 1: the model converges
LR = 0.1
PERIOD = 10  # steps per window: the three directions kept change by e^-0.1 to e^-2.2 in one, within e^+-7


def test_benettin_exponents_of_gradient_descent_on_a_quadratic_agree_to_one_percent():
    torch.manual_seed(0)
    n = len(EIGENVALUES)
    # loss = mean((X w - y)^2): its Hessian 2/n X^T X is diag(EIGENVALUES) for this X.
    x = torch.diag(torch.sqrt(torch.tensor(EIGENVALUES * n / 2)))
    y = torch.randn(n, 1, dtype=torch.float64)
    model = nn.Linear(n, 1, bias=False).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    twins = Twins(model, optimizer, lambda twin: torch.optim.SGD(twin.parameters(), lr=LR), count=3, relative=1e-3,
                  period=PERIOD, seed=0)
    windows = []
    for _ in range(30 * PERIOD):
        for net, opt in [(model, optimizer), *twins.twins]:
            opt.zero_grad()
            torch.mean((net(x) - y) ** 2).backward()
            opt.step()
        metrics = twins.end_epoch()
        if metrics:
            windows.append([metrics["twin/lyapunov"], metrics["twin/lyapunov_2"], metrics["twin/lyapunov_3"]])
    expected = np.sort(np.log(np.abs(1 - LR * EIGENVALUES)))[::-1][:3]  # -0.0101, -0.105, -0.223 per step
    measured = np.mean(windows[10:], axis=0)
    np.testing.assert_allclose(measured, expected, rtol=0.01)
    # Every window's growth stayed within e^+-7, so nothing saturated or underflowed.
    assert np.abs(np.array(windows) * PERIOD).max() < 7


def test_orthonormalise_carries_the_differences_back_to_d0_and_keeps_them_apart():
    rng = np.random.default_rng(0)
    differences = rng.normal(size=(50, 3))
    growth, coefficients = dynamics.orthonormalise(differences, 0.5)
    renormalised = differences @ coefficients
    np.testing.assert_allclose(renormalised.T @ renormalised, 0.25 * np.eye(3), atol=1e-12)
    np.testing.assert_allclose(growth[0], np.log(np.linalg.norm(differences[:, 0]) / 0.5))


def test_twins_that_start_identical_have_no_exponent():
    model = nn.Linear(3, 2).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    twins = Twins(model, optimizer, lambda t: torch.optim.SGD(t.parameters(), lr=0.1), 1, 0.0, 1, 0)
    assert twins.end_epoch()["twin/lyapunov"] == -np.inf
    with pytest.raises(ValueError, match="period"):
        Twins(model, optimizer, lambda t: torch.optim.SGD(t.parameters(), lr=0.1), 1, 1e-6, 0, 0)
