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
