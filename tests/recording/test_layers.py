"""Which layers are watched: defaults, names, glob patterns, types, and one clear error for what matches nothing."""

import pytest
from torch import nn

from mlflow_flux.errors import FluxError
from mlflow_flux.recording.layers import select_layers


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 4, 1))
        self.head = nn.Linear(8, 3)
        self.norm = nn.LayerNorm(3)
        self.embed = nn.Embedding(10, 8)


def names(pairs):
    return [name for name, _ in pairs]


def test_default_is_every_linear_and_conv_in_model_order():
    assert names(select_layers(Net())) == ["encoder.0", "encoder.2", "head"]


def test_names_globs_and_types_select_in_model_order():
    model = Net()
    assert names(select_layers(model, ["head", "encoder.0"])) == ["encoder.0", "head"]
    assert names(select_layers(model, ["encoder.*"])) == ["encoder.0", "encoder.2"]
    assert names(select_layers(model, [nn.Conv1d, "head"])) == ["encoder.2", "head"]
    assert names(select_layers(model, ["head", "h*"])) == ["head"]  # each layer once


def test_a_model_that_is_itself_a_layer_goes_by_its_class_name():
    assert names(select_layers(nn.Linear(2, 3))) == ["Linear"]


def test_nothing_to_watch_is_one_error_naming_what_is_watchable():
    with pytest.raises(FluxError, match="no Linear or Conv layer"):
        select_layers(nn.Sequential(nn.ReLU()))
    with pytest.raises(FluxError, match=r"layer 'decoder\.\*' matches no watchable layer.*encoder\.0"):
        select_layers(Net(), ["decoder.*"])
