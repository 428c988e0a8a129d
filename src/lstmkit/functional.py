"""The stack loop: layers × directions, each step handed to one backend through one dispatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lstmkit import backends
from lstmkit.variants import CellExtras


def lstm(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    weights: list[list[Tensor | None]],
    *,
    num_layers: int,
    bidirectional: bool,
    dropout: float = 0.0,
    training: bool = False,
    lengths: Tensor | None = None,
    backend: str = "auto",
    extras: list[CellExtras | None] | None = None,
    features: frozenset[str] = frozenset(),
    cell_states: bool = False,
) -> tuple[Tensor, ...]:
    """A multi-layer LSTM over a time-major, right-padded batch.

    x (T, B, I); h0 (L*D, B, P or H); c0 (L*D, B, H); ``weights[k*D + d]`` is
    ``[weight_ih, weight_hh, bias_ih, bias_hh, weight_hr]`` (biases and weight_hr may be None);
    lengths (B,) int64 in 1..T or None. Returns output (T, B, D*(P or H)) with zeros past
    each length, h_n (L*D, B, P or H), c_n (L*D, B, H). ``extras[k*D + d]``: the variants of
    that layer and direction (None: plain), ``features`` the kernel features they need
    (:meth:`lstmkit.variants.Variant.features`). Inputs are assumed valid:
    :class:`lstmkit.LSTM` checks them at the edge. With ``cell_states`` a fourth result: the
    last layer's cell state after every step, (T, B, D*H), zero past each length.
    """
    D = 2 if bidirectional else 1
    req = backends_request(x, h0, c0, weights, num_layers, D, lengths, features, cell_states)
    choice = backends.resolve(req, backend)
    h_n, c_n = [], []
    layer_in = x
    cells: list[Tensor] = []
    for k in range(num_layers):
        outs = []
        last = cell_states and k == num_layers - 1  # the cell states of the last layer only
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, w_hr = weights[k * D + d]
            ex = None if extras is None else extras[k * D + d]
            out, h, c, *rest = choice.run(
                layer_in,
                h0[k * D + d],
                c0[k * D + d],
                w_ih,
                w_hh,
                b_ih,
                b_hh,
                w_hr,
                lengths,
                d == 1,
                *([ex] if ex is not None or last else []),
                *([True] if last else []),
            )
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
            cells += rest
        layer_in = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and training and k < num_layers - 1:
            layer_in = F.dropout(layer_in, dropout, training=True)
    if cell_states:
        cs = cells[0] if D == 1 else torch.cat(cells, dim=2)
        return layer_in, _stacked(h_n), _stacked(c_n), cs
    return layer_in, _stacked(h_n), _stacked(c_n)


def _stacked(states: list[Tensor]) -> Tensor:
    """(L*D, B, ·) from every layer and direction's final state; one layer's as it is (a
    backend's h_n and c_n are their own tensors: copying them again costs a pass over B·H
    values per call, a few % of a short inference at batch 256)."""
    return states[0].unsqueeze(0) if len(states) == 1 else torch.stack(states)


def backends_request(
    x, h0, c0, weights, num_layers, D, lengths, features=frozenset(), cell_states=False
) -> backends.Request:
    """The :class:`backends.Request` describing one call to :func:`lstm`."""
    w_ih, w_hh, _, _, w_hr = weights[0]
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad
        or h0.requires_grad
        or c0.requires_grad
        or any(w is not None and w.requires_grad for ws in weights for w in ws)
    )
    return backends.Request(
        device_type=x.device.type,
        dtype=x.dtype,
        T=x.size(0),
        B=x.size(1),
        I=x.size(2),
        H=w_hh.size(0) // 4,
        P=0 if w_hr is None else w_hr.size(0),
        num_layers=num_layers,
        directions=D,
        has_lengths=lengths is not None,
        needs_grad=needs_grad,
        features=features,
        cell_states=cell_states,
    )
