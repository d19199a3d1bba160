"""Training configuration: one dataclass, string overrides type-checked against its defaults.

Every value that arrives from a command line or an MLproject parameter is a string; it is parsed here, once,
and a bad value is an :class:`InvalidParameter` naming the parameter, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import InvalidParameter
from .backends import BACKENDS

__all__ = ["TrainConfig", "SweepConfig", "SWEPT", "OPTIMIZERS", "SGD_MOMENTUM", "ATLAS_DEFAULTS", "SWEEP_DEFAULTS", "OPTION_HELP", "MAX_VARIANTS", "auto_parallel", "parse_bool", "parse_floats",
           "parse_ints", "parse_train_config", "parse_sweep_config", "variant_name", "model_name"]

MAX_VARIANTS = 1000
SWEPT = ("lr", "seed", "optimizer")  # what a sweep varies: each is given as a list (lrs=, seeds=, optimizers=)

OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9  # "sgd" is SGD with momentum 0.9, the common default (docs/experiment.md)
# The atlas (`mlflow run . -e atlas`, `mlflow-flux atlas`): the sweep with these defaults, the map of where the
# paper's claims hold (docs/experiment.md).
ATLAS_DEFAULTS = {"optimizers": "adam,sgd", "lrs": "0.01,0.001,0.0001", "seeds": "0,1,2", "epochs": "1000"}
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
    layer_metrics: str = "participating_frac"  # summaries logged per layer too: names, "all" or "none"
    twins: bool = False  # also train a twin from weights a relative twin_perturbation away (twin/ metrics)
    twin_perturbation: float = 1e-6
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default

    @property
    def layer_metric_keys(self) -> tuple[str, ...]:
        """``layer_metrics`` as watch() takes it."""
        from ..fluctuation import SUMMARY_KEYS

        if self.layer_metrics == "all":
            return SUMMARY_KEYS
        return () if self.layer_metrics == "none" else tuple(self.layer_metrics.split(","))

    def as_params(self) -> dict[str, str]:
        """The config as MLflow params (strings; widths as ``256,64,16``)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                out[f.name] = "true" if value else "false"
            else:
                out[f.name] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        return out


# What each setting does, in the words the CLI's --help shows (plain text: no markup).
OPTION_HELP = {
    "lr": "learning rate of the optimizer",
    "epochs": "passes over the dataset",
    "seed": "seeds the initial weights and the batch order (the images are the same for every seed)",
    "batch_size": "images per optimizer step",
    "optimizer": f"adam, or sgd (momentum {SGD_MOMENTUM})",
    "hidden": "comma-separated encoder widths; the decoder mirrors them",
    "n_samples": "images in the dataset, spread evenly over the eight shapes",
    "image_size": "side of the square images, in pixels",
    "noise": "standard deviation of Gaussian pixel noise added to the images",
    "snapshot_every": "record a trace snapshot every N epochs",
    "window": "snapshots per fluctuation window (the spread of the spread is taken over it)",
    "tau": "a firing neuron participates when its relative fluctuation is at least tau",
    "summary_every": "log the flux/ summary metrics on every N-th snapshot (the trace keeps every snapshot)",
    "flush_every": "snapshots per closed trace segment: at most this many are lost to a hard kill",
    "layer_metrics": "summaries also logged per layer: comma-separated names (participating, participating_frac, "
                     "dead_frac, sos_median, bias_fluct_median, w_step_median), all, or none",
    "twins": "true: also train a twin whose initial weights differ by a relative twin_perturbation, on the same "
             "batches, and log the distance between the two and the Lyapunov estimate ln(d(t)/d(0))/t (twin/)",
    "twin_perturbation": "relative size of the twin's initial difference, per parameter tensor (0: an identical twin)",
    "threads": "torch threads for this variant; 0 leaves torch's default",
}


def variant_name(optimizer: str, lr: float, seed: int) -> str:
    """The run name of a variant, e.g. ``adam lr=0.01 seed=0``."""
    return f"{optimizer} lr={lr:g} seed={seed}"


def model_name(optimizer: str, lr: float, seed: int) -> str:
    """The logged model's name (MLflow refuses ``.`` ``=`` ``/`` in one), e.g. ``adam-lr0_01-seed0``."""
    return f"{optimizer}-lr{lr:g}-seed{seed}".replace(".", "_")


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


