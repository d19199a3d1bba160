"""Recording under torch.distributed: activity pooled over every rank's samples, once per snapshot.

Each rank adds its own samples into its own sums, with its own shift, step after step, with no communication. At
a snapshot, one ``all_gather`` brings every rank's sums and shifts (all layers in one tensor) to every rank, and
the shifted sums are merged exactly (Chan et al.: per rank a count, a mean and a sum of squared deviations). The
gradients are the synchronized ones the optimizer applies (``watch(optimizer=...)`` is required), identical on
every rank, so each keeps its own. Only rank 0 writes.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import FluxError

__all__ = ["world", "refuse_sharded", "pool"]

COUNT, SHIFTED_SUM, SHIFTED_SUMSQ, POSITIVE = 0, 1, 2, 3


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def refuse_sharded(model: nn.Module) -> None:
    """FSDP shards each layer's weight across ranks: no rank holds a whole neuron's weights, so it is refused."""
    for module in model.modules():
        classes = {cls.__name__ for cls in type(module).__mro__}  # FSDP2 makes a subclass per module (FSDPLinear)
        if classes & {"FullyShardedDataParallel", "FSDPModule"} or any(
            type(p).__name__ == "DTensor" for p in module.parameters(recurse=False)
        ):
            raise FluxError("the model is sharded (FSDP or DTensor parameters): mlflow-flux needs every layer's "
                            "whole weight on each rank; watch it under DistributedDataParallel, or on one process")


def pool(accumulators: list) -> None:
    """Replace every rank's activation sums by the pooled ones of all ranks (one ``all_gather``); the merged values
    are written back as shifted sums, so the snapshot code reads them like a single rank's."""
    import torch.distributed as dist

    if not accumulators:
        return
    rows = COUNT, SHIFTED_SUM, SHIFTED_SUMSQ, POSITIVE
    local = torch.cat([torch.cat([acc.sums[list(rows)].double(), acc.shift.double()[None]]).reshape(-1)
                       for acc in accumulators])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    start = 0
    for acc in accumulators:
        width = (len(rows) + 1) * acc.size
        parts = torch.stack([g[start : start + width].reshape(len(rows) + 1, acc.size) for g in gathered])
        start += width
        n, s1, s2, positive, shift = parts.unbind(1)  # each (ranks, neurons)
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
        acc.sums[POSITIVE] = positive.sum(0)
