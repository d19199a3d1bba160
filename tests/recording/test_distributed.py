"""Two real processes on the gloo backend, under DistributedDataParallel and under FSDP2: one run, one trace, activity
pooled over both ranks' samples once per snapshot, the gradients the optimizer applies; FSDP1 refused."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mlflow_flux
from tests.helpers import ROOT, runs_of, subprocess_env
from tests.reference import assert_trace_matches

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddp_watch.py"
FSDP_SCRIPT = SCRIPT.with_name("fsdp_watch.py")


@pytest.mark.slow
def test_two_ranks_write_one_run_with_activity_pooled_over_both(store, tmp_path):
    out = tmp_path / "expected.pt"
    done = subprocess.run([sys.executable, str(SCRIPT), store["uri"], store["experiment_name"], str(out)], cwd=ROOT,
                          env=subprocess_env(store), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(out, weights_only=False)
    (run,) = runs_of(store)  # rank 1 started no run of its own
    assert run.info.run_id == result["run_id"] and run.info.status == "FINISHED"
    assert result["gathers"] == {"in steps": 0, "in end_epoch": 3}  # one all_gather per snapshot, none per step
    refusals = result["refusals"]
    assert "under torch.distributed, pass watch(model, optimizer=optimizer)" in refusals["no optimizer"]
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(set(trace.epoch)) == [0, 1, 2] and len(trace) == 3 * (16 + 3)
    assert_trace_matches(trace, result["expected"])


@pytest.mark.slow
def test_fsdp2_ranks_hold_whole_neurons_and_write_one_trace_equal_to_the_unsharded_reference(store, tmp_path):
    out = tmp_path / "expected.pt"
    done = subprocess.run([sys.executable, str(FSDP_SCRIPT), store["uri"], store["experiment_name"], str(out)],
                          cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(out, weights_only=False)
    (run,) = runs_of(store)
    assert run.info.run_id == result["run_id"] and run.info.status == "FINISHED"
    trace = mlflow_flux.load_traces(run.info.run_id)
    assert sorted(set(trace.epoch)) == [0, 1, 2] and len(trace) == 3 * (7 + 3)  # every neuron, once
    assert_trace_matches(trace, result["expected"])
    assert result["refusal"].startswith("FSDP (FullyShardedDataParallel) flattens"), result["refusal"]
    assert "fully_shard" in result["refusal"]


RECYCLE_SCRIPT = SCRIPT.with_name("recycle_ranks.py")


def _recycle_on_two_ranks(store, tmp_path, mode: str) -> dict:
    out = tmp_path / "weights.pt"
    done = subprocess.run([sys.executable, str(RECYCLE_SCRIPT), store["uri"], store["experiment_name"], str(out),
                           mode], cwd=ROOT, env=subprocess_env(store), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


@pytest.mark.slow
def test_under_ddp_every_rank_makes_the_same_reset(store, tmp_path):
    result = _recycle_on_two_ranks(store, tmp_path, "ddp")
    resets = mlflow_flux.load_resets(result["run_id"])
    assert {2, 5} <= set(resets[(resets.layer == "0") & (resets.epoch == 0)].neuron)
    first, second = result["weights"]
    for at_first, at_second in zip(first, second):  # after every snapshot's reset
        for name in at_first:
            assert torch.equal(at_first[name], at_second[name]), name  # bit for bit


@pytest.mark.slow
def test_under_fsdp2_each_rank_resets_its_rows_as_the_unsharded_model_would(store, tmp_path):
    from mlflow_flux.recording.resets import new_incoming, reset_draws

    result = _recycle_on_two_ranks(store, tmp_path, "fsdp")
    resets = mlflow_flux.load_resets(result["run_id"])
    units = sorted(resets[(resets.layer == "0") & (resets.epoch == 0)].neuron)
    assert {2, 5} <= set(units)
    first, second = result["weights"]
    after = first[0]
    assert all(torch.equal(after[name], second[0][name]) for name in after)  # both ranks see one model
    # The rows the two ranks reset (unit 2 on rank 0, unit 5 on rank 1: 4 + 4 rows) are the draws an unsharded
    # reset makes from the same seeded stream (seed 0, the first reset, the first layer); their outgoing weights are 0.
    layer = torch.nn.Linear(6, 8)
    expected, _ = new_incoming(layer, 0, len(units), "xavier_uniform", reset_draws(0, 0, 0))
    assert torch.equal(after["0.weight"][units], expected) and (after["0.bias"][units] == 0).all()
    assert (after["2.weight"][:, units] == 0).all()
