"""The study's settings, each declared once (:mod:`mlflow_flux.settings`): one variant's (:class:`TrainConfig`, which
shares the recorder's settings with ``watch()``) and the sweep's (:class:`SweepSettings`).

Every value that arrives from a command line or an MLproject parameter is a string; it is parsed here, once, and a
bad value is an :class:`InvalidParameter` naming the parameter, before any work starts. The CLI's options and help and
the MLproject (``python -m mlflow_flux.study.project``) are derived from these declarations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidParameter
from ..settings import (
    RECYCLE_POLICIES,
    Choice,
    Flag,
    Integer,
    Kind,
    ListOf,
    Number,
    RecorderSettings,
    Settings,
    setting,
    with_default,
)
from .backends import BACKENDS

__all__ = ["TrainConfig", "SweepSettings", "SweepConfig", "SWEPT", "PER_VARIANT", "OPTIMIZERS", "SGD_MOMENTUM",
           "ATLAS_DEFAULTS",
           "MAX_VARIANTS", "auto_parallel", "parse_train_config", "parse_sweep_config", "variant_name", "model_name"]

MAX_VARIANTS = 1000
# What a sweep varies: each is given as a list (optimizers=, activations=, recycles=, lrs=, seeds=).
SWEPT = ("optimizer", "activation", "recycle", "lr", "seed")
PER_VARIANT = (*SWEPT, "threads")  # what the sweep sets for each variant: not settings of the sweep

OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9  # "sgd" is SGD with momentum 0.9, the common default (docs/experiment.md)
# Products of parameters are bounded in TrainConfig.__post_init__: where a larger value would exhaust memory before
# any useful run.
MAX_WIDTH = 65_536
MAX_DATASET_VALUES = 1 << 28  # n_samples x image_size^2 float32 pixels: 1 GiB
MAX_PARAMETERS = 200_000_000  # weights and biases of the autoencoder: 0.8 GB, x4 with Adam's state and gradients
MAX_BATCH_VALUES = 1 << 28  # batch_size x the widest layer: the largest activation tensor, 1 GiB


@dataclass(frozen=True)
class TwinCount(Kind):
    """How many twins: a count, or ``true`` (one) and ``false`` (none) as runs before counts wrote it."""

    def parse(self, name: str, raw: str) -> int:
        text = str(raw).strip().lower()
        if text in ("true", "false", "yes", "no"):
            return int(text in ("true", "yes"))
        return Integer(0, 64).parse(name, text)

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool):
            return int(value)
        return Integer(0, 64).check(name, value)

    def describe(self) -> str:
        return "an integer from 0 to 64 (true: 1)"


ACTIVATIONS = ("relu", "tanh")


@dataclass(frozen=True)
class TrainConfig(RecorderSettings):
    """Settings of one variant run: the recorder's (shared with ``watch()``) and the study's own. Defaults follow
    the study; docs/experiment.md says why each is what it is."""

    lr: float = setting(0.001, Number(), "learning rate of the optimizer")
    # the paper's budget: the claims are about what happens "within the same epochs"
    epochs: int = setting(1000, Integer(1, 10_000_000), "passes over the dataset")
    seed: int = setting(0, Integer(0, 2**32 - 1),
                        "seeds the initial weights and the batch order (the images are the same for every seed)")
    batch_size: int = setting(64, Integer(1, 65_536), "images per optimizer step")
    optimizer: str = setting("adam", Choice(OPTIMIZERS), f"adam, or sgd (momentum {SGD_MOMENTUM})")
    hidden: tuple = setting((256, 64, 16), ListOf(Integer(1), "integers >= 1", "256,64,16"),
                            "encoder widths; the decoder mirrors them")
    # 256 per shape: enough variety, and an epoch stays ~0.12 s on this CPU
    n_samples: int = setting(2048, Integer(8, 1_000_000), "images in the dataset, spread evenly over the eight shapes")
    image_size: int = setting(32, Integer(8, 512), "side of the square images, in pixels")
    noise: float = setting(0.0, Number(0.0, exclusive=False),
                           "standard deviation of Gaussian pixel noise added to the images")
    activation: str = setting("relu", Choice(ACTIVATIONS), "the hidden layers' activation: relu, or tanh (the "
                                                           "reducibility literature's)")
    twins: int = setting(0, TwinCount(), "train this many twins from weights a relative twin_perturbation away, on the "
                                         "same batches, and log the finite-time Lyapunov exponents of every window "
                                         "(twin/lyapunov, twin/lyapunov_2, ...; true: one)")
    twin_perturbation: float = setting(1e-6, Number(0.0, exclusive=False),
                                       "the twins' distance from the model, relative to the weights' norm, set back "
                                       "after every window (0: identical twins)")
    twin_period: int = setting(10, Integer(1, 1_000_000), "epochs per Lyapunov window: after each the twins are "
                                                          "re-orthonormalised and set back to their distance")
    threads: int = setting(0, Integer(0, 1024), "torch threads for this variant; 0 leaves torch's default")
    # The study logs the participating fraction of each layer; watch() logs no layer unless asked.
    layer_metrics: tuple = with_default(RecorderSettings, "layer_metrics", ("participating_frac",))
    # The study measures redundant units (its report's reduced widths); watch() does only when asked.
    redundancy: bool = with_default(RecorderSettings, "redundancy", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_sizes(self)

    @property
    def recorder(self) -> RecorderSettings:
        """The recorder's part, as ``watch()`` takes it."""
        return self.subset(RecorderSettings)

    @classmethod
    def study_names(cls) -> tuple[str, ...]:
        """The study's own settings (not the recorder's), in declaration order."""
        shared = set(RecorderSettings.names())
        return tuple(name for name in cls.names() if name not in shared)


