"""Watch a Lightning fit with FluxCallback, at two widths, then compare the runs by width.

    python examples/lightning_fit.py            # ~30 s on a laptop CPU; runs land in ./mlruns unless
                                                # MLFLOW_TRACKING_URI says otherwise
"""

import os

import lightning.pytorch as pl
import mlflow
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mlflow_flux
from mlflow_flux.integrations.lightning import FluxCallback

EXPERIMENT = "flux-lightning-example"


class AutoEncoder(pl.LightningModule):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.save_hyperparameters()  # MLFlowLogger logs `width` as a param: compare() groups by it
        self.net = nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 8), nn.ReLU(),
                                 nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 32))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        loss = nn.functional.mse_loss(self.net(x), x)
        self.log("loss/train", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main() -> None:
    uri = os.environ.get("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    data = torch.randn(512, 32, generator=torch.Generator().manual_seed(0))
    for width in (16, 64):
        for seed in (0, 1):
            pl.seed_everything(seed, verbose=False)
            logger = MLFlowLogger(experiment_name=EXPERIMENT, tracking_uri=uri, run_name=f"width {width} seed {seed}")
            logger.log_hyperparams({"seed": seed})
            trainer = pl.Trainer(max_epochs=15, logger=logger, callbacks=[FluxCallback(window=5)],
                                 accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                                 enable_checkpointing=False)
            trainer.fit(AutoEncoder(width), DataLoader(TensorDataset(data), batch_size=64, shuffle=True))
    report = mlflow_flux.compare(experiment=EXPERIMENT, group_by="width", output="flux-report-lightning")
    print(report.groups[["width", "n", "loss_final", "all/participating_frac", "all/dead_frac"]].to_string())
    print("report: flux-report-lightning/report.html")


if __name__ == "__main__":
    main()
