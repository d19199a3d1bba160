import importlib.util
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient

import mlflow_flux
from mlflow_flux import fluctuation
from mlflow_flux.study.config import parse_train_config
from mlflow_flux.study.train import train
from mlflow_flux.traces.runs import VERSION_TAG
from tests.helpers import run_concurrently

TINY = {"epochs": "4", "n_samples": "64", "hidden": "32,8", "image_size": "16", "window": "3", "flush_every": "2",
        "summary_every": "1",
        "threads": "1"}


def test_train_logs_params_metrics_figures_dataset_and_model(store):
    result = train(parse_train_config({**TINY, "lr": "0.01"}), progress=False)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    for name, value in {"lr": "0.01", "epochs": "4", "optimizer": "adam", "hidden": "32,8", "batch_size": "64",
                        "seed": "0", "n_samples": "64", "image_size": "16", "window": "3"}.items():
        assert params[name] == value, name
    history = client.get_metric_history(result.run_id, "flux/loss_train")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2, 3]
    assert run.data.metrics["flux/loss_final"] == result.final_loss > 0
    # ~25 keys at most: the whole network, the loss, and the participating fraction per layer by default (not of
    # the output layer, behind a sigmoid: "firing" means nothing there, and it is not published)
    assert set(run.data.metrics) == {f"flux/{key}" for key in fluctuation.SUMMARY_KEYS} | {
        "flux/loss_train", "flux/loss_final"} | {f"flux/{layer}/participating_frac" for layer in
                                                 params["flux.layers"].split(",")[:-1]}
    assert "flux.window" not in params  # the sweep's plain names, not a second set
    assert run.info.run_name == "adam lr=0.01 seed=0"
    assert run.data.tags["mlflow_flux.role"] == "variant" and run.data.tags[VERSION_TAG] == mlflow_flux.__version__
    figures = {f.path for f in client.list_artifacts(result.run_id, "figures")}
    assert {"figures/reconstructions.png", "figures/dataset_preview.png", "figures/weight_fluctuations.png",
            "figures/bias_fluctuations.png", "figures/participation.png", "figures/w_step_heatmap.png"} <= figures
    models = mlflow.search_logged_models(experiment_ids=[store["experiment_id"]], output_format="list")
    assert [m.source_run_id for m in models] == [result.run_id]
    traces = mlflow_flux.load_traces(result.run_id)
    assert sorted(traces["epoch"].unique()) == [0, 1, 2, 3]


@pytest.mark.slow
def test_same_dataset_settings_log_the_same_digest(store):
    a = train(parse_train_config({**TINY, "epochs": "1", "lr": "0.01"}), progress=False)
    b = train(parse_train_config({**TINY, "epochs": "1", "lr": "0.001", "seed": "5"}), progress=False)
    c = train(parse_train_config({**TINY, "epochs": "1", "n_samples": "72"}), progress=False)
    digests = [MlflowClient().get_run(r.run_id).inputs.dataset_inputs[0].dataset.digest for r in (a, b, c)]
    assert digests[0] == digests[1] != digests[2]


def test_a_diverging_lr_fails_the_run_with_the_reason(store):


    from mlflow_flux.errors import DivergedError

    with pytest.raises(DivergedError, match="lr=1e\\+30"):
        train(parse_train_config({**TINY, "lr": "1e30"}), progress=False)
    (run,) = MlflowClient().search_runs([store["experiment_id"]])
    assert run.info.status == "FAILED"
    assert "loss became nan" in run.data.tags["mlflow_flux.failure"]
    # the epochs that finished before the divergence are still readable
    assert 0 in set(mlflow_flux.load_traces(run.info.run_id)["epoch"])


def test_plugin_tags_only_runs_created_by_mlflow_flux(store):
    with mlflow.start_run() as plain:
        pass
    assert VERSION_TAG not in MlflowClient().get_run(plain.info.run_id).data.tags
    from mlflow_flux.traces.runs import creating_runs

    with creating_runs():
        with mlflow.start_run() as ours:
            pass
    assert MlflowClient().get_run(ours.info.run_id).data.tags[VERSION_TAG] == mlflow_flux.__version__


def test_progress_prints_about_every_tenth_when_not_a_terminal():
    import io

    from mlflow_flux.study.progress import Progress

    out = io.StringIO()
    bar = Progress(100, label="variant 2/3 adam lr=0.01 seed=0", stream=out)
    for epoch in range(100):
        bar.update(epoch, 0.5)
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[0].startswith("variant 2/3 adam lr=0.01 seed=0: epoch 1/100 loss 0.50000 (") and "left)" in lines[0]
    assert lines[-1].startswith("variant 2/3 adam lr=0.01 seed=0: epoch 100/100") and "done in" in lines[-1]


def test_the_same_parameters_and_seed_give_bit_identical_loss_histories(store):
    """Reproducibility on one machine: same settings, same seed, same torch threads -> the same floats."""
    config = parse_train_config({**TINY, "epochs": "6", "threads": "1"})
    client = MlflowClient()
    histories = []
    for _ in range(2):
        result = train(config, progress=False)
        history = sorted(client.get_metric_history(result.run_id, "flux/loss_train"), key=lambda m: m.step)
        histories.append([(m.step, m.value) for m in history] + [("final", result.final_loss)])
    assert histories[0] == histories[1]
    assert len(histories[0]) == 7


def test_the_model_is_logged_without_importing_lightning_unless_the_process_already_has():
    """`mlflow.pytorch` would import Lightning (and through it transformers) in every variant: seconds each."""
    if importlib.util.find_spec("pytorch_lightning") is None:
        pytest.skip("Lightning is not installed: nothing to leave out")
    probe = ("import sys{before}\nfrom mlflow_flux.traces.mlflow_adapter import mlflow_pytorch\n"
             "module = mlflow_pytorch()\n"
             "print(callable(module.log_model), 'pytorch_lightning' in sys.modules,"
             " hasattr(module, 'MlflowModelCheckpointCallback'))\n"
             "import pytorch_lightning\nprint(pytorch_lightning.Trainer.__name__)")
    cases = (("", "True False False"), ("\nimport pytorch_lightning", "True True True"))
    probes = run_concurrently([([sys.executable, "-c", probe.format(before=before)], None) for before, _ in cases],
                              timeout=300)  # side by side
    for (before, expected), (done, _) in zip(cases, probes):
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.split("\n")[:2] == [expected, "Trainer"], (before, done.stdout)
