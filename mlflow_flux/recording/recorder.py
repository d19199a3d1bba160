"""The recorder: hooks on the watched layers, and snapshots of every neuron.

Per step the hooks only reduce over the batch and add in place into per-neuron buffers on the model's device
(:mod:`.accumulators`), with no host synchronisation; once per snapshot the statistics of every layer are computed
and copied to the host once (or written by the C extension on CPU), after one ``all_gather`` across ranks under
torch.distributed.

A watched layer's ``forward`` is wrapped (:class:`WatchedForward`) rather than hooked: any forward hook sends every
call of its module through ``nn.Module``'s slow path (about 2.5% of the paper-scale step, measured), and the wrapper
is plain Python that ``torch.compile`` traces into its graph. Weight gradients come from a tensor hook per weight,
or, with ``optimizer=``, from the gradients each optimizer step applies.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import fluctuation
from ..errors import FluxError
from ..statistics import CHAINED, COMPUTED, COMPUTED_ROWS, sum_row
from ..traces.schema import STAT_COLUMNS, Snapshot
from . import distributed
from . import fastpath as kernels
from .accumulators import LayerAccumulator, applied_by_tap, weight_and_bias
from .chains import Link, LinkProbe, find_links, outgoing_columns
from .layers import LayerSpec, select_layers
from .redundancy import unit_redundancy

__all__ = ["NeuronRecorder", "WatchedForward", "unwrap", "neuron_subset"]

_log = logging.getLogger(__name__)
W_STEP, W_NORM, W_REL_STEP, W_DIST0 = (STAT_COLUMNS.index(c) for c in ("w_step", "w_norm", "w_rel_step", "w_dist0"))
CHAIN_ROWS = [STAT_COLUMNS.index(c) for c in CHAINED]  # partner, partner_distance, fanout_rel
# The chunk a snapshot's torch path works in: temporaries of about two float32 copies of it must stay under a quarter
# of the largest watched weight (docs/traces.md), and no chunk is smaller than this many weights.
MIN_CHUNK_ELEMENTS = 1 << 16
# Past this many weights a snapshot's C passes, and the reading of the gradients an optimizer step applies (both
# memory-bound, the GIL released), run on two threads: a GPT-2-small-sized model's snapshot took 114 ms on one core
# of this 2-core host and ~70 ms on two (benchmarks/big_model.py). Below it one thread: a thread's start would cost
# more than it saves.
PARALLEL_ELEMENTS = 1 << 23


def run_split(jobs: Sequence[tuple[int, Callable[[], None]]]) -> None:
    """Run ``(elements, job)`` pairs: in two halves of about equal elements, one on a helper thread, when together
    they pass PARALLEL_ELEMENTS and torch may use two threads; else one after the other on this thread. The first
    exception is raised here once both halves are done."""
    if sum(size for size, _ in jobs) < PARALLEL_ELEMENTS or torch.get_num_threads() < 2:
        for _, job in jobs:
            job()
        return
    halves: tuple[list[Callable[[], None]], list[Callable[[], None]]] = ([], [])
    load = [0, 0]
    for size, job in sorted(jobs, key=lambda pair: pair[0], reverse=True):  # the biggest first, to the lighter half
        side = int(load[1] < load[0])
        halves[side].append(job)
        load[side] += size
    failed: list[BaseException] = []

    def run_second() -> None:
        try:
            for job in halves[1]:
                job()
        except BaseException as exc:  # noqa: BLE001 -- raised again on the caller's thread
            failed.append(exc)

    worker = threading.Thread(target=run_second, name="mlflow-flux-split", daemon=True)
    worker.start()
    try:
        for job in halves[0]:
            job()
    finally:
        worker.join()
    if failed:
        raise failed[0]


def neuron_subset(name: str, size: int, budget: int) -> np.ndarray | None:
    """The neurons recorded of a layer of ``size`` under a budget of ``budget`` per layer: all (None) when it fits,
    else a fixed subset, the same for the same layer name and size in every run (seeded by the name).

    >>> neuron_subset("fc", 4, 0) is None, neuron_subset("fc", 4, 8) is None, len(neuron_subset("fc", 100, 10))
    (True, True, 10)
    >>> bool((neuron_subset("fc", 100, 10) == neuron_subset("fc", 100, 10)).all())
    True
    """
    if budget <= 0 or size <= budget:
        return None
    seed = [0, *name.encode()]  # stable across processes and Python versions (no hash randomisation)
    return np.sort(np.random.default_rng(seed).choice(size, budget, replace=False))


def _in_backward() -> bool:
    """Whether autograd is running a backward pass now: a forward call then is a recomputation (activation
    checkpointing, ``torch.utils.checkpoint`` in either mode) of a forward that was already counted."""
    return torch._C._current_graph_task_id() != -1


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel`` or ``torch.compile``'s wrapper, whose names are the
    user's (``encoder.fc1``, not ``module.encoder.fc1`` or ``_orig_mod.encoder.fc1``)."""
    while True:
        name = type(model).__name__
        if name == "DistributedDataParallel" and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        elif name == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


