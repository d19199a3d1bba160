"""A real transformers.Trainer run with FluxCallback: tiny BERT and GPT-2 built from configs (no downloads)."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch
import transformers

import mlflow_flux
from mlflow_flux.integrations.transformers import FluxCallback

pytestmark = pytest.mark.docstrings  # transformers builds its model classes from docstrings: not under -OO



class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, length: int = 12, vocab: int = 60) -> None:
        self.ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _bert():
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16)
    return transformers.BertForMaskedLM(config)


def _trainer(model, tmp_path, callback, report_to, flux_first=False):
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), num_train_epochs=3,
                                          per_device_train_batch_size=8, report_to=report_to, save_strategy="no",
                                          logging_steps=2, use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    if flux_first:  # user callbacks come after report_to's: move transformers' MLflowCallback behind ours
        from transformers.integrations import MLflowCallback

        trainer.add_callback(trainer.pop_callback(MLflowCallback))
        names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
        assert names.index("FluxCallback") < names.index("MLflowCallback")
    return trainer


def _linear_names(model) -> list[str]:
    from mlflow_flux.recording.layers import select_layers

    return sorted(layer.name for layer in select_layers(model, None))


@pytest.mark.parametrize("flux_first", [False, True], ids=["flux-last", "flux-first"])
def test_report_to_mlflow_writes_into_the_run_transformers_opened(store, tmp_path, flux_first):
    torch.manual_seed(0)
    model = _bert()
    _trainer(model, tmp_path, FluxCallback(window=2), ["mlflow"], flux_first).train()
    (run,) = mlflow.search_runs([store["experiment_id"]], output_format="list")  # one run, whatever the order
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics  # transformers' own logging is there
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(trace.epoch.unique()) == [0, 1, 2]
    assert sorted(trace.layer.unique()) == _linear_names(model)
    assert any(name.endswith("attention.self.query") for name in trace.layer.unique())
    assert np.isfinite(trace.act_mean).all()


def test_without_mlflow_reporting_a_new_run_holds_gpt2_steps_and_recycles_its_mlps(store, tmp_path):
    """GPT-2 as the recycling issue names it: each block's mlp.c_fc (a Conv1D, its weight stored (in, out)) with
    mlp.c_proj as its next layer; the attention maps, with none, are left alone. The Trainer's optimizer (wrapped
    by accelerate) is the one whose moments a reset zeroes."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=60, n_positions=16)
    model = transformers.GPT2LMHeadModel(config)
    mlps = {f"transformer.h.{i}.mlp.c_fc": f"transformer.h.{i}.mlp.c_proj" for i in range(2)}
    callback = FluxCallback(every_n_steps=3, window=2, recycle="redo", recycle_period=1, recycle_tau=0.5,
                            next_layers=mlps)
    _trainer(model, tmp_path, callback, "none").train()
    assert mlflow.active_run() is None  # the callback ended the run it started
    (run,) = mlflow.search_runs([store["experiment_id"]], output_format="list")
    assert run.info.status == "FINISHED"
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(trace.epoch.unique()) == [3, 6, 9, 12]  # 3 epochs x 4 steps
    layers = set(trace.layer.unique())
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc", "lm_head"} <= layers
    resets = mlflow_flux.load_resets(run.info.run_id)
    assert len(resets) and set(resets.layer) <= set(mlps) and run.data.tags["mlflow_flux.recycle"] == "redo"
    c_fc = model.transformer.h[0].mlp.c_fc.weight.detach()  # (in, out): a reset unit is a column
    first = resets[resets.layer == "transformer.h.0.mlp.c_fc"]
    assert len(first) and (c_fc[:, first.neuron.unique()].abs().sum(0) > 0).all()  # new weights, not zeros


@pytest.mark.parametrize("report_to", ["mlflow", "none"])
def test_a_training_that_dies_ends_its_run_failed_with_the_steps_it_recorded(store, tmp_path, report_to):
    """TrainerCallback has no exception event: FluxCallback chains sys.excepthook while training runs. In a child
    process (the hook runs as the interpreter dies), the run ends FAILED with the reason, whoever opened it, and the
    steps before the failure are in its trace."""
    import subprocess

    from tests.helpers import PYTHON, ROOT, subprocess_env

    done = subprocess.run([*PYTHON, str(ROOT / "tests" / "scripts" / "hf_failure.py"), report_to, str(tmp_path)],
                          cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "RuntimeError: the data went away" in done.stderr, done.stderr[-3000:]
    (run,) = mlflow.search_runs([store["experiment_id"]], output_format="list")
    assert run.info.status == "FAILED", run.info.status
    assert "the data went away" in run.data.tags["mlflow_flux.failure"]
    trace = mlflow_flux.load_traces(run.info.run_id, columns=["epoch"])
    assert sorted(set(trace.epoch)) == list(range(1, max(trace.epoch) + 1)) and max(trace.epoch) >= 4  # every step
