"""The sweep as users run it: `mlflow run .` and `mlflow-flux sweep`, against temporary sqlite stores."""

import mlflow
import pytest

from tests.helpers import run_cli, run_mlflow_project, runs_of

SMALL = ["epochs=3", "n_samples=64", "hidden=32,8", "image_size=16", "window=2"]

pytestmark = pytest.mark.slow


def _by_role(runs):
    out = {}
    for run in runs:
        out.setdefault(run.data.tags.get("mlflow_flux.role"), []).append(run)
    return out


def test_mlflow_run_trains_every_lr_as_children_of_one_parent(store):
    result = run_mlflow_project(store, *SMALL, "report=false")
    assert result.returncode == 0, result.stderr[-3000:]
    roles = _by_role(runs_of(store))
    (parent,) = roles["sweep"]
    children = roles["variant"]
    assert parent.info.status == "FINISHED"
    assert sorted(float(c.data.params["lr"]) for c in children) == [0.0001, 0.001, 0.01]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["mlflow_flux.sweep_id"] == parent.info.run_id
        assert child.data.tags["mlflow_flux.version"]
        assert child.data.params["epochs"] == "3" and "flux/loss_final" in child.data.metrics
    # parallel: on two cores at least two children were training at the same time
    spans = sorted((c.info.start_time, c.info.end_time) for c in children)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans
    experiment = mlflow.get_experiment(store["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_failing_child_does_not_stop_its_siblings(store):
    result = run_cli(store, "sweep", "--lrs", "0.01,1e30", "--epochs", "3", "--n-samples", "64", "--hidden", "32,8",
                     "--image-size", "16", "--window", "2", "--report", "false", timeout=400)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "lr=1e+30 seed=0" in result.stderr and "Traceback" not in result.stderr.split("sweep")[-1]
    roles = _by_role(runs_of(store))
    (parent,) = roles["sweep"]
    status = {c.data.params["lr"]: c for c in roles["variant"]}
    assert status["0.01"].info.status == "FINISHED"
    assert status["1e+30"].info.status == "FAILED"
    assert "loss became nan" in status["1e+30"].data.tags["mlflow_flux.failure"]
    assert parent.info.status == "FAILED"
    assert "lr=1e+30 seed=0" in parent.data.tags["mlflow_flux.failure"]
