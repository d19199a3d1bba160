"""Each setting is declared once: the CLI, the MLproject, the params a run logs and watch()'s signature derive from
the declarations, and these tests hold them together."""

from __future__ import annotations

import inspect

import pytest

import mlflow_flux
from mlflow_flux.cli import build_parser
from mlflow_flux.errors import InvalidParameter
from mlflow_flux.settings import RecorderSettings, recorder_setting_of
from mlflow_flux.study.config import PER_VARIANT, SWEPT, SweepSettings, TrainConfig, parse_sweep_config
from mlflow_flux.study.project import mlproject
from tests.helpers import ROOT


def test_the_committed_mlproject_is_the_one_the_settings_generate():
    assert (ROOT / "MLproject").read_text() == mlproject(), (
        "MLproject is out of date: python -m mlflow_flux.study.project > MLproject")


def test_watch_takes_every_recorder_setting_by_keyword_with_its_declared_default():
    parameters = inspect.signature(mlflow_flux.watch).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()), "no **options"
    for spec in RecorderSettings.schema():
        assert spec.name in parameters, spec.name
        assert parameters[spec.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert spec.kind.check(spec.name, parameters[spec.name].default) == spec.default, spec.name


def _options(command: str) -> dict[str, str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a.help for a in sub._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("command, settings, skip", [
    ("train", TrainConfig, ()), ("sweep", TrainConfig, PER_VARIANT), ("sweep", SweepSettings, ())])
def test_every_setting_is_a_cli_option_whose_help_says_what_it_takes(command, settings, skip):
    options = _options(command)
    for spec in settings.schema():
        if spec.name in skip:
            assert spec.name not in options
            continue
        assert spec.help in options[spec.name] and spec.kind.describe() in options[spec.name], spec.name


def test_the_layer_metrics_help_names_every_summary():
    from mlflow_flux.fluctuation import SUMMARY_KEYS

    assert all(key in _options("train")["layer_metrics"] for key in SUMMARY_KEYS)


def test_a_setting_is_logged_under_one_name_whoever_logs_it():
    config = TrainConfig()
    sweep = parse_sweep_config({}).params()
    recorder = RecorderSettings().as_params()
    for name in RecorderSettings.names():
        if name in SWEPT:
            continue  # a sweep varies it (recycles=...): each variant logs its own
        # the study's variants, its sweep and a user's own watch() use the same name and the same spelling
        assert name in config.as_params() and name in sweep and name in recorder
        assert config.as_params()[name] == sweep[name]


def test_runs_recorded_with_the_old_prefixed_names_still_read():
    assert recorder_setting_of({"flux.window": "4"}, "window") == "4"
    assert recorder_setting_of({"window": "6", "flux.window": "4"}, "window") == "6"
    assert recorder_setting_of({}, "tau") is None


@pytest.mark.parametrize("name, value, message", [
    ("window", 1, "'window': 1 (expected an integer >= 2)"),
    ("flush_every", 5000, "'flush_every': 5000 (expected an integer from 1 to 1000)"),
    ("tau", -1.0, "'tau': -1.0 (expected a positive number)"),
    ("explorer", "yes", "'explorer': 'yes' (expected True or False)"),
    ("layer_metrics", ["nope"], "'layer_metrics': 'nope' (expected summary names among"),
])
def test_values_from_python_are_checked_with_one_line_naming_the_setting(name, value, message):
    with pytest.raises(InvalidParameter) as raised:
        RecorderSettings(**{name: value})
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_strings_round_trip_through_the_params_a_run_logs():
    config = TrainConfig.from_strings({"hidden": "32,8", "layer_metrics": "all", "twins": "true", "lr": "0.01"})
    assert TrainConfig.from_strings(config.as_params()) == config


def _another_value(spec):
    """A valid value of ``spec`` other than its default."""
    from mlflow_flux.fluctuation import SUMMARY_KEYS
    from mlflow_flux.settings import Choice, Flag, Integer, Number, SummaryNames

    kind = spec.kind
    if isinstance(kind, Flag):
        return not spec.default
    if isinstance(kind, Choice):
        return next(option for option in kind.options if option != spec.default)
    if isinstance(kind, SummaryNames):
        return (SUMMARY_KEYS[0],)
    if isinstance(kind, Integer):
        return spec.default + 1 if kind.maximum is None or spec.default < kind.maximum else spec.default - 1
    if isinstance(kind, Number):
        return spec.default / 2 if spec.default else 0.5
    raise AssertionError(f"no other value for {spec.name}: add one for {type(kind).__name__}")


def test_every_setting_passed_to_watch_reaches_the_watchers_settings():
    """watch()'s keywords reach FluxWatcher by one path: a setting dropped on the way would keep its default."""
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for spec in RecorderSettings.schema():
        value = _another_value(spec)
        assert value != spec.default, spec.name
        flux = mlflow_flux.watch(model, optimizer=optimizer, **{spec.name: value})
        assert getattr(flux.settings, spec.name) == value, spec.name
        assert not flux.recorder.attached  # made, not started: the model is untouched
