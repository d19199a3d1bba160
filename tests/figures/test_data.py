"""The run figures' data: the quantile bands equal numpy's, including the rows a diverged run leaves."""

from __future__ import annotations

import warnings

import numpy as np

from mlflow_flux.figures.data import quantiles


def test_band_quantiles_equal_numpy_nanpercentile_with_nan_and_inf_rows():
    values = np.random.default_rng(0).normal(size=(50, 37))
    values[3, :5] = np.nan
    values[7] = np.nan
    values[9, 2] = np.inf
    values[11, :] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on the all-NaN row
        expected = np.nanpercentile(values, [10, 50, 90], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours stays quiet
        got = quantiles(values, [0.1, 0.5, 0.9])
    kept = np.arange(len(values)) != 11
    for ours, theirs in zip(got, expected):
        np.testing.assert_allclose(ours[kept], theirs[kept], equal_nan=True)
        assert ours[11] == -np.inf  # numpy interpolates -inf * 0 into NaN; every order statistic there is -inf
