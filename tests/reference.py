"""What the trace must hold, computed the plain way: forward hooks keep every training output, weight gradients are
read by tensor hooks (or where the optimizer applies them), and every statistic is float64 arithmetic on those same
tensors. Nothing of mlflow-flux is used here."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlflow_flux.statistics import CHAINED
from mlflow_flux.traces.schema import STAT_COLUMNS


class Reference:
    """Per-neuron statistics of ``layers`` (name -> module; transformers' Conv1D keeps neurons in columns).

    Args:
        gradients: ``"backward"`` (a tensor hook per weight: every backward pass) or ``"manual"`` (the test calls
            :meth:`take_gradients` where the optimizer applies them).
    """

    def __init__(self, layers: dict[str, nn.Module], gradients: str = "backward", full=lambda tensor: tensor) -> None:
        self.layers = layers
        self.full = full  # a parameter as one whole tensor (FSDP2: DTensor.full_tensor, a collective)
        self.outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.grads: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self.previous: dict[str, torch.Tensor] = {}
        self.first: dict[str, torch.Tensor] = {}  # the weights at the first snapshot: w_dist0
        self.handles = []
        for name, module in layers.items():
            self.handles.append(module.register_forward_hook(self._keep_output(name)))
            if gradients == "backward":
                self.handles.append(module.weight.register_hook(self._keep_grad(name)))

    @staticmethod
    def columns(module: nn.Module) -> bool:
        return type(module).__name__ == "Conv1D"

    def _keep_output(self, name):
        def hook(module, inputs, output):
            if module.training and torch.is_grad_enabled():
                out = output.detach().double()
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    out = out.transpose(0, 1).reshape(out.shape[1], -1).T
                else:
                    out = out.reshape(-1, out.shape[-1])
                self.outputs[name].append(out.clone())
        return hook

    def _keep_grad(self, name):
        def hook(grad):
            self.grads[name].append(grad.detach().double().clone())
        return hook

    def take_gradients(self) -> None:
        for name, module in self.layers.items():
            if module.weight.grad is not None:
                self.grads[name].append(self.full(module.weight.grad).detach().double().clone())

    def snapshot(self) -> dict[str, dict[str, np.ndarray]]:
        """The statistics since the last call, per layer and trace column; then starts over."""
        out = {}
        for name, module in self.layers.items():
            w = self.full(module.weight).detach().double()
            g = list(self.grads[name])
            if self.columns(module):
                w, g = w.T, [x.T for x in g]
            w = w.reshape(w.shape[0], -1)
            size = w.shape[0]
            nan = torch.full((size,), math.nan, dtype=torch.float64)
            acts = torch.cat(self.outputs[name]) if self.outputs[name] else None
            bias = getattr(module, "bias", None)
            norms = torch.stack([x.reshape(size, -1).norm(dim=1) for x in g]) if g else None
            magnitudes = torch.stack([x.reshape(size, -1).abs().mean(dim=1) for x in g]) if g else None
            out[name] = {
                "w_mean": w.mean(1), "w_std": w.std(1, unbiased=False), "w_norm": w.norm(dim=1),
                "w_step": (w - self.previous[name]).norm(dim=1) if name in self.previous else nan,
                "w_dist0": (w - self.first.setdefault(name, w.clone())).norm(dim=1),
                "bias": self.full(bias).detach().double().clone() if isinstance(bias, torch.Tensor) else nan,
                "act_mean": acts.mean(0) if acts is not None else nan,
                "act_std": acts.std(0, unbiased=False) if acts is not None else nan,
                "act_rate": (acts > 0).double().mean(0) if acts is not None else nan,
                "act_relu_mean": acts.clamp_min(0).mean(0) if acts is not None else nan,
                "grad_norm": norms.pow(2).mean(0).sqrt() if norms is not None else nan,
                "grad_abs_mean": magnitudes.mean(0) if magnitudes is not None else nan,
                "grad_abs_last": magnitudes[-1] if magnitudes is not None else nan,
            }
            layer = out[name]
            layer["w_rel_step"] = torch.where(layer["w_norm"] > 0, layer["w_step"] / layer["w_norm"], nan)
            out[name] = {column: values.numpy() for column, values in out[name].items()}
            self.previous[name] = w.clone()
            self.outputs[name].clear()
            self.grads[name].clear()
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def assert_trace_matches(trace, expected: dict[int, dict], rtol: float = 2e-5, atol: float = 1e-6,
                         columns=tuple(c for c in STAT_COLUMNS if c not in CHAINED)) -> None:
    """Every column of every layer at every epoch of ``expected`` equals the trace, to float32 rounding (the chain
    columns, the redundant-unit readings, have their own test: tests/recording/test_redundancy.py)."""
    for epoch, layers in expected.items():
        for name, values in layers.items():
            rows = trace[(trace.epoch == epoch) & (trace.layer.astype(str) == name)].sort_values("neuron")
            assert len(rows) == len(values["w_std"]), (epoch, name)
            for column in columns:
                np.testing.assert_allclose(rows[column].to_numpy(), values[column], rtol=rtol, atol=atol,
                                           err_msg=f"{column} of {name} at epoch {epoch}")


class Block(nn.Module):
    """A pre-norm transformer block as nanoGPT writes it: every linear map an ``nn.Linear``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """A small GPT: token and position embeddings, a stack of blocks, a linear head."""

    def __init__(self, vocab: int = 64, width: int = 32, heads: int = 2, blocks: int = 2, context: int = 16) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(blocks)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.norm(self.blocks(x)))
