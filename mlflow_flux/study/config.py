"""Training configuration: one dataclass, string overrides type-checked against its defaults.

Every value that arrives from a command line or an MLproject parameter is a string; it is parsed here, once,
and a bad value is an :class:`InvalidParameter` naming the parameter, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

from ..errors import InvalidParameter

__all__ = ["TrainConfig", "OPTIMIZERS", "parse_floats", "parse_ints", "parse_train_config"]

OPTIMIZERS = ("adam", "sgd")
# Upper bounds where a larger value would exhaust memory (or overflow an int32 trace column) before any useful run;
# products of parameters are bounded in parse_train_config.
MAXIMUMS = {"image_size": 512, "n_samples": 1_000_000, "batch_size": 65_536, "epochs": 10_000_000,
            "seed": 2**32 - 1, "threads": 1024, "window": 100_000, "snapshot_every": 10_000_000,
            "summary_every": 10_000_000, "flush_every": 1000}
MAX_WIDTH = 65_536
MAX_DATASET_VALUES = 1 << 28  # n_samples x image_size^2 float32 pixels: 1 GiB
MAX_PARAMETERS = 200_000_000  # weights and biases of the autoencoder: 0.8 GB, x4 with Adam's state and gradients
MAX_BATCH_VALUES = 1 << 28  # batch_size x the widest layer: the largest activation tensor, 1 GiB


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one variant run. Defaults follow the study; docs/experiment.md says why each is what it is."""

    lr: float = 0.001
    epochs: int = 1000  # the paper's budget: the claims are about what happens "within the same epochs"
    seed: int = 0
    batch_size: int = 64
    optimizer: str = "adam"
    hidden: tuple[int, ...] = (256, 64, 16)  # encoder widths; the decoder mirrors them
    n_samples: int = 2048  # 256 per shape: enough variety, and an epoch stays ~0.12 s on this CPU
    image_size: int = 32
    noise: float = 0.0  # std of Gaussian pixel noise added to the images
    # recorder settings
    snapshot_every: int = 1
    window: int = 10
    tau: float = 1e-4  # docs/metrics.md: frozen neurons sit at 0, learning ones above 1.6e-4
    summary_every: int = 10  # log flux/ summaries every N snapshots; traces keep every snapshot
    flush_every: int = 10
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default

    def as_params(self) -> dict[str, str]:
        """The config as MLflow params (strings; widths as ``256,64,16``)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return out


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise InvalidParameter(name, raw, "expected a positive number") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidParameter(name, raw, "expected a positive number")
    return value


def _int_at_least(name: str, raw: str, minimum: int) -> int:
    try:
        value = int(str(raw).strip())
    except (TypeError, ValueError):
        raise InvalidParameter(name, raw, f"expected an integer >= {minimum}") from None
    if value < minimum:
        raise InvalidParameter(name, raw, f"expected an integer >= {minimum}")
    return value


def parse_floats(name: str, raw: str) -> tuple[float, ...]:
    """Parse a comma-separated list of positive numbers, e.g. ``0.01,0.001``."""
    if len(str(raw)) > 10_000:
        raise InvalidParameter(name, str(raw)[:40] + "...", "expected a short comma-separated list")
    items = [part.strip() for part in str(raw).split(",")]
    if not items or any(not part for part in items):
        raise InvalidParameter(name, raw, "expected comma-separated positive numbers, e.g. 0.01,0.001")
    return tuple(_positive_float(name, part) for part in items)


def parse_ints(name: str, raw: str, minimum: int = 1) -> tuple[int, ...]:
    """Parse a comma-separated list of integers, e.g. ``256,64,16``."""
    if len(str(raw)) > 10_000:
        raise InvalidParameter(name, str(raw)[:40] + "...", "expected a short comma-separated list")
    items = [part.strip() for part in str(raw).split(",")]
    if not items or any(not part for part in items):
        raise InvalidParameter(name, raw, f"expected comma-separated integers >= {minimum}, e.g. 256,64,16")
    try:
        return tuple(_int_at_least(name, part, minimum) for part in items)
    except InvalidParameter:
        raise InvalidParameter(name, raw, f"expected comma-separated integers >= {minimum}, e.g. 256,64,16") from None


def _parse_field(name: str, raw: str) -> object:
    if name == "optimizer":
        value = str(raw).strip().lower()
        if value not in OPTIMIZERS:
            raise InvalidParameter(name, raw, f"expected one of {', '.join(OPTIMIZERS)}")
        return value
    if name == "hidden":
        return parse_ints(name, raw)
    if name == "noise":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InvalidParameter(name, raw, "expected a number >= 0") from None
        if not math.isfinite(value) or value < 0:
            raise InvalidParameter(name, raw, "expected a number >= 0")
        return value
    if name in ("lr", "tau"):
        return _positive_float(name, raw)
    minimums = {"seed": 0, "threads": 0, "image_size": 8, "window": 2}
    value = _int_at_least(name, raw, minimums.get(name, 1))
    if name in MAXIMUMS and value > MAXIMUMS[name]:
        raise InvalidParameter(name, raw, f"expected an integer from {minimums.get(name, 1)} to {MAXIMUMS[name]}")
    return value


def parse_train_config(overrides: Mapping[str, str], base: TrainConfig | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from string overrides; unknown keys and bad values are errors.

    Raises:
        InvalidParameter: a key is unknown or a value does not parse.
    """
    base = base or TrainConfig()
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, object] = {}
    for name, raw in overrides.items():
        if name not in known:
            raise InvalidParameter(name, raw, f"unknown parameter; known: {', '.join(sorted(known))}")
        values[name] = _parse_field(name, raw)
    config = dataclasses.replace(base, **values)
    if config.n_samples < 8:
        raise InvalidParameter("n_samples", config.n_samples, "expected at least one image per shape (>= 8)")
    _check_sizes(config)
    return config


def _check_sizes(config: TrainConfig) -> None:
    """Refuse settings whose data, model or activations would not fit in memory, naming what to change."""
    if any(width > MAX_WIDTH for width in config.hidden):
        raise InvalidParameter("hidden", ",".join(map(str, config.hidden)), f"expected widths up to {MAX_WIDTH}")
    pixels = config.image_size**2
    if config.n_samples * pixels > MAX_DATASET_VALUES:
        raise InvalidParameter("n_samples", str(config.n_samples), f"n_samples x image_size^2 must stay under "
                                                              f"{MAX_DATASET_VALUES:,} pixels (1 GiB) at image_size "
                                                              f"{config.image_size}")
    widths = [pixels, *config.hidden]
    parameters = 2 * sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))  # the decoder mirrors the encoder
    if parameters > MAX_PARAMETERS:
        raise InvalidParameter("hidden", ",".join(map(str, config.hidden)), f"the autoencoder would have "
                                                                           f"{parameters:,} parameters; at most "
                                                                           f"{MAX_PARAMETERS:,}")
    if min(config.batch_size, config.n_samples) * max(widths) > MAX_BATCH_VALUES:
        raise InvalidParameter("batch_size", str(config.batch_size), f"batch_size x the widest layer ({max(widths)}) "
                                                                f"must stay under {MAX_BATCH_VALUES:,} values")
