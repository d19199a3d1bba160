"""The sweep as users run it: `mlflow run .` and `mlflow-flux sweep`, against temporary sqlite stores."""

import mlflow
import pytest

from tests.helpers import run_mlflow_project, runs_of

SMALL = ["epochs=3", "n_samples=64", "hidden=32,8", "image_size=16", "window=2"]

pytestmark = pytest.mark.slow


def _by_role(runs):
    out = {}
    for run in runs:
        out.setdefault(run.data.tags.get("mlflow_flux.role"), []).append(run)
    return out


def test_mlflow_run_trains_every_lr_as_children_of_one_parent_and_a_failing_child_spares_its_siblings(store):
    # One sweep for both properties (each a sweep of interpreters, ~30 s here): lr=1e30 diverges at once; it goes
    # first, so its slot frees early.
    result = run_mlflow_project(store, *SMALL, "report=false", "lrs=1e30,0.01,0.001", timeout=400)
    assert result.returncode == 1, result.stderr[-3000:]  # `mlflow run` ends every failed entry point with 1
    assert "lr=1e+30 seed=0" in result.stderr and "Traceback" not in result.stderr.split("sweep")[-1]
    roles = _by_role(runs_of(store))
    (parent,) = roles["sweep"]
    children = {c.data.params["lr"]: c for c in roles["variant"]}
    assert sorted(children) == ["0.001", "0.01", "1e+30"]
    for child in children.values():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["mlflow_flux.sweep_id"] == parent.info.run_id
        assert child.data.tags["mlflow_flux.version"]
    for lr in ("0.01", "0.001"):
        assert children[lr].info.status == "FINISHED"
        assert children[lr].data.params["epochs"] == "3" and "flux/loss_final" in children[lr].data.metrics
    assert children["1e+30"].info.status == "FAILED"
    assert "loss became nan" in children["1e+30"].data.tags["mlflow_flux.failure"]
    assert parent.info.status == "FAILED"
    assert "lr=1e+30 seed=0" in parent.data.tags["mlflow_flux.failure"]
    # parallel: on two cores the two that trained were training at the same time
    spans = sorted((children[lr].info.start_time, children[lr].info.end_time) for lr in ("0.01", "0.001"))
    assert spans[1][0] < spans[0][1], spans
    experiment = mlflow.get_experiment(store["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_atlas_entry_point_maps_each_claim_per_facet_over_epochs(store, tmp_path):
    # Tiny settings: one optimizer x two activations x two lrs x two seeds, 30 epochs, one twin renormalised every
    # 2 epochs. The facets are the optimizer and the activation: under tanh the firing readings are not applicable.
    result = run_mlflow_project(store, "optimizers=adam", "activations=relu,tanh", "lrs=0.01,0.0001", "seeds=0,1",
                                "epochs=30", "n_samples=64", "hidden=32,8", "image_size=16", "window=2", "twins=1",
                                "twin_period=2", entry_point="atlas", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    roles = _by_role(runs_of(store))
    (parent,) = roles["sweep"]
    assert parent.data.params["activations"] == "relu,tanh" and parent.info.status == "FINISHED"
    grid = sorted((c.data.params["activation"], float(c.data.params["lr"]), c.data.params["seed"])
                  for c in roles["variant"])
    assert grid == sorted((a, lr, s) for a in ("relu", "tanh") for lr in (0.01, 0.0001) for s in ("0", "1"))
    for child in roles["variant"]:
        assert child.info.status == "FINISHED" and child.data.params["epochs"] == "30"
        assert child.data.tags["mlflow.runName"].startswith("adam ")  # adam lr=..., adam tanh lr=...
        assert {"twin/distance", "twin/lyapunov"} <= set(child.data.metrics)
        assert {"flux/participation_ratio", "flux/w_dist0_median", "flux/reduced_width_0"} <= set(child.data.metrics)
    (report_run,) = roles["report"]
    # one facet varies (all runs share the optimizer): verdicts per activation
    verdicts = {a: {report_run.data.tags[f"mlflow_flux.claim_{c}_{a}"] for c in "ab"} for a in ("relu", "tanh")}
    assert all(v in ("agrees", "disagrees") or v.startswith("inconclusive") for v in verdicts["relu"]), verdicts
    assert report_run.data.tags["mlflow_flux.claim_b_tanh"] == "not applicable"  # firing is ReLU's reading
    client = mlflow.MlflowClient()
    path = client.download_artifacts(report_run.info.run_id, "report", str(tmp_path))
    import csv
    from pathlib import Path

    rows = list(csv.DictReader((Path(path) / "verdicts_over_time.csv").open()))
    main = [r for r in rows if not r["reading"]]  # the main reading; the others follow on their own rows
    # a row per (claim, facet values, epoch): every 50th epoch does not occur in 30, so the last one, 29
    assert sorted((r["claim"], r["activation"], r["epoch"]) for r in main) == sorted(
        (c, a, "29") for c in "ab" for a in ("relu", "tanh"))
    assert {r["reading"] for r in rows} >= {"", "GraMa dormant, its authors' reading"}
    for row in main:
        if row["verdict"] == "not applicable":
            continue
        assert row["verdict"] in ("agrees", "disagrees") or row["verdict"].startswith("inconclusive"), row
        assert row["subject runs"] == "2" and row["rival runs"] == "2" and row["pairs"] == "2"  # paired by seed
        assert 0 <= float(row["subject ci_low"]) <= float(row["subject mean"]) <= float(row["subject ci_high"]) or \
            row["claim"] == "a"  # a fraction's interval stays in [0, 1]; a loss is only positive
        assert float(row["difference ci_low"]) <= float(row["difference"]) <= float(row["difference ci_high"])
    markdown = (Path(path) / "report.md").read_text()
    assert "## Where each claim holds, over epochs" in markdown and "under tanh" in markdown
    assert "Spearman's rho" in markdown and "8 runs" in markdown and "## Redundant units" in markdown
    assert {"verdicts_over_time.png", "lyapunov.png", "reduced_width.png"} <= {p.name for p in Path(path).iterdir()}


def test_an_identical_twin_gives_minus_infinity_never_nan(store):
    from mlflow_flux.study.config import parse_train_config
    from mlflow_flux.study.train import train

    mlflow.set_experiment(store["experiment_name"])
    config = parse_train_config({"epochs": "4", "n_samples": "64", "hidden": "32,8", "image_size": "16",
                                 "window": "2", "twins": "true", "twin_perturbation": "0", "twin_period": "1"})
    result = train(config, progress=False)
    client = mlflow.MlflowClient()
    for key in ("twin/lyapunov", "twin/distance"):  # one value per window of twin_period epochs
        values = [m.value for m in client.get_metric_history(result.run_id, key)]
        assert len(values) == 4 and not any(v != v for v in values), (key, values)  # never NaN
        if key.endswith("lyapunov"):
            assert all(v <= -1.7e308 for v in values), values  # -inf, stored by MLflow as the lowest float64
        else:
            assert values == [0.0] * 4
