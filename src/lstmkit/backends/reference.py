"""The reference backend: the time loop over :func:`lstmkit.cell.lstm_cell`, plain autograd.

Slow and obviously right; it runs anything torch can run (any device, any float dtype).

Under torch.compile the loop is unrolled, so T is specialised: each new T compiles again
(B stays dynamic), and a long T compiles slowly. torch.export needs a static T here (the
fused and native backends export with a dynamic T, through one custom op per layer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.cell import lstm_cell


def unsupported(req) -> str | None:
    return None


def run(
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras=None,
    cells=False,
):  # fmt: skip
    """One layer, one direction; see :mod:`lstmkit.backends` for shapes and semantics."""
    T = x.size(0)
    if torch.compiler.is_exporting() and isinstance(T, torch.SymInt):
        from lstmkit.backends import BackendError

        raise BackendError(
            "backend 'reference' loops over T in Python, so torch.export needs a static T "
            "(Dim.STATIC); the fused and native backends export with a dynamic T"
        )
    h, c = h0, c0
    alive = None if lengths is None else lengths.to(x.device)
    outs: list[Tensor] = [x.new_empty(0)] * T
    cs: list[Tensor] = [x.new_empty(0)] * T
    for t in range(T - 1, -1, -1) if reverse else range(T):
        h_new, c_new = lstm_cell(
            x[t], h, c, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, extras, t
        )
        if alive is None:
            h, c, outs[t], cs[t] = h_new, c_new, h_new, c_new
        else:
            m = (t < alive).unsqueeze(1)  # which sequences still have step t
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            outs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
            cs[t] = torch.where(m, c_new, torch.zeros_like(c_new))
    if cells:
        return torch.stack(outs), h, c, torch.stack(cs)
    return torch.stack(outs), h, c