class WatchedForward:
    """A watched layer's ``forward``: the original runs, then its output goes to the layer's accumulator.

    Eagerly the output goes to the C tap (or the torch path it falls back to); under ``torch.compile`` the graph
    calls the torch path as one custom operator. Only training passes count: an evaluation pass (``eval()`` or
    ``no_grad``) would mix another distribution into the epoch's activity. A deep copy or pickle of the model gets
    the original forward back (``__reduce__``), so the copy is a plain model.
    """

    __slots__ = ("accumulator", "active", "module", "original", "probe")

    def __init__(self, module: nn.Module, accumulator: LayerAccumulator, probe: LinkProbe | None = None) -> None:
        self.original = module.forward
        self.module = module
        self.accumulator = accumulator
        self.active = True
        self.probe = probe  # checks the layer's chain on the first training pass, then None

    def __call__(self, *args, **kwargs):
        output = self.original(*args, **kwargs)
        if not self.active or not isinstance(output, torch.Tensor):
            return output
        if torch.compiler.is_compiling():
            if self.module.training and torch.is_grad_enabled():
                self.accumulator.add_output_compiled(output)
        elif self.module.training and torch.is_grad_enabled():
            if not _in_backward():  # a checkpointed layer's forward, run again for its backward, counts once
                self.accumulator.forward_tap(output)
                if self.probe is not None:
                    self.probe.layer_called(self.accumulator.name, args, output)
        elif output.requires_grad and self.accumulator.gradients_per_pass:
            # An evaluation pass with gradients (a saliency map): its outputs do not count, nor its weight gradient.
            output.register_hook(self.accumulator.skip_next_gradient)
        return output

    def __reduce__(self):
        return (kernels._same, (self.original,))


class _ForwardHandle:
    """Puts a module's forward back; removing twice is harmless."""

    def __init__(self, module: nn.Module, wrapper: WatchedForward) -> None:
        self.module_ref = weakref.ref(module)
        self.own = module.__dict__.get("forward")  # a forward set on the instance before us (another wrapper)
        self.wrapper = wrapper
        module.__dict__["forward"] = wrapper

    def remove(self) -> None:
        self.wrapper.active = False  # harmless wherever a reference to it survives, e.g. inside a later wrapper
        module = self.module_ref()
        if module is not None and module.__dict__.get("forward") is self.wrapper:
            if self.own is None:
                del module.__dict__["forward"]
            else:
                module.__dict__["forward"] = self.own


