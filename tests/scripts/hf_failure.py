"""A Hugging Face Trainer with FluxCallback whose data fails in its second epoch: the exception ends the process.

    python tests/scripts/hf_failure.py mlflow|none OUT_DIR

With ``mlflow``, transformers' MLflowCallback opened the run; with ``none``, FluxCallback did.
"""

import sys

import torch
import transformers

from mlflow_flux.integrations.transformers import FluxCallback


class FailingTokens(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        if i == 4 and torch.utils.data.get_worker_info() is None and FailingTokens.calls > 40:
            raise RuntimeError("the data went away")
        FailingTokens.calls += 1
        ids = torch.randint(0, 60, (12,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}


FailingTokens.calls = 0
report_to, out = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=16)
args = transformers.TrainingArguments(output_dir=out, num_train_epochs=3, per_device_train_batch_size=8,
                                      report_to=[] if report_to == "none" else [report_to], save_strategy="no",
                                      logging_steps=1, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
trainer = transformers.Trainer(model=transformers.BertForMaskedLM(config), args=args, train_dataset=FailingTokens(),
                               callbacks=[FluxCallback(every_n_steps=1, window=2)])
trainer.train()
