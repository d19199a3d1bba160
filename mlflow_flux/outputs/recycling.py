"""Neuron recycling as an action of the watched run: at snapshots, a policy chooses units from the recorder's
statistics (:mod:`mlflow_flux.recycling`), the units are reset exactly (:mod:`mlflow_flux.recording.resets`), the
recorder's state for them restarts, and every reset is recorded (:mod:`mlflow_flux.traces.resets`) and counted in
metrics.

Decided on rank 0 from the snapshot's statistics (the all-reduced ones under torch.distributed), sent to every rank
(one ``broadcast_object_list`` on a decision snapshot), and applied on every rank with the same seeded draws, so the
replicas stay equal; under FSDP2 each rank resets the rows it holds. docs/recycling.md says what each policy does,
from which reference, and where it differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FluxError
from ..recording import distributed
from ..recording.accumulators import _local
from ..recording.resets import (
    check_optimizer,
    new_incoming,
    reset_draws,
    reset_incoming,
    reset_incoming_in_c,
    shrink_and_perturb,
    zero_outgoing,
)
from ..recycling import ContributionUtility, redo_choice, redo_scores
from ..traces.resets import RESETS_DIR, RESETS_FILE, RESETS_TAG, write_resets
from .base import ACTION, Closing, RunOutput, Step, WatchedRun

__all__ = ["Recycling", "RecyclingPolicy", "Redo", "ContinualBackprop", "ShrinkPerturb", "LayerView", "Choice"]

_log = logging.getLogger(__name__)


@dataclass
class LayerView:
    """What a policy sees of one layer at a decision: its statistics at this snapshot (trace columns, one value per
    unit), the modules, and the optimizer steps since the previous snapshot."""

    name: str
    stats: dict[str, np.ndarray]
    module: torch.nn.Module
    weight_axis: int
    following: torch.nn.Module | None
    following_axis: int
    steps: int
    snapshot: int  # decisions count snapshots from 1

    def outgoing_magnitude(self) -> np.ndarray:
        """Each unit's mean |outgoing weight| (continual backprop's ``|w_out|.mean(0)``), from the next layer."""
        weight = _local(self.following.weight.data).detach()
        columns = weight if self.following_axis == 0 else weight.t()
        units = len(next(iter(self.stats.values())))
        per_unit = columns.abs().double().transpose(0, 1).reshape(units, -1)
        return per_unit.mean(dim=1).cpu().numpy()


@dataclass
class Choice:
    """Units to reset (ascending indices) with the score that chose each, and what to add to the next layer's bias
    before its columns are zeroed (continual backprop's compensation; None: nothing)."""

    units: np.ndarray
    scores: np.ndarray
    compensation: np.ndarray | None = None


class RecyclingPolicy:
    """A policy: which units of a layer to reset at a snapshot. Subclass it and override :meth:`choose` to write your
    own from the recorded statistics; pass it as ``watch(model, optimizer=opt, outputs=[Recycling(MyPolicy())])``.

    Attributes:
        name: how the reset table names it.
        period: decide on every ``period``-th snapshot.
        init: the reset units' incoming weights (:data:`mlflow_flux.recording.resets.INITIALISERS`).
        reset_bias_moments: also zero the optimizer's moments of the reset units' biases.
    """

    name = "custom"
    period = 1
    init = "xavier_uniform"
    reset_bias_moments = False

    def choose(self, layer: LayerView) -> Choice:
        raise NotImplementedError

    def restarted(self, layer: str, units: np.ndarray) -> None:
        """The units were reset (their state in the policy, if any, starts again)."""


class Redo(RecyclingPolicy):
    """ReDo: reset the units whose activity score is at most ``tau``, every ``period`` snapshots
    (google/dopamine ``labs/redo/weight_recyclers.py``: xavier_uniform incoming, bias 0, outgoing 0, the moments of
    the incoming and outgoing weights zeroed, the step count kept)."""

    name = "redo"

    def __init__(self, tau: float = 0.1, period: int = 10, init: str = "xavier_uniform") -> None:
        self.tau, self.period, self.init = tau, period, init
        self.previous: dict[str, np.ndarray] = {}  # the units the last decision reset, per layer

    def choose(self, layer: LayerView) -> Choice:
        scores = redo_scores(layer.stats["act_relu_mean"])
        units = np.flatnonzero(redo_choice(layer.stats["act_relu_mean"], self.tau))
        return Choice(units, scores[units])

    def dormant_again(self, layer: str, act_relu_mean: np.ndarray) -> tuple[int, int]:
        """Of the units the previous decision reset, how many are dormant again now (dopamine's
        ``dead_intersected_percent``): ``(again, previously reset)``."""
        before = self.previous.get(layer)
        if before is None or not len(before):
            return 0, 0
        now = redo_choice(act_relu_mean, self.tau)
        return int(now[before].sum()), len(before)


class ContinualBackprop(RecyclingPolicy):
    """Continual backprop (shibhansh/loss-of-plasticity ``lop/algos/gnt.py``, contribution utility, accumulated
    replacement): decided at every snapshot from the utility updated for the steps since the previous one;
    incoming weights U(-b, b), b = gain(relu) sqrt(3 / fan_in), bias 0, the next layer's bias compensated with the
    unit's running mean activation, outgoing 0, the moments of all three zeroed, the step count kept."""

    name = "cbp"
    init = "cbp_kaiming"
    reset_bias_moments = True

    def __init__(self, rate: float = 1e-4, maturity: int = 100, decay: float = 0.99, init: str = "cbp_kaiming") -> None:
        self.rate, self.maturity, self.decay, self.init = rate, maturity, decay, init
        self.period = 1
        self.utility: dict[str, ContributionUtility] = {}

    def choose(self, layer: LayerView) -> Choice:
        activity = layer.stats["act_relu_mean"]  # E|h| = E relu(output) behind a ReLU
        utility = self.utility.setdefault(layer.name, ContributionUtility.of(len(activity)))
        utility.update(activity * layer.outgoing_magnitude(), activity, layer.steps, self.decay)
        units = utility.select(self.rate, self.maturity, layer.steps, self.decay)
        scores = utility.corrected(self.decay)[units]
        compensation = None
        if len(units):
            mean_act = utility.corrected_mean_act(self.decay)[units]
            weight = _local(layer.following.weight.data).detach()
            columns = (weight if layer.following_axis == 0 else weight.t()).double()
            per_unit = columns.shape[1] // len(activity)
            flat = columns.reshape(columns.shape[0], len(activity), per_unit, -1).sum(dim=(2, 3))
            compensation = (flat[:, units].cpu().numpy() * mean_act[None, :]).sum(axis=1)
        return Choice(units, scores, compensation)

    def restarted(self, layer: str, units: np.ndarray) -> None:
        if layer in self.utility:
            self.utility[layer].restart(units)


class ShrinkPerturb(RecyclingPolicy):
    """Shrink and perturb (Ash & Adams 2020): every ``period`` snapshots, every weight and bias of the watched layers
    becomes ``shrink * it + noise * a fresh draw of the layer's default initialisation``; no unit is singled out."""

    name = "shrink_perturb"

    def __init__(self, shrink: float = 0.8, noise: float = 1e-3, period: int = 10) -> None:
        self.shrink, self.noise, self.period = shrink, noise, period


def policy_from(settings) -> RecyclingPolicy:
    """The policy the settings name, with their parameters (the reference's initialiser unless another is named)."""
    init = None if settings.recycle_init == "reference" else settings.recycle_init
    if settings.recycle == "redo":
        return Redo(settings.recycle_tau, settings.recycle_period, init or "xavier_uniform")
    if settings.recycle == "cbp":
        return ContinualBackprop(settings.recycle_rate, settings.recycle_maturity, settings.recycle_decay,
                                 init or "cbp_kaiming")
    return ShrinkPerturb(settings.recycle_shrink, settings.recycle_noise, settings.recycle_period)


class Recycling(RunOutput):
    """Resets units as ``policy`` chooses, at snapshots; records every reset.

    Args:
        policy: a :class:`RecyclingPolicy` (``Redo``, ``ContinualBackprop``, ``ShrinkPerturb`` or your own).
        dry_run: record what would be reset, change nothing.
        seed: seeds the reset weights (the same on every rank).
        optimizer_reset: ``fn(optimizer, parameter, index)`` zeroing an optimizer's state at ``index`` (parameter
            indexing), for an optimizer other than Adam, AdamW or SGD.
    """

    kind = ACTION

    @classmethod
    def from_settings(cls, settings) -> Recycling:
        return cls(policy_from(settings), dry_run=settings.recycle_dry_run, seed=settings.recycle_seed)

    def __init__(self, policy: RecyclingPolicy, *, dry_run: bool = False, seed: int = 0,
                 optimizer_reset=None) -> None:
        self.policy, self.dry_run, self.seed, self.optimizer_reset = policy, dry_run, seed, optimizer_reset
        self.rows: list[tuple] = []  # the reset table: blocks (epoch, step, layer, units, policy, scores, dry run)
        self.resets = 0
        self._applied = 0  # reset decisions applied: with the seed and the layer, what seeds a layer's draws
        self._steps = self._last_steps = 0
        self._snapshots = 0
        self.run: WatchedRun | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._handle = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self, run: WatchedRun) -> None:
        recorder = run.recorder
        self.optimizer = recorder.optimizer
        check_optimizer(self.optimizer, self.optimizer_reset)
        if recorder.neuron_budget:
            raise FluxError("recycle needs every neuron recorded: its decisions read each unit's statistics "
                            "(neuron_budget=0)")
        self.run = run
        if run.client is not None:  # rank 0: readers look for the reset table of runs that carry the tag
            run.client.set_tag(run.run_id, RESETS_TAG, self.policy.name)
        self._handle = self.optimizer.register_step_post_hook(self._count_step)
        names = recorder.layer_names
        self.layers = names if isinstance(self.policy, ShrinkPerturb) else names[:-1]  # the output is never reset
        if not isinstance(self.policy, ShrinkPerturb):
            # A unit's outgoing weights are in the next layer: the layers whose next layer is known (found in a
            # chain, or given) are the ones reset. In a transformer that is each block's MLP input (given), not the
            # attention maps, whose outputs feed no single layer.
            missing = [name for name in self.layers if recorder.links.get(name) is None or
                       recorder.links[name].next is None]
            if len(missing) == len(self.layers):
                raise FluxError(f"recycle resets a unit's outgoing weights, in the next layer: none is known after "
                                f"{', '.join(missing)}; pass watch(..., next_layers={{{missing[0]!r}: ...}})")
            if missing:
                kept = len(self.layers) - len(missing)
                _log.warning("run %s: recycle resets %d layer%s; not %s (no next layer known: "
                             "watch(next_layers=...) names one)", run.run_id, kept, "" if kept == 1 else "s",
                             ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
                self.layers = [name for name in self.layers if name not in missing]

    def _count_step(self, optimizer, args, kwargs) -> None:
        self._steps += 1

    def end_epoch(self, step: Step) -> dict[str, float] | None:
        recorder = self.run.recorder
        if not recorder.should_snapshot(step.epoch):
            return None
        self._snapshots += 1
        steps, self._last_steps = self._steps - self._last_steps, self._steps
        if self._snapshots % self.policy.period:
            return None
        plan, metrics = (self._decide(step.snapshot, steps) if recorder.rank == 0 else (None, {}))
        plan = _shared(plan)
        if not self.dry_run:
            self._apply(plan)
        if not self.dry_run:  # reset units start their windows again (shrink and perturb resets no unit)
            step.resets.update({layer: choice.units for layer, choice in plan.items()
                                if len(choice.units) and choice.units[0] >= 0})
        if recorder.rank != 0:
            return None
        self.rows += [(step.epoch, self._steps, layer, choice.units, self.policy.name, choice.scores, self.dry_run)
                      for layer, choice in plan.items() if len(choice.units)]
        return metrics

    def _decide(self, snapshot, steps: int) -> tuple[dict[str, Choice], dict[str, float]]:
        recorder = self.run.recorder
        if isinstance(self.policy, ShrinkPerturb):
            chosen = {name: Choice(np.array([-1]), np.array([self.policy.shrink])) for name in self.layers}
            return chosen, {"flux/recycle/reset_layers": float(len(chosen))}
        plan, again, before, units = {}, 0, 0, 0
        for name in self.layers:
            link = recorder.link(name)
            if link is None or link.next is None:
                continue  # the first pass did not confirm the chain: not reset (a warning said so)
            rows = snapshot.layer_slice(name)
            stats = {column: snapshot.column(column)[rows] for column in ("act_relu_mean", "grad_abs_mean", "w_norm")}
            module, following = recorder.module_of(name), recorder.module_of(link.next)
            view = LayerView(name, stats, module, recorder.weight_axis(name), following,
                             recorder.weight_axis(link.next), steps, self._snapshots)
            if isinstance(self.policy, Redo):
                a, b = self.policy.dormant_again(name, stats["act_relu_mean"])
                again, before = again + a, before + b
            choice = self.policy.choose(view)
            plan[name] = choice
            units += len(choice.units)
        if isinstance(self.policy, Redo):
            self.policy.previous = {name: choice.units for name, choice in plan.items()}
        metrics = {"flux/recycle/reset": float(units)}
        if before:
            metrics["flux/recycle/dormant_again_frac"] = again / before
        return plan, metrics

    def _apply(self, plan: dict[str, Choice]) -> None:
        recorder = self.run.recorder
        chosen = [(name, choice) for name, choice in plan.items() if len(choice.units)]
        order = {name: i for i, name in enumerate(recorder.layer_names)}
        applied, self._applied = self._applied, self._applied + 1

        def draws(name: str):
            return reset_draws(self.seed, applied, order[name])

        if isinstance(self.policy, ShrinkPerturb):
            self._each([lambda name=name: shrink_and_perturb(
                recorder.module_of(name), recorder.weight_axis(name), self.policy.shrink, self.policy.noise,
                draws(name), recorder.shard_of(name)) for name, _ in chosen])
            return

        # A layer whose columns no outgoing phase zeroes ends this reset with its incoming weights: its copies may
        # take them in the same C sweep (then it needs no restart_units; of two copies the initial one, which the
        # next snapshot also reads the step from); any other layer's copies wait for the end.
        followers = {recorder.link(name).next for name, _ in chosen}
        copied: set[str] = set()

        def incoming(name: str, choice: Choice) -> None:
            module, axis = recorder.module_of(name), recorder.weight_axis(name)
            units = torch.as_tensor(choice.units, dtype=torch.long)
            copies = (recorder.copies_as_stored(name) if name not in followers and self.optimizer_reset is None
                      else None)  # None too for a shard: its rows go through reset_incoming
            if copies is not None and reset_incoming_in_c(module, axis, units, self.policy.init, draws(name),
                                                          self.optimizer, copies,
                                                          reset_bias_moments=self.policy.reset_bias_moments):
                recorder.took_new_weights(name, choice.units)
                copied.add(name)
                return
            rows, bias = new_incoming(module, axis, len(choice.units), self.policy.init, draws(name))
            reset_incoming(module, axis, units, rows, bias,
                           self.optimizer, reset_bias_moments=self.policy.reset_bias_moments,
                           shard=recorder.shard_of(name), optimizer_reset=self.optimizer_reset)

        def outgoing(name: str, choice: Choice) -> None:
            following = recorder.link(name).next
            compensation = None if choice.compensation is None else torch.as_tensor(choice.compensation)
            zero_outgoing(torch.as_tensor(choice.units, dtype=torch.long),
                          recorder.module_of(name).weight.shape[recorder.weight_axis(name)],
                          recorder.module_of(following), recorder.weight_axis(following), self.optimizer,
                          compensation=compensation, shard=recorder.shard_of(following),
                          optimizer_reset=self.optimizer_reset)

        # Every layer's incoming weights first, every outgoing column after (dopamine's order: a weight that is
        # both ends at 0), then the recorder's copies take the weights as they end. Within a phase each layer
        # writes tensors of its own (its weight, bias and their moments; the next layer's weight and moments; its
        # own copies, read from its own weight, which no task of that phase writes), so the layers are reset side
        # by side: most of a large reset is single-threaded (scatters, the draws).
        self._each([lambda name=name, choice=choice: incoming(name, choice) for name, choice in chosen])
        self._each([lambda name=name, choice=choice: outgoing(name, choice) for name, choice in chosen])
        self._each([lambda name=name, choice=choice: recorder.restart_units(name, choice.units)
                    for name, choice in chosen if name not in copied])
        for name, choice in chosen:
            self.policy.restarted(name, choice.units)
        self.resets += sum(len(choice.units) for _, choice in chosen)

    def _each(self, tasks: list[Callable[[], None]]) -> None:
        """Run the tasks side by side on the CPU's threads (one by one with a user's ``optimizer_reset``, whose code
        need not be thread-safe); the first error raised is raised here, after every task ended."""
        workers = 1 if self.optimizer_reset is not None else min(len(tasks), torch.get_num_threads())
        if workers <= 1:
            for task in tasks:
                task()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(torch.get_num_threads(), thread_name_prefix="mlflow-flux-recycle")
        futures = [self._pool.submit(task) for task in tasks]
        wait(futures)
        for future in futures:
            future.result()

    def close(self, closing: Closing) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        run = self.run
        if run is None or run.rank != 0 or run.uploads is None:
            return
        directory = run.spool / RESETS_DIR
        try:
            directory.mkdir(parents=True, exist_ok=True)
            write_resets(self.rows, directory / RESETS_FILE)
        except OSError as exc:
            _log.warning("the reset table of run %s was not written: %s", run.run_id, exc)
            return
        run.uploads.upload(directory / RESETS_FILE, RESETS_DIR)


def _shared(plan: dict[str, Choice] | None) -> dict[str, Choice]:
    """Rank 0's plan on every rank (one broadcast under torch.distributed); alone, the plan itself."""
    if distributed.world()[1] == 1:
        return plan or {}
    import torch.distributed as dist

    box = [plan]
    dist.broadcast_object_list(box, src=0)
    return box[0] or {}
