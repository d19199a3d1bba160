
import pytest

from mlflow_flux.errors import InvalidParameter
from mlflow_flux.study.config import TrainConfig, parse_train_config
from mlflow_flux.study.sweep import parse_sweep_config
from tests.helpers import ROOT, run_cli


def test_overrides_are_parsed_against_the_defaults():
    config = parse_train_config({"lr": "1e-2", "hidden": "32, 8", "optimizer": "SGD", "epochs": "7"})
    assert (config.lr, config.hidden, config.optimizer, config.epochs) == (0.01, (32, 8), "sgd", 7)
    assert config.as_params()["hidden"] == "32,8"


@pytest.mark.parametrize(
    "name, value",
    [("lr", "abc"), ("lr", "-0.1"), ("lr", "0"), ("lr", "nan"), ("epochs", "0"), ("epochs", "1.5"),
     ("optimizer", "rmsprop"), ("hidden", "256,,16"), ("hidden", "a,b"), ("hidden", "64,0"), ("batch_size", "0"),
     ("colour", "red"),
     # values that would exhaust memory before anything useful happens
     ("image_size", "100000"), ("hidden", "100000"), ("hidden", "60000,60000"), ("n_samples", "1000000"),
     ("flush_every", "100000"), ("threads", "5000")],
)
def test_bad_train_values_name_the_parameter(name, value):
    with pytest.raises(InvalidParameter) as info:
        parse_train_config({name: value})
    assert name in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("name, value", [("lrs", "0.01,x"), ("lrs", ""), ("lrs", "0.1,-1"), ("seeds", "1,,2"),
                                         ("max_parallel", "0.5"), ("lr", "0.1"), ("lrs", ",".join(["0.1"] * 1001))])
def test_bad_sweep_values_name_the_parameter(name, value):
    with pytest.raises(InvalidParameter, match=name):
        parse_sweep_config({name: value})


@pytest.mark.parametrize(
    "args",
    [["train", "--lr", "abc"], ["train", "--lr", "-1"], ["train", "--epochs", "0"], ["train", "--optimizer", "lbfgs"],
     ["train", "--hidden", "64,x"], ["sweep", "--lrs", "0.01,fast"], ["sweep", "--epochs", "0"],
     ["sweep", "--lr", "0.1"], ["train", "--image-size", "100000"]],
)
@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(store, args):
    result = run_cli(store, *args, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert len(lines) == 1 and lines[0].startswith("mlflow-flux: error: invalid value for"), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(store["dir"].glob("artifacts/*")), "nothing may run before the input is checked"


def test_mlproject_defaults_match_the_config():
    import yaml

    project = yaml.safe_load((ROOT / "MLproject").read_text())
    params = TrainConfig().as_params()
    for entry in ("main", "train"):
        for name, spec in project["entry_points"][entry]["parameters"].items():
            if name in params:
                assert str(spec["default"]) == params[name], (entry, name)


@pytest.mark.parametrize("args, message", [
    (["sweep", "--lr", "0.1"], "invalid value for 'lr': '0.1' (the sweep varies it: pass lrs= instead)"),
    (["sweep", "--seed=3"], "invalid value for 'seed': '3' (the sweep varies it: pass seeds= instead)"),
    (["train", "--epoch", "3"], "unknown option --epoch 3 for 'mlflow-flux train'"),  # no prefix matching
    (["compare", "--exp", "x"], "unknown option --exp x for 'mlflow-flux compare'"),
    (["train", "--epochs"], "argument --epochs: expected one argument"),
    (["frobnicate"], "argument {train,sweep,atlas,compare,explore,query,upload}: invalid choice: 'frobnicate'"),
])
def test_parsers_refuse_abbreviations_and_unknown_options_in_one_line(args, message, capsys):
    from mlflow_flux.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mlflow-flux: error: {message}"), err
