"""Recording under torch.distributed: activity pooled over every rank's samples, once per snapshot; under FSDP2,
each rank's whole neurons gathered once per snapshot.

Each rank adds its own samples into its own sums, with its own shift, step after step, with no communication. At
a snapshot, one ``all_gather`` brings every rank's sums and shifts (all layers in one tensor) to every rank, and
the shifted sums are merged exactly (Chan et al.: per rank a count, a mean and a sum of squared deviations). The
gradients are the synchronized ones the optimizer applies (``watch(optimizer=...)`` is required): identical on
every rank under DDP, so each keeps its own. Only rank 0 writes.

FSDP2 (``fully_shard``) shards every parameter on dim 0, as ``torch.chunk`` splits it: a rank holds whole neurons
(rows of a Linear's or a conv's weight) and their gradients. Each rank computes its neurons' statistics (weights,
gradients, and the pooled activity), and one more ``all_gather`` brings them to rank 0. FSDP1
(``FullyShardedDataParallel``) flattens parameters across layers and is refused.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FluxError
from ..statistics import SUMS, sum_row

__all__ = ["world", "is_dtensor", "refuse_unsupported", "shard_rows", "pool", "gather_shards"]

COUNT, SHIFTED_SUM, SHIFTED_SUMSQ = (sum_row(n) for n in ("count", "shifted_sum", "shifted_sumsq"))
# Merged over ranks: the shifted-sum triple (exactly, Chan et al.) and the plain sums; the gradients the optimizer
# applies are the synchronized ones, the same on every rank: each keeps its own ("local" in the table).
ADDED = tuple(sum_row(s.name) for s in SUMS if s.merge == "add")
if tuple(s.name for s in SUMS if s.merge == "samples") != ("count", "shifted_sum", "shifted_sumsq"):
    raise ImportError("mlflow_flux.statistics: the samples triple must be count, shifted_sum, shifted_sumsq")


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_dtensor(tensor) -> bool:
    """Whether ``tensor`` is a DTensor (FSDP2's parameters and gradients), without importing DTensor."""
    return type(tensor).__name__ == "DTensor"


def refuse_unsupported(model: nn.Module) -> None:
    """Refuse a sharding whose ranks do not hold whole neurons: FSDP1, and DTensor parameters not sharded on dim 0.

    Raises:
        FluxError: one line naming what to use instead.
    """
    for module in model.modules():
        classes = {cls.__name__ for cls in type(module).__mro__}
        if "FullyShardedDataParallel" in classes:
            raise FluxError("FSDP (FullyShardedDataParallel) flattens each layer's weights across ranks: mlflow-flux "
                            "records FSDP2 instead (torch.distributed.fsdp.fully_shard), whose shards hold whole "
                            "neurons, or DistributedDataParallel")
        for name, parameter in module.named_parameters(recurse=False):
            if is_dtensor(parameter) and not _sharded_on_rows(parameter):
                raise FluxError(f"parameter {name!r} of {type(module).__name__} is a DTensor not sharded on dim 0 "
                                f"({parameter.placements}): mlflow-flux records FSDP2's dim-0 shards, where a rank "
                                "holds whole neurons")


def _sharded_on_rows(tensor) -> bool:
    placements = getattr(tensor, "placements", ())
    return len(placements) == 1 and getattr(placements[0], "dim", None) == 0


def shard_rows(weight) -> slice | None:
    """The rows (neurons) of ``weight`` this rank holds under FSDP2 (``torch.chunk`` semantics), or None when the
    weight is not sharded."""
    if not is_dtensor(weight):
        return None
    mesh = weight.device_mesh
    size, rank = mesh.size(), mesh.get_local_rank()
    rows = weight.shape[0]
    chunk = -(-rows // size)
    return slice(min(rows, rank * chunk), min(rows, (rank + 1) * chunk))


def pool(accumulators: list) -> None:
    """Replace every rank's activation sums by the pooled ones of all ranks (one ``all_gather``); the merged values
    are written back as shifted sums, so the snapshot code reads them like a single rank's."""
    import torch.distributed as dist

    if not accumulators:
        return
    rows = (COUNT, SHIFTED_SUM, SHIFTED_SUMSQ, *ADDED)
    local = torch.cat([torch.cat([acc.sums[list(rows)].double(), acc.shift.double()[None]]).reshape(-1)
                       for acc in accumulators])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    start = 0
    for acc in accumulators:
        width = (len(rows) + 1) * acc.size
        parts = torch.stack([g[start : start + width].reshape(len(rows) + 1, acc.size) for g in gathered])
        start += width
        n, s1, s2, *added, shift = parts.unbind(1)  # each (ranks, neurons)
        seen = n > 0
        safe = torch.where(seen, n, torch.ones_like(n))
        mean = torch.where(seen, shift + s1 / safe, torch.zeros_like(n))
        m2 = torch.where(seen, s2 - s1 * s1 / safe, torch.zeros_like(n))
        total = n.sum(0)
        pooled_mean = (n * mean).sum(0) / torch.where(total > 0, total, torch.ones_like(total))
        pooled_m2 = m2.sum(0) + (n * (mean - pooled_mean) ** 2).sum(0)
        # Written back as shifted sums around a float32 shift: the residual keeps the float64 mean exact.
        new_shift = pooled_mean.float()
        residual = total * (pooled_mean - new_shift.double())
        acc.shift.copy_(new_shift)
        acc.sums[COUNT] = total
        acc.sums[SHIFTED_SUM] = residual
        acc.sums[SHIFTED_SUMSQ] = pooled_m2 + torch.where(total > 0, residual * residual / total.clamp_min(1), 0)
        for row, values in zip(ADDED, added):
            acc.sums[row] = values.sum(0)


def gather_shards(blocks: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor] | None:
    """Every rank's ``(its rows, columns)`` statistics of each sharded layer, put together on rank 0 in neuron order
    (``sizes``: each layer's neurons); one ``all_gather`` of all layers at once. None on the other ranks."""
    import torch.distributed as dist

    ranks, rank = dist.get_world_size(), dist.get_rank()
    chunks = [-(-size // ranks) for size in sizes]
    width = blocks[0].shape[1] if blocks else 0
    padded = []
    for block, chunk in zip(blocks, chunks):
        block = block.double().cpu()
        padded.append(torch.cat([block, torch.full((chunk - len(block), width), float("nan"), dtype=torch.float64)]))
    local = torch.cat(padded) if padded else torch.empty(0, width, dtype=torch.float64)
    gathered = [torch.empty_like(local) for _ in range(ranks)]
    dist.all_gather(gathered, local)
    if rank != 0:
        return None
    out, start = [], 0
    for size, chunk in zip(sizes, chunks):
        parts = []
        for r in range(ranks):
            held = max(0, min(size, (r + 1) * chunk) - min(size, r * chunk))
            parts.append(gathered[r][start : start + held])
        out.append(torch.cat(parts).float())
        start += chunk
    return out
