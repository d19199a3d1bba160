"""Two DistributedDataParallel ranks on gloo, each calling watch() on its model, each training on its own data.

usage: ddp_watch.py TRACKING_URI EXPERIMENT OUT.pt
Rank 0 alone starts an MLflow run. Every rank's outputs are gathered to rank 0 for the test's reference (plain
hooks, float64), gradients are read after DDP synchronized them, and the collectives our code issues are counted.
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.reference import Reference

EPOCHS, STEPS = 3, 4


def worker(rank: int, world: int, port: int, uri: str, experiment: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
    reference = Reference({"0": model[0], "2": model[2]}, gradients="manual")
    data = torch.randn(EPOCHS, STEPS, 8, 6, generator=torch.Generator().manual_seed(100 + rank))  # a shard per rank

    gathers = {"in steps": 0, "in end_epoch": 0}
    original = dist.all_gather
    phase = {"now": "in steps"}

    def counting(*args, **kwargs):
        gathers[phase["now"]] += 1
        return original(*args, **kwargs)

    import mlflow

    import mlflow_flux

    run = None
    if rank == 0:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        run = mlflow.start_run()
    refusals = {}
    try:  # under torch.distributed, gradients must be read where the optimizer applies them
        mlflow_flux.watch(ddp).start()
    except mlflow_flux.FluxError as exc:
        refusals["no optimizer"] = str(exc)
    expected = {}
    with mlflow_flux.watch(ddp, optimizer=optimizer, window=2, log_figures=False) as flux:
        dist.all_gather = counting
        for epoch in range(EPOCHS):
            for x in data[epoch]:
                optimizer.zero_grad()
                ddp(x).pow(2).mean().backward()
                reference.take_gradients()  # after backward: what DDP synchronized, what the optimizer applies
                optimizer.step()
            dist.all_gather = original  # the reference's own gathering of every rank's outputs is not ours
            outputs = [None] * world
            mine = {name: [t.numpy() for t in kept] for name, kept in reference.outputs.items()}
            dist.all_gather_object(outputs, mine)
            if rank == 0:
                for name in reference.outputs:
                    reference.outputs[name] = [torch.from_numpy(a) for part in outputs for a in part[name]]
                expected[epoch] = reference.snapshot()
            else:
                reference.snapshot()
            dist.all_gather = counting
            phase["now"] = "in end_epoch"
            flux.end_epoch(epoch)
            phase["now"] = "in steps"
        dist.all_gather = original
    if rank == 0:
        mlflow.end_run()
        torch.save({"run_id": run.info.run_id, "expected": expected, "gathers": gathers, "refusals": refusals}, out)
    # Both ranks tear gloo down together: a rank that exits while its peer is still connected can abort the
    # peer's process ("terminate called without an active exception"), seen once in a loaded full suite.
    dist.barrier()
    dist.destroy_process_group()


def spawn_on_two_ranks(worker) -> None:
    """``worker(rank, 2, port, uri, experiment, out)`` on two processes, from this script's arguments
    (``URI EXPERIMENT OUT``); fsdp_watch.py starts its ranks the same way."""
    uri, experiment, out = sys.argv[1:4]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, uri, experiment, out), nprocs=2, join=True)


if __name__ == "__main__":
    spawn_on_two_ranks(worker)