def _check_sizes(config: TrainConfig) -> None:
    """Refuse settings whose data, model or activations would not fit in memory, naming what to change."""
    if any(width > MAX_WIDTH for width in config.hidden):
        raise InvalidParameter("hidden", ",".join(map(str, config.hidden)), f"expected widths up to {MAX_WIDTH}")
    pixels = config.image_size**2
    if config.n_samples * pixels > MAX_DATASET_VALUES:
        raise InvalidParameter("n_samples", str(config.n_samples), f"n_samples x image_size^2 must stay under "
                                                                   f"{MAX_DATASET_VALUES:,} pixels (1 GiB) at "
                                                                   f"image_size {config.image_size}")
    widths = [pixels, *config.hidden]
    parameters = 2 * sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))  # the decoder mirrors the encoder
    if parameters > MAX_PARAMETERS:
        raise InvalidParameter("hidden", ",".join(map(str, config.hidden)), f"the autoencoder would have "
                                                                           f"{parameters:,} parameters; at most "
                                                                           f"{MAX_PARAMETERS:,}")
    if min(config.batch_size, config.n_samples) * max(widths) > MAX_BATCH_VALUES:
        raise InvalidParameter("batch_size", str(config.batch_size), f"batch_size x the widest layer ({max(widths)}) "
                                                                     f"must stay under {MAX_BATCH_VALUES:,} values")


def parse_train_config(overrides: Mapping[str, str], base: TrainConfig | None = None) -> TrainConfig:
    """Build a :class:`TrainConfig` from string overrides; unknown keys and bad values are errors.

    Raises:
        InvalidParameter: a key is unknown or a value does not parse.
    """
    return TrainConfig.from_strings(overrides, base)


def _kinds(activation: str, recycle: str) -> list[str]:
    """What a variant's name says besides its optimizer: its activation and recycling policy, unless the defaults."""
    return [value for value, default in ((activation, "relu"), (recycle, "none")) if value != default]


def variant_name(optimizer: str, lr: float, seed: int, activation: str = "relu", recycle: str = "none") -> str:
    """The run name of a variant, e.g. ``adam lr=0.01 seed=0`` or ``adam tanh redo lr=0.01 seed=0``."""
    return " ".join([optimizer, *_kinds(activation, recycle), f"lr={lr:g}", f"seed={seed}"])


def model_name(optimizer: str, lr: float, seed: int, activation: str = "relu", recycle: str = "none") -> str:
    """The logged model's name (MLflow refuses ``.`` ``=`` ``/`` in one), e.g. ``adam-lr0_01-seed0``."""
    return "-".join([optimizer, *_kinds(activation, recycle), f"lr{lr:g}", f"seed{seed}"]).replace(".", "_")


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
class Auto(Kind):
    """``auto`` (0 in Python: decided at run time), or a number of the given kind."""

    number: Integer

    def parse(self, name: str, raw: str) -> int:
        text = str(raw).strip().lower()
        return 0 if text in ("auto", "0", "") else self.number.parse(name, text)

    def check(self, name: str, value: Any) -> int:
        return 0 if value == 0 else self.number.check(name, value)

    def format(self, value: int) -> str:
        return "auto" if value == 0 else str(value)

    def describe(self) -> str:
        return f"auto, or {self.number.describe()}"


