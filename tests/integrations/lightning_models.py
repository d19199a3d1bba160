"""A small LightningModule and data for the integration tests and the DDP script (no downloads)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class AutoEncoder(pl.LightningModule):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 8))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = nn.functional.mse_loss(self(x), x)
        self.log("loss/train", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("loss/val", nn.functional.mse_loss(self(x), x))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loaders(n: int = 64, batch: int = 16) -> tuple[DataLoader, DataLoader]:
    data = torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    return (DataLoader(TensorDataset(data), batch_size=batch),
            DataLoader(TensorDataset(data[:16]), batch_size=batch))


def trainer_options(**extra) -> dict:
    return dict(max_epochs=4, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, **extra)