class NeuronRecorder:
    """Records per-neuron statistics of a model's layers; a context manager that removes its hooks on exit.

    Args:
        model: the model to watch (plain, or wrapped by ``DistributedDataParallel`` or ``torch.compile``).
        layers: names, glob patterns or module types (see :func:`~mlflow_flux.recording.layers.select_layers`).
        snapshot_every: take a snapshot on every N-th index given to :meth:`should_snapshot`.
        optimizer: read gradients as this optimizer applies them (unscaled under a GradScaler, once per step under
            gradient accumulation, synchronized under DDP, not at all for a step the scaler skips; after the step
            when ``step(closure)`` computes them, as Lightning does); without it, a tensor hook adds each backward
            pass's gradient.

    Raises:
        FluxError: (at :meth:`attach`) a layer kind the recorder does not define, a sharded (FSDP) model, or
            torch.distributed without ``optimizer=``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[LayerSpec] | None = None, snapshot_every: int = 1,
                 optimizer: torch.optim.Optimizer | None = None, *, w_step: bool = True, w_dist0: bool = True,
                 neuron_budget: int = 0, redundancy: bool = False, activations: dict[str, str] | None = None,
                 next_layers: dict[str, str] | None = None) -> None:
        if snapshot_every < 1:
            raise FluxError(f"snapshot_every must be >= 1, got {snapshot_every}")
        self.model = model
        self.layer_specs = layers
        self.snapshot_every = snapshot_every
        self.optimizer = optimizer
        self.w_step, self.w_dist0, self.neuron_budget = w_step, w_dist0, neuron_budget
        self.redundancy = redundancy
        self.declared = (dict(activations or {}), dict(next_layers or {}))
        self.links: dict[str, Link] = {}
        self._probe: LinkProbe | None = None
        self._wrappers: list[WatchedForward] = []
        self.rank, self.world_size = 0, 1
        self._states: list[LayerAccumulator] = []
        self._handles: list = []
        self._rows: tuple[np.ndarray, np.ndarray] | None = None
        self._warned_unseen: set[str] = set()
        self._snapshots = 0
        self._closure_step = False

    @property
    def layer_names(self) -> list[str]:
        return [state.name for state in self._states]

    @property
    def layer_sizes(self) -> list[int]:
        """Neurons recorded per watched layer (all, or the subset under ``neuron_budget``), in the order of
        :attr:`layer_names`."""
        return [state.recorded for state in self._states]

    @property
    def layer_widths(self) -> list[int]:
        """Neurons per watched layer, recorded or not."""
        return [state.size for state in self._states]

    @property
    def memory(self) -> dict[str, int]:
        """Bytes the recorder keeps for the whole run: on the model's device (per-neuron sums) and in host memory
        (the weight copies behind ``w_step`` and ``w_dist0``, made at the first snapshot)."""
        totals = {"device": 0, "host": 0}
        for state in self._states:
            for where, size in state.memory.items():
                totals[where] += size
        return totals

    def samples_since_snapshot(self) -> dict[str, int]:
        """Outputs counted per watched layer since the last snapshot (a sample, or each position of a conv's plane):
        a forward recomputed by activation checkpointing is not counted again."""
        row = sum_row("count")
        return {state.name: int(state.sums[row, 0].item()) if state.size else 0 for state in self._states}

    @property
    def activations(self) -> tuple[str | None, ...]:
        """The activation known to follow each watched layer (None: not known, or not yet seen in a training pass)."""
        return tuple(self.links[name].activation if name in self.links and self.links[name].verified else None
                     for name in self.layer_names)

    def fingerprint(self) -> str:
        """A hash of the watched layers' weights and biases as they are now (SHA-256 of their bytes, shapes and
        dtypes, in the layers' order): equal for two runs that start from the same weights, exactly. Under FSDP2
        every rank gathers the whole tensors (a collective: every rank calls it)."""
        import hashlib

        digest = hashlib.sha256()
        with torch.no_grad():
            for state in self._states:
                module = state.module_ref()
                for tensor in (module.weight, getattr(module, "bias", None)):
                    if not isinstance(tensor, torch.Tensor):
                        digest.update(b"none")
                        continue
                    whole = tensor.full_tensor() if distributed.is_dtensor(tensor) else tensor
                    data = whole.detach().cpu().contiguous()
                    digest.update(f"{tuple(data.shape)}:{data.dtype}".encode())
                    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.hexdigest()

    def _state(self, name: str) -> LayerAccumulator:
        for state in self._states:
            if state.name == name:
                return state
        raise FluxError(f"layer {name!r} is not watched")

    def module_of(self, name: str) -> nn.Module:
        """The watched layer's module."""
        module = self._state(name).module_ref()
        if module is None:
            raise FluxError(f"layer {name!r} no longer exists")
        return module

    def weight_axis(self, name: str) -> int:
        """The watched layer's neuron axis in its weight (1: transformers' Conv1D, a column per neuron)."""
        return self._state(name).kind.weight_axis

    def shard_of(self, name: str) -> slice | None:
        """Under FSDP2, the rows of the layer this rank holds; else None."""
        return self._state(name).shard

    def restart_units(self, name: str, units) -> None:
        """Units of a layer were reset: their distance from the start (``w_dist0``) and their last step (``w_step``)
        are measured from their new weights on."""
        state = self._state(name)
        module = self.module_of(name)
        state.restart(module, np.asarray(units, dtype=np.int64))

    def copies_as_stored(self, name: str) -> tuple[torch.Tensor, ...] | None:
        """The layer's weight copies in the stored weight's layout, which a reset may write with the weight (see
        :meth:`LayerAccumulator.copies_as_stored`); None where :meth:`restart_units` must take them. Having
        written them, the reset calls :meth:`took_new_weights`."""
        return self._state(name).copies_as_stored()

    def took_new_weights(self, name: str, units) -> None:
        """``units`` of a layer took their new weights in :meth:`copies_as_stored`'s copies: their ``w_step`` and
        ``w_dist0`` are measured from them on, as after :meth:`restart_units`."""
        self._state(name).took_new_weights(np.asarray(units, dtype=np.int64))

    def link(self, name: str) -> Link | None:
        """The watched layer's place in a chain, once known (its activation and next layer), else None."""
        link = self.links.get(name)
        return link if link is not None and link.verified else None

    @property
    def path(self) -> str:
        """``"c"`` when the compiled fast path serves the layers (CPU), else ``"torch"``."""
        return "c" if any(state.fast is not None for state in self._states) else "torch"

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def refuse_unsupported(self) -> None:
        """Raise FluxError for a wrapping the recorder cannot read (FSDP1, a DTensor not sharded on dim 0)."""
        distributed.refuse_unsupported(unwrap(self.model))

    def attach(self) -> NeuronRecorder:
        """Resolve the layers, allocate buffers and install the hooks."""
        if self.attached:
            return self
        model = unwrap(self.model)
        distributed.refuse_unsupported(model)
        self.rank, self.world_size = distributed.world()
        if self.world_size > 1 and self.optimizer is None:
            raise FluxError("under torch.distributed, pass watch(model, optimizer=optimizer): gradients are read as "
                            "the optimizer applies them, once DDP has synchronized them")
        layers = select_layers(model, self.layer_specs)
        fastpath = kernels.fastpath()
        largest = max(layer.module.weight.numel() * layer.module.weight.element_size() for layer in layers)
        # The torch path's peak during a snapshot is about nine float32 chunks (a row-order copy, the differences,
        # the allocator's slack; benchmarks/big_model.py measures it): chunks of 1/48 of the largest weight keep it
        # under a quarter of that weight.
        chunk = max(MIN_CHUNK_ELEMENTS, largest // 4 // 48)
        self._states = [
            LayerAccumulator(layer, fastpath, keep_previous=self.w_step, keep_initial=self.w_dist0,
                             neurons=neuron_subset(layer.name, layer.size, self.neuron_budget), chunk_elements=chunk)
            for layer in layers
        ]
        for layer, state in zip(layers, self._states):
            state.gradients_per_pass = self.optimizer is None
            state.shard = distributed.shard_rows(layer.module.weight)
            if state.shard is not None and (layer.kind.weight_axis != 0 or state.neurons is not None):
                raise FluxError(f"layer {layer.name!r} is sharded by FSDP2 "
                                + ("along its inputs (transformers' Conv1D keeps a neuron per column): its rank "
                                   "holds no whole neuron" if layer.kind.weight_axis != 0 else
                                   "and neuron_budget picks a subset: record it whole (neuron_budget=0)"))
        self.links = find_links(model, layers, *self.declared)
        self._probe = LinkProbe(self.links)
        probe = None if self._probe.done else self._probe
        self._wrappers = []
        try:
            for layer, state in zip(layers, self._states):
                wrapper = WatchedForward(layer.module, state, probe)
                self._wrappers.append(wrapper)
                self._handles.append(_ForwardHandle(layer.module, wrapper))
                if self.optimizer is None and layer.module.weight.requires_grad:
                    self._handles.append(layer.module.weight.register_hook(state.grad_tap))
            if self.optimizer is not None:
                self._handles.append(self.optimizer.register_step_pre_hook(self._on_optimizer_step))
                self._handles.append(self.optimizer.register_step_post_hook(self._after_closure_step))
        except BaseException:
            self.detach()
            raise
        sizes = self.layer_sizes
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        self._slices = tuple(slice(start, start + size) for start, size in zip(self._offsets, sizes))
        self._rows = (
            np.repeat(np.arange(len(sizes), dtype=np.int32), sizes),
            np.concatenate([np.arange(state.size, dtype=np.int32) if state.neurons is None
                            else state.neurons.astype(np.int32) for state in self._states]),
        )
        return self

    def _on_optimizer_step(self, optimizer, args, kwargs) -> None:
        if args or kwargs.get("closure") is not None:
            # step(closure) computes the gradients inside the step (Lightning, LBFGS): they are read after it.
            self._closure_step = True
            return
        self._read_applied_gradients(optimizer)

    def _after_closure_step(self, optimizer, args, kwargs) -> None:
        if self._closure_step:
            self._closure_step = False
            self._read_applied_gradients(optimizer)

    def _read_applied_gradients(self, optimizer) -> None:
        # A fused optimizer under a GradScaler unscales itself: the scaler hands it these two tensors.
        scale, found_inf = getattr(optimizer, "grad_scale", None), getattr(optimizer, "found_inf", None)
        applied = [(state, module.weight.grad) for state in self._states
                   if (module := state.module_ref()) is not None and module.weight.grad is not None]
        jobs = [(grad.numel(), functools.partial(state.add_applied_gradient, grad, scale, found_inf))
                for state, grad in applied]
        if all(g.is_cpu and applied_by_tap(g, scale, found_inf) for _, g in applied):
            # The C taps, memory-bound: on two threads for a big model (never a DTensor's, whose reductions may talk
            # to other ranks, which must see them in one order).
            run_split(jobs)
        else:
            for _, job in jobs:
                job()

    def detach(self) -> None:
        """Remove every hook; calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._settle_links()
        if self._probe is not None:
            self._probe.remove()

    def _settle_links(self) -> None:
        """After a training pass: the chains the pass showed are known; the wrappers stop probing once all are."""
        if self._probe is None:
            return
        self._probe.end_pass()
        if self._probe.done:
            for wrapper in self._wrappers:
                wrapper.probe = None

    def __enter__(self) -> NeuronRecorder:
        return self.attach()

    def __exit__(self, *exc_info: object) -> None:
        self.detach()

    def should_snapshot(self, index: int) -> bool:
        return index % self.snapshot_every == 0

    def snapshot(self, epoch: int) -> Snapshot | None:
        """Statistics of every watched neuron since the previous snapshot; resets the sums.

        Under torch.distributed every rank must call it at the same index (it gathers all ranks' sums once); only
        rank 0 gets the snapshot, the others None.
        """
        if self._rows is None:
            raise FluxError("the recorder is not attached: use it as a context manager or call attach() first")
        self._settle_links()  # every rank: an action needs the chains (the next layer of a reset unit)
        with torch.no_grad():
            gathered: dict[int, torch.Tensor] = {}
            if self.world_size > 1:
                distributed.pool(self._states)
                # FSDP2: every rank computes the statistics of the neurons it holds; rank 0 gets them all.
                sharded = [state for state in self._states if state.shard is not None]
                if sharded:
                    blocks = [state.stats(state.module_ref()) for state in sharded]
                    full = distributed.gather_shards(blocks, [state.size for state in sharded])
                    gathered = dict(zip(map(id, sharded), full)) if full is not None else {}
                if self.rank != 0:
                    for state in self._states:
                        state.reset()
                    return None
            return self._snapshot(epoch, gathered)

    def _snapshot(self, epoch: int, gathered: dict[int, torch.Tensor] | None = None) -> Snapshot:
        layer_index, neuron = self._rows
        # Column-major: each statistic is one contiguous column, which Arrow takes without a copy.
        stats = np.empty((len(STAT_COLUMNS), len(neuron)), dtype=np.float32)
        nonfinite, torch_path = 0, []
        modules = []
        for state in self._states:
            module = state.module_ref()
            if module is None:
                raise FluxError(f"layer {state.name!r} no longer exists")
            modules.append(module)
        gathered = gathered or {}
        fast = self._fast_snapshots(modules, stats, [id(state) not in gathered for state in self._states])
        for state, start, module, counted in zip(self._states, self._offsets, modules, fast):
            if id(state) in gathered:  # FSDP2: every rank's neurons, put together
                torch_path.append((start, state, gathered[id(state)], weight_and_bias(module)[1] is not None))
                continue
            if counted is None:
                has_bias = weight_and_bias(module)[1] is not None
                torch_path.append((start, state, state.stats(module), has_bias))
            else:
                nonfinite += counted
        if torch_path:
            # The snapshot's one device-to-host copy for every layer the fast path did not take.
            device = torch_path[0][2].device  # a model may span devices
            host = torch.cat([block.to(device) for _, _, block, _ in torch_path]).cpu().numpy()
            row = 0
            computed = len(COMPUTED)
            rows_out = list(COMPUTED_ROWS)
            for start, state, block, has_bias in torch_path:
                part = host[row : row + len(block)]
                row += len(block)
                stats[rows_out, start : start + len(block)] = part[:, :computed].T
                mask = state.defined_mask(part, has_bias)
                nonfinite += int((~np.isfinite(part[:, :computed]) & mask).sum())
        for state, rows in zip(self._states, self._slices):
            nonfinite += state.settle_steps(stats[W_STEP, rows], stats[W_DIST0, rows])
        stats[W_REL_STEP] = fluctuation.relative_update(stats[W_STEP], stats[W_NORM])
        self._chain_statistics(stats, modules)
        self._snapshots += 1
        if self._snapshots <= 2:  # what the check catches shows from the first snapshot on
            self._warn_unseen(stats)
        return Snapshot(epoch, self.layer_names, layer_index, neuron, stats, nonfinite, self._slices)

    def _chain_statistics(self, stats: np.ndarray, modules: list[nn.Module]) -> None:
        """The redundant-unit columns of every layer whose chain is known (NaN for the others)."""
        stats[CHAIN_ROWS] = np.nan
        if not self.redundancy:
            return
        by_name = {state.name: (state, module) for state, module in zip(self._states, modules)}
        for state, module, rows in zip(self._states, modules, self._slices):
            link = self.link(state.name)
            if link is None or state.shard is not None or state.neurons is not None:
                continue  # a chain not known, an FSDP2 shard (its rank holds only some of the units), or a layer
                # recorded under a neuron budget (a partner may be a unit the trace does not hold)
            weight, bias = weight_and_bias(module, state.kind.weight_axis)
            outgoing = None
            if link.next is not None and link.next in by_name:
                following_state, following = by_name[link.next]
                if following_state.shard is None:
                    outgoing = outgoing_columns(following.weight.data, state.size, following_state.kind.weight_axis)
            values = unit_redundancy(weight.reshape(weight.shape[0], -1), bias, link.activation, outgoing,
                                     state.chunk_elements).numpy()
            if state.neurons is not None:
                values = values[:, state.neurons]
            stats[CHAIN_ROWS, rows] = values

    def _fast_snapshots(self, modules: list[nn.Module], stats: np.ndarray, wanted: list[bool]) -> list[int | None]:
        """Each wanted layer's C snapshot into ``stats`` (its count of non-finite values; None where the torch path
        must take it), split over two threads for a big model (:func:`run_split`)."""
        counted: list[int | None] = [None] * len(self._states)

        def job(i: int) -> Callable[[], None]:
            def run() -> None:
                address = stats.ctypes.data + self._offsets[i] * stats.itemsize
                counted[i] = self._states[i].fast_snapshot(modules[i], address, stats.shape[1])
            return run

        run_split([(weight_and_bias(modules[i])[0].numel(), job(i)) for i, state in enumerate(self._states)
                   if wanted[i] and state.fast is not None])
        return counted

    def _warn_unseen(self, stats: np.ndarray) -> None:
        """A layer with gradients but no training forward pass was most likely compiled before watch() saw it."""
        act_rate, grad_norm = STAT_COLUMNS.index("act_rate"), STAT_COLUMNS.index("grad_norm")
        for state, rows in zip(self._states, self._slices):
            if state.name in self._warned_unseen:
                continue
            if np.isnan(stats[act_rate, rows]).all() and np.isfinite(stats[grad_norm, rows]).any():
                self._warned_unseen.add(state.name)
                _log.warning("layer %r had gradients but no training forward call since the last snapshot: its "
                             "weight is used without calling its forward, or the model was compiled and run before "
                             "watch() (call mlflow_flux.watch(model) before torch.compile(model) runs it)",
                             state.name)
