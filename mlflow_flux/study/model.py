"""The study's autoencoder: an MLP with ReLU (or tanh) hidden layers and a sigmoid output."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Autoencoder"]


class Autoencoder(nn.Module):
    """MLP autoencoder whose decoder mirrors the encoder.

    With ``hidden=(256, 64, 16)`` and 32x32 inputs the layers are ``encoder.fc1`` (1024->256), ``encoder.fc2``,
    ``encoder.fc3`` (the 16-wide code), ``decoder.fc1``, ``decoder.fc2`` and ``decoder.out`` (256->1024).
    Every hidden layer, the code included, is followed by the activation: ReLU (every hidden neuron can then be
    "dead"), or tanh (the architecture of the reducibility literature).
    """

    def __init__(self, input_dim: int, hidden: Sequence[int] = (256, 64, 16), activation: str = "relu") -> None:
        super().__init__()
        if input_dim < 1 or not hidden or any(width < 1 for width in hidden):
            raise ValueError(f"input_dim and every hidden width must be >= 1, got {input_dim} and {tuple(hidden)}")
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}.get(activation)
        if act is None:
            raise ValueError(f"activation must be relu or tanh, got {activation!r}")
        self.input_dim = input_dim
        self.hidden = tuple(hidden)
        widths = [input_dim, *hidden]
        encoder: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            encoder[f"fc{i}"] = nn.Linear(fan_in, fan_out)
            encoder[f"act{i}"] = act()
        decoder: OrderedDict[str, nn.Module] = OrderedDict()
        back = widths[::-1]
        for i, (fan_in, fan_out) in enumerate(zip(back[:-2], back[1:-1]), start=1):
            decoder[f"fc{i}"] = nn.Linear(fan_in, fan_out)
            decoder[f"act{i}"] = act()
        decoder["out"] = nn.Linear(back[-2], back[-1])
        decoder["sigmoid"] = nn.Sigmoid()
        self.encoder = nn.Sequential(encoder)
        self.decoder = nn.Sequential(decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.decoder(self.encoder(x.reshape(shape[0], -1))).reshape(shape)
