"""Which layers are watched: defaults, names, glob patterns, types, and one clear error for what matches nothing."""

import pytest
import torch
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


def names(layers):
    return [layer.name for layer in layers]


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
    with pytest.raises(FluxError, match="has no layer to watch: mlflow-flux records Linear, Conv1d"):
        select_layers(nn.Sequential(nn.ReLU()))
    with pytest.raises(FluxError, match=r"layer 'decoder\.\*' matches no watchable layer.*encoder\.0"):
        select_layers(Net(), ["decoder.*"])


@pytest.mark.parametrize("spec, message", [
    (nn.Embedding, r"layers=\[Embedding\]: mlflow-flux does not record Embedding layers"),
    (nn.LayerNorm, r"does not record LayerNorm layers; it records Linear, Conv1d, Conv2d, Conv3d"),
    ("embed", r"layer 'embed' is a Embedding, which mlflow-flux does not record"),
    ("norm", r"layer 'norm' is a LayerNorm"),
])
def test_a_layer_kind_the_recorder_does_not_define_is_refused_naming_it(spec, message):
    with pytest.raises(FluxError, match=message):
        select_layers(Net(), [spec])


def test_a_custom_module_is_refused_but_a_pattern_keeps_the_layers_it_can_read():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4, 4))

    model = nn.Sequential(Gate(), nn.Linear(4, 4))
    with pytest.raises(FluxError, match="layer '0' is a Gate"):
        select_layers(model, ["0"])
    assert names(select_layers(model, ["*"])) == ["1"]
    assert names(select_layers(model)) == ["1"]


def test_transformers_conv1d_is_a_layer_whose_neurons_are_columns():
    from transformers.pytorch_utils import Conv1D

    layer = select_layers(nn.Sequential(Conv1D(12, 5)))[0]  # Conv1D(nf=12 outputs, nx=5 inputs): weight (5, 12)
    assert layer.kind.name == "transformers Conv1D" and layer.size == 12 and layer.kind.weight_axis == 1
