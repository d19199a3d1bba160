"""Each hidden unit's redundant partner, how close it is, and its fan-out: the per-neuron columns behind the reduced
widths (:mod:`mlflow_flux.reducibility`, docs/metrics.md), computed at a snapshot from the layer's weights and the
next layer's, on the weights' device.

A unit is ``v_i = [w_i, b_i]`` (its incoming weights and bias). Followed by ReLU its partner is the unit with the
largest cosine to it (``relu(a z) = a relu(z)`` for ``a > 0``: positively proportional units are one unit), its
distance ``1 - cos``; followed by tanh, the unit closest to it or to its negation (``tanh`` is odd, and
``tanh(a z) != a tanh(z)``: proportional is not enough), its distance ``min ||v_i -+ v_j|| / ||v_i||``. Blockwise:
a block of rows of the Gram matrix at a time (no ``H x H`` matrix for a wide layer), in the weights' dtype to find the
partner, then the chosen pair's distance again in float64.
"""

from __future__ import annotations

import torch

__all__ = ["PARTNER_ACTIVATIONS", "unit_redundancy"]

PARTNER_ACTIVATIONS = ("relu", "tanh")  # the activations whose reducibility conditions the literature gives


def _pairs_in_float64(rows: torch.Tensor, bias: torch.Tensor | None, partner: torch.Tensor, sign: torch.Tensor,
                      step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every unit i and its partner p(i): ``v_i . v_p``, ``|v_i|^2`` and ``|v_i - sign v_p|^2`` in float64, a
    chunk of rows at a time."""
    count = rows.shape[0]
    dot = torch.empty(count, dtype=torch.float64, device=rows.device)
    own = torch.empty_like(dot)
    apart = torch.empty_like(dot)
    for start in range(0, count, step):
        part = slice(start, min(count, start + step))
        a = rows[part].double()
        b = rows.index_select(0, partner[part]).double()
        s = sign[part].double()[:, None]
        dot[part] = (a * b).sum(1)
        own[part] = (a * a).sum(1)
        apart[part] = ((a - s * b) ** 2).sum(1)
        if bias is not None:
            ab, bb = bias[part].double(), bias.index_select(0, partner[part]).double()
            dot[part] += ab * bb
            own[part] += ab * ab
            apart[part] += (ab - s[:, 0] * bb) ** 2
    return dot, own, apart


@torch.no_grad()
def unit_redundancy(rows: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
                    outgoing: torch.Tensor | None, chunk_elements: int = 1 << 20) -> torch.Tensor:
    """``(3, units)`` float32 on the host: each unit's partner index, its distance to it, and its fan-out against
    the layer's mean (NaN where not defined: another activation, one unit alone, no next layer).

    Args:
        rows: ``(units, fan_in)`` incoming weights, one row per unit.
        bias: ``(units,)`` or None.
        activation: the activation that follows the layer.
        outgoing: ``(units, k)`` the next layer's weights that read each unit (:func:`~.chains.outgoing_columns`).
        chunk_elements: about how many values a block of the Gram matrix or a chunk of rows holds.
    """
    units = rows.shape[0]
    out = torch.full((3, units), float("nan"), dtype=torch.float64)
    if outgoing is not None and units:
        fan = torch.linalg.vector_norm(outgoing.double(), dim=1)
        mean = fan.mean()
        out[2] = (fan / mean if mean > 0 else torch.full_like(fan, float("nan"))).cpu()
    if activation not in PARTNER_ACTIVATIONS or units < 2:
        return out.float()
    work = rows if rows.dtype in (torch.float32, torch.float64) else rows.float()
    b = None if bias is None else (bias if bias.dtype == work.dtype else bias.to(work.dtype))
    norms_sq = (work * work).sum(1) + (b * b if b is not None else 0)
    norms = norms_sq.sqrt()
    partner = torch.empty(units, dtype=torch.long, device=rows.device)
    sign = torch.ones(units, dtype=work.dtype, device=rows.device)
    step = max(1, chunk_elements // max(1, units))
    for start in range(0, units, step):
        part = slice(start, min(units, start + step))
        gram = work[part] @ work.t()
        if b is not None:
            gram += b[part, None] * b[None, :]
        own = torch.arange(part.start, part.stop, device=rows.device)
        if activation == "relu":
            scale = norms[part, None] * norms[None, :]
            score = torch.where(scale > 0, gram / scale, torch.full_like(gram, -2.0))
            score[own - start, own] = -3.0  # never its own partner
            partner[part] = score.argmax(1)
        else:
            distance = norms_sq[part, None] + norms_sq[None, :] - 2 * gram.abs()
            distance[own - start, own] = float("inf")
            partner[part] = distance.argmin(1)
            sign[part] = torch.where(gram.gather(1, partner[part, None])[:, 0] < 0, -1.0, 1.0).to(work.dtype)
    dot, own_sq, apart = _pairs_in_float64(work, b, partner, sign, max(1, chunk_elements // max(1, rows.shape[1])))
    if activation == "relu":
        other_sq = own_sq.index_select(0, partner)
        scale = (own_sq * other_sq).sqrt()
        distance = torch.where(scale > 0, 1.0 - dot / scale, torch.full_like(dot, float("nan"))).clamp_min(0.0)
    else:
        distance = torch.where(own_sq > 0, apart.sqrt() / own_sq.sqrt(), torch.full_like(dot, float("nan")))
    out[0] = partner.double().cpu()
    out[1] = distance.cpu()
    return out.float()
