"""Two FSDP2 ranks (torch.distributed.fsdp.fully_shard) on gloo, each calling watch() on its sharded model, each
training on its own data; then FSDP1 refused in one line.

usage: fsdp_watch.py TRACKING_URI EXPERIMENT OUT.pt
Rank 0 alone starts an MLflow run. The test's reference (plain hooks, float64) reads every parameter and gradient as
one whole tensor (DTensor.full_tensor) and every rank's outputs gathered to rank 0.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.reference import Reference
from tests.scripts.ddp_watch import spawn_on_two_ranks

EPOCHS, STEPS = 3, 4


def full(tensor):
    return tensor.full_tensor() if type(tensor).__name__ == "DTensor" else tensor


def worker(rank: int, world: int, port: int, uri: str, experiment: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import mlflow
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    import mlflow_flux

    torch.manual_seed(0)
    # 7 and 3 neurons: uneven shards (4 + 3, 2 + 1), as torch.chunk splits them
    model = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    reference = Reference({"0": model[0], "2": model[2]}, gradients="manual", full=full)
    data = torch.randn(EPOCHS, STEPS, 8, 6, generator=torch.Generator().manual_seed(100 + rank))  # a shard per rank
    run = None
    if rank == 0:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        run = mlflow.start_run()
    expected = {}
    with mlflow_flux.watch(model, optimizer=optimizer, window=2, log_figures=False, explorer=False) as flux:
        for epoch in range(EPOCHS):
            for x in data[epoch]:
                optimizer.zero_grad()
                model(x).pow(2).mean().backward()
                reference.take_gradients()  # after backward: the reduce-scattered gradient the optimizer applies
                optimizer.step()
            outputs = [None] * world
            mine = {name: [t.numpy() for t in kept] for name, kept in reference.outputs.items()}
            dist.all_gather_object(outputs, mine)
            for name in reference.outputs:
                reference.outputs[name] = [torch.from_numpy(a) for part in outputs for a in part[name]]
            snapshot = reference.snapshot()  # every rank: full_tensor() is a collective
            if rank == 0:
                expected[epoch] = snapshot
            flux.end_epoch(epoch)
    refusal = None
    try:
        mlflow_flux.watch(FullyShardedDataParallel(nn.Sequential(nn.Linear(6, 4)), device_id=torch.device("cpu")),
                          optimizer=optimizer).start()
    except mlflow_flux.FluxError as exc:
        refusal = str(exc)
    if rank == 0:
        mlflow.end_run()
        torch.save({"run_id": run.info.run_id, "expected": expected, "refusal": refusal}, out)
    # Both ranks tear gloo down together: a rank that exits while its peer is still connected can abort the
    # peer's process ("terminate called without an active exception"), seen once in a loaded full suite.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    spawn_on_two_ranks(worker)
