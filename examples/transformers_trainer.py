"""Watch a Hugging Face Trainer run with FluxCallback (a tiny BERT built from a config, nothing downloaded), at two
learning rates, then compare the runs by learning rate.

    python examples/transformers_trainer.py      # ~40 s on a laptop CPU
"""

import os
import tempfile

import mlflow
import torch
import transformers

import mlflow_flux
from mlflow_flux.integrations.transformers import FluxCallback

EXPERIMENT = "flux-transformers-example"


class Tokens(torch.utils.data.Dataset):
    """Random token sequences as masked-LM data: enough to watch neurons move."""

    def __init__(self, n: int = 256, length: int = 16, vocab: int = 100) -> None:
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def main() -> None:
    os.environ["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT  # where transformers' MLflowCallback logs
    mlflow.set_experiment(EXPERIMENT)
    config = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=128, max_position_embeddings=32)
    for lr in (1e-3, 1e-4):
        transformers.set_seed(0)
        with tempfile.TemporaryDirectory() as out:
            args = transformers.TrainingArguments(output_dir=out, num_train_epochs=6, learning_rate=lr,
                                                  per_device_train_batch_size=32, report_to="mlflow",
                                                  run_name=f"bert lr {lr:g}", logging_steps=8, save_strategy="no",
                                                  use_cpu=True, disable_tqdm=True)
            transformers.Trainer(model=transformers.BertForMaskedLM(config), args=args, train_dataset=Tokens(),
                                 callbacks=[FluxCallback(window=3)]).train()
    report = mlflow_flux.compare(experiment=EXPERIMENT, group_by="learning_rate", loss_key="train_loss",
                                 output="flux-report-transformers")
    print(report.groups[["learning_rate", "n", "loss_final", "all/participating_frac"]].to_string())
    print("report: flux-report-transformers/report.html")


if __name__ == "__main__":
    main()
