"""Two ranks on gloo recycling dormant neurons, under DDP or FSDP2 (``MODE``), each training on its own data.

usage: recycle_ranks.py URI EXPERIMENT OUT.pt MODE
ReDo at tau = 0 every snapshot, on a model whose first layer holds two units dead. An output added after the
recycling one (an action too: it runs on every rank) keeps each rank's whole weights right after every reset; rank 0
saves every rank's copies, for the test to compare across ranks (DDP) or with the unsharded draws (FSDP2).
"""

import os
import sys

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.scripts.ddp_watch import spawn_on_two_ranks

EPOCHS, STEPS = 2, 3
DEAD = [2, 5]


def full(tensor):
    return tensor.full_tensor() if type(tensor).__name__ == "DTensor" else tensor


def worker(rank: int, world: int, port: int, uri: str, experiment: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    import mlflow

    import mlflow_flux
    from mlflow_flux.outputs import ACTION, RunOutput

    mode = sys.argv[4]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias[DEAD] = -100.0
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh)
        trained = fully_shard(model, mesh=mesh)
    else:
        trained = nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(trained.parameters(), lr=0.01)

    class Weights(RunOutput):  # after the recycling action, on every rank: the whole weights as they are now
        kind = ACTION

        def __init__(self):
            self.kept = []

        def end_epoch(self, step):
            self.kept.append({name: full(p.detach()).clone() for name, p in model.named_parameters()})

    weights = Weights()
    data = torch.randn(EPOCHS, STEPS, 8, 6, generator=torch.Generator().manual_seed(100 + rank))
    if rank == 0:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        run = mlflow.start_run()
    with mlflow_flux.watch(trained, optimizer=optimizer, window=2, log_figures=False, explorer=False,
                           recycle="redo", recycle_period=1, recycle_tau=0.0, outputs=[weights]) as flux:
        for epoch in range(EPOCHS):
            for x in data[epoch]:
                optimizer.zero_grad()
                trained(x).pow(2).mean().backward()
                optimizer.step()
            flux.end_epoch(epoch)
    everyone = [None] * world
    dist.all_gather_object(everyone, weights.kept)
    if rank == 0:
        mlflow.end_run()
        torch.save({"run_id": run.info.run_id, "weights": everyone, "before": before}, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    spawn_on_two_ranks(worker)
