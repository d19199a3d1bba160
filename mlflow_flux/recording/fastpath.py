"""The recorder's CPU fast path: fused C reductions from the optional ``_fastpath`` extension.

The extension is built at install time when a C compiler is present; without it, or with
``MLFLOW_FLUX_FASTPATH=0`` in the environment, the recorder uses plain torch ops and records the same values. Its
layout is generated from :mod:`mlflow_flux.statistics` at build time; a build whose layout differs is not used.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

import torch

from ..statistics import COMPUTED, SUM_NAMES

__all__ = ["fastpath", "TAP_ROWS", "TAP_PLANES", "TAP_GRADIENT_ROWS", "TAP_GRADIENT_COLUMNS", "detached_hook"]


def detached_hook(*args: object, **kwargs: object) -> None:
    """What a deep-copied or unpickled model holds in place of a recorder hook: the copy is not watched."""
    return None


def _detached() -> object:
    return detached_hook


def _same(value: object) -> object:
    """A wrapped forward, copied, is the original forward: copy.deepcopy rebinds it to the copied module."""
    return value


_log = logging.getLogger(__name__)

try:
    from . import _fastpath as _extension
except ImportError:  # built without a compiler: the torch path stands in
    _extension = None
else:
    if (getattr(_extension, "SUMS", None), getattr(_extension, "STATISTICS", None)) != (SUM_NAMES, COMPUTED):
        # Built from another table (a stale in-place build): its layout would write the wrong rows.
        _log.warning("mlflow_flux's C fast path was built from other statistics than this package declares; it is "
                     "not used (rebuild it: pip install -e . or make install)")
        _extension = None
    else:
        # What the C taps compare a tensor's attributes against, by identity.
        _extension.setup(torch.Tensor, torch.float32, torch.bfloat16, torch.strided, _detached, _same)

# Tap kinds: a Linear's outputs (rows of neurons), a conv's outputs (channel planes), weight gradients with a
# neuron per row (Linear, conv) or per column (transformers' Conv1D, whose weight is (in, out)).
TAP_ROWS, TAP_PLANES, TAP_GRADIENT_ROWS, TAP_GRADIENT_COLUMNS = 0, 1, 2, 3


def fastpath() -> ModuleType | None:
    """The compiled extension if it is built and not switched off, else ``None`` (read at each ``attach``)."""
    if os.environ.get("MLFLOW_FLUX_FASTPATH", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return _extension