@dataclass(frozen=True)
class SweepSettings(Settings):
    """What the sweep varies (``optimizers`` x ``activations`` x ``recycles`` x ``lrs`` x ``seeds``) and how it runs
    its variants."""

    optimizers: tuple = setting(("adam",), ListOf(Choice(OPTIMIZERS), "names among adam, sgd", "adam,sgd", unique=True),
                                f"optimizers, one child run per (optimizer, activation, recycle, lr, seed): adam, sgd "
                                f"(momentum {SGD_MOMENTUM})")
    activations: tuple = setting(("relu",), ListOf(Choice(ACTIVATIONS), "names among relu, tanh", "relu,tanh",
                                                   unique=True), "the hidden layers' activations of the sweep")
    recycles: tuple = setting(("none",), ListOf(Choice(RECYCLE_POLICIES), "names among "
                                                + ", ".join(RECYCLE_POLICIES), "none,redo", unique=True),
                              "the neuron-recycling policies of the sweep (none: no reset)")
    lrs: tuple = setting((0.01, 0.001, 0.0001), ListOf(Number(), "positive numbers", "0.01,0.001"),
                         "learning rates of the sweep")
    seeds: tuple = setting((0,), ListOf(Integer(0), "integers >= 0", "0,1,2"),
                           "seeds per learning rate; two or more give confidence intervals")
    max_parallel: int = setting(0, Auto(Integer(1)),
                                "variants at a time; auto: as many as finish soonest on this machine's cores")
    report: bool = setting(True, Flag(), "build the comparison report when the sweep ends")
    backend: str = setting("local", Choice(BACKENDS),
                           "where variants run: local processes, or ray (RAY_ADDRESS, else a local instance)")


# The atlas (`mlflow run . -e atlas`, `mlflow-flux atlas`): the sweep with these defaults, the map of where the
# paper's claims hold (docs/experiment.md).
ATLAS_DEFAULTS = {"optimizers": "adam,sgd", "activations": "relu,tanh", "lrs": "0.01,0.001,0.0001", "seeds": "0,1,2",
                  "epochs": "1000"}


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: its own settings, and the settings every variant shares."""

    sweep: SweepSettings = SweepSettings()
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if self.variants > MAX_VARIANTS:
            raise InvalidParameter("lrs", ",".join(map(str, self.lrs)), f"expected at most {MAX_VARIANTS} variants "
                                                                        f"(optimizers x activations x recycles x lrs "
                                                                        f"x seeds), got {self.variants}")

    # The sweep's own settings, read as attributes of the sweep.
    lrs = property(lambda self: self.sweep.lrs)
    seeds = property(lambda self: self.sweep.seeds)
    optimizers = property(lambda self: self.sweep.optimizers)
    activations = property(lambda self: self.sweep.activations)
    recycles = property(lambda self: self.sweep.recycles)
    max_parallel = property(lambda self: self.sweep.max_parallel)
    report = property(lambda self: self.sweep.report)
    backend = property(lambda self: self.sweep.backend)

    @property
    def variants(self) -> int:
        return len(self.optimizers) * len(self.activations) * len(self.recycles) * len(self.lrs) * len(self.seeds)

    @property
    def grid(self) -> list[dict]:
        """Every variant's values of the swept settings (``optimizer``, ``activation``, ``recycle``, ``lr``,
        ``seed``), seed-major: a sweep stopped early has each seed's whole map first."""
        return [{"optimizer": optimizer, "activation": activation, "recycle": recycle, "lr": lr, "seed": seed}
                for seed in self.seeds for optimizer in self.optimizers for activation in self.activations
                for recycle in self.recycles for lr in self.lrs]

    @property
    def name(self) -> str:
        """The sweep run's name, e.g. ``sweep adam lr×3 seed×1 1000ep`` or ``sweep adam,sgd relu,tanh lr×3 seed×3
        1000ep``."""
        kinds = [",".join(values) for values, default in ((self.activations, ("relu",)), (self.recycles, ("none",)))
                 if tuple(values) != default]
        return " ".join(["sweep", ",".join(self.optimizers), *kinds, f"lr×{len(self.lrs)}", f"seed×{len(self.seeds)}",
                         f"{self.train.epochs}ep"])

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

    def params(self) -> dict[str, str]:
        """What the sweep run logs: its own settings and every setting its variants share, under the names the
        variants log them with."""
        shared = {k: v for k, v in self.train.as_params().items() if k not in PER_VARIANT}
        return {**self.sweep.as_params(), "max_parallel": str(self.parallel), **shared}


def parse_sweep_config(overrides: Mapping[str, str]) -> SweepConfig:
    """Parse string parameters; every bad value is an :class:`InvalidParameter` before anything runs."""
    overrides = dict(overrides)
    for name in SWEPT:
        if name in overrides:
            raise InvalidParameter(name, overrides[name], f"the sweep varies it: pass {name}s= instead")
    sweep_names = set(SweepSettings.names())
    sweep = SweepSettings.from_strings({k: v for k, v in overrides.items() if k in sweep_names})
    train = TrainConfig.from_strings({k: v for k, v in overrides.items() if k not in sweep_names})
    return SweepConfig(sweep, train)
