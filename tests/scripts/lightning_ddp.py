"""Two-process Lightning DDP fit on CPU (gloo) with FluxCallback; run by tests/integrations/test_lightning.py.

Lightning's "ddp" strategy starts the second process by running this script again.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import os

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import MLFlowLogger

from mlflow_flux.integrations.lightning import FluxCallback
from tests.integrations.lightning_models import AutoEncoder, loaders, trainer_options

if __name__ == "__main__":
    torch.manual_seed(0)
    logger = MLFlowLogger(experiment_name=os.environ["MLFLOW_EXPERIMENT_NAME"],
                          tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    train, val = loaders()
    trainer = Trainer(strategy="ddp", devices=2, logger=logger, callbacks=[FluxCallback(window=2)],
                      **trainer_options())
    trainer.fit(AutoEncoder(), train, val)