def parse_bool(name: str, raw: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, any case).

    >>> parse_bool("twins", "True"), parse_bool("twins", "0")
    (True, False)
    """
    value = str(raw).strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise InvalidParameter(name, raw, "expected true or false")
    return value in ("true", "1", "yes")


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
    if name == "layer_metrics":
        from ..fluctuation import SUMMARY_KEYS

        value = str(raw).strip().lower()
        names = [part.strip() for part in value.split(",")]
        if value not in ("all", "none") and not all(part in SUMMARY_KEYS for part in names):
            raise InvalidParameter(name, raw, f"expected all, none or comma-separated names among "
                                              f"{', '.join(SUMMARY_KEYS)}")
        return value if value in ("all", "none") else ",".join(names)
    if name == "twins":
        return parse_bool(name, raw)
    if name in ("noise", "twin_perturbation"):
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


def auto_parallel(variants: int, cores: int) -> int:
    """How many equal variants to run at once on ``cores`` cores (one thread each when more than the cores) so that
    the sweep finishes soonest; of equal choices, the fewest processes.

    Three variants on two cores all at once share the cores and finish in 1.5 variant-times, where two then one
    take 2.

    >>> auto_parallel(3, 2), auto_parallel(6, 2), auto_parallel(7, 2), auto_parallel(1, 2), auto_parallel(18, 2)
    (3, 2, 7, 1, 2)
    """
    if variants <= cores:
        return max(1, variants)
    return min(range(cores, variants + 1), key=lambda k: (math.ceil(variants / k) * k / cores, k))


@dataclass(frozen=True)
class SweepConfig:
    """What the sweep varies (``optimizers`` x ``lrs`` x ``seeds``), how wide it runs, and the settings every
    variant shares."""

    lrs: tuple[float, ...] = (0.01, 0.001, 0.0001)
    seeds: tuple[int, ...] = (0,)
    optimizers: tuple[str, ...] = ("adam",)
    max_parallel: int = 0  # 0: one process per core
    train: TrainConfig = TrainConfig()
    report: bool = True
    backend: str = "local"  # or "ray"

    @property
    def variants(self) -> int:
        return len(self.optimizers) * len(self.lrs) * len(self.seeds)

    @property
    def grid(self) -> list[tuple[str, float, int]]:
        """Every (optimizer, lr, seed), seed-major: a sweep stopped early has each seed's whole map first."""
        return [(optimizer, lr, seed) for seed in self.seeds for optimizer in self.optimizers for lr in self.lrs]

    @property
    def name(self) -> str:
        """The sweep run's name, e.g. ``sweep adam lr×3 seed×1 1000ep`` or ``sweep adam,sgd lr×3 seed×3 1000ep``."""
        return (f"sweep {','.join(self.optimizers)} lr×{len(self.lrs)} seed×{len(self.seeds)} "
                f"{self.train.epochs}ep")

    @property
    def parallel(self) -> int:
        """Variants at a time: ``max_parallel``, or by default the count that finishes soonest (see
        :func:`auto_parallel`)."""
        if self.max_parallel:
            return max(1, min(self.max_parallel, self.variants))
        return auto_parallel(self.variants, os.cpu_count() or 1)

    @property
    def threads_per_variant(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.parallel)


# What `mlflow-flux sweep --help` shows as the swept defaults: SweepConfig's own, written as the CLI takes them.
SWEEP_DEFAULTS = {"optimizers": ",".join(SweepConfig.optimizers), "lrs": ",".join(f"{lr:g}" for lr in SweepConfig.lrs),
                  "seeds": ",".join(map(str, SweepConfig.seeds)), "epochs": str(TrainConfig.epochs)}


def parse_sweep_config(overrides: Mapping[str, str]) -> SweepConfig:
    """Parse string parameters; every bad value is an :class:`InvalidParameter` before anything runs."""
    overrides = dict(overrides)
    lrs = parse_floats("lrs", overrides.pop("lrs")) if "lrs" in overrides else SweepConfig.lrs
    seeds = parse_ints("seeds", overrides.pop("seeds"), minimum=0) if "seeds" in overrides else SweepConfig.seeds
    optimizers = SweepConfig.optimizers
    if "optimizers" in overrides:
        raw = overrides.pop("optimizers")
        try:
            optimizers = tuple(dict.fromkeys(_parse_field("optimizer", part) for part in str(raw).split(",")))
        except InvalidParameter:
            raise InvalidParameter("optimizers", raw, f"expected comma-separated names among {', '.join(OPTIMIZERS)}")
    max_parallel = 0
    if "max_parallel" in overrides:
        raw = str(overrides.pop("max_parallel")).strip()
        if raw.lower() not in ("auto", "0", ""):
            max_parallel = parse_ints("max_parallel", raw)[0]
    report = parse_bool("report", overrides.pop("report")) if "report" in overrides else True
    backend = "local"
    if "backend" in overrides:
        backend = str(overrides.pop("backend")).strip().lower()
        if backend not in BACKENDS:
            raise InvalidParameter("backend", backend, f"expected one of {', '.join(BACKENDS)}")
    for name in SWEPT:
        if name in overrides:
            raise InvalidParameter(name, overrides[name], f"the sweep varies it: pass {name}s= instead")
    count = len(optimizers) * len(lrs) * len(seeds)
    if count > MAX_VARIANTS:
        raise InvalidParameter("lrs", ",".join(map(str, lrs)),
                               f"expected at most {MAX_VARIANTS} variants (optimizers x lrs x seeds), got {count}")
    return SweepConfig(lrs=lrs, seeds=seeds, optimizers=optimizers, max_parallel=max_parallel,
                       train=parse_train_config(overrides), report=report, backend=backend)
