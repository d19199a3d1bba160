"""A user's own training loop under mlflow_flux.watch, for tests that kill or interrupt it.

usage: watched_loop.py TRACE_DIR FLUSH_EVERY EPOCHS [EXPLORER_INTERVAL]
Prints "run <id>" first and "epoch <n>" after each end_epoch, so a test knows what has finished.
"""

import sys
import time

import mlflow
import torch
from torch import nn

import mlflow_flux

trace_dir, flush_every, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = {"explorer_interval": float(sys.argv[4])} if len(sys.argv) > 4 else {}
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
x, y = torch.randn(32, 8), torch.randn(32, 4)
with mlflow.start_run() as run:
    print(f"run {run.info.run_id}", flush=True)
    with mlflow_flux.watch(model, window=2, flush_every=flush_every, trace_dir=trace_dir, **options) as flux:
        for epoch in range(epochs):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            flux.end_epoch(epoch, {"loss/train": loss.item()})
            print(f"epoch {epoch}", flush=True)
            time.sleep(0.05)
