"""The reference LSTM cell: the oracle every faster path is tested against.

Keep it as plain as the tutorial it comes from; speed lives in ``lstmkit.backends``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def lstm_gates(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four activated gates of one step, each (B, H); x (B, I), h (B, P or H).

    The tutorial's ``W · concat(x, h) + b`` is ``W_ih · x + W_hh · h + b_ih + b_hh``:
    the same matrix split in two, which is how PyTorch stores it (gate order i, f, g, o).
    """
    gates = x @ weight_ih.T + h @ weight_hh.T
    if bias_ih is not None:
        gates = gates + bias_ih + bias_hh
    i, f, g, o = gates.chunk(4, dim=1)
    i = torch.sigmoid(i)  # input gate: how much of the candidate to write
    f = torch.sigmoid(f)  # forget gate: how much of the old cell to keep
    g = torch.tanh(g)  # candidate values
    o = torch.sigmoid(o)  # output gate: how much of the cell to expose
    return i, f, g, o


def lstm_cell(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One LSTM step. x (B, I), h (B, P or H), c (B, H) -> (h', c')."""
    i, f, g, o = lstm_gates(x, h, weight_ih, weight_hh, bias_ih, bias_hh)
    c = f * c + i * g
    h = o * torch.tanh(c)
    if weight_hr is not None:
        h = h @ weight_hr.T  # projection (B, H) -> (B, P)
    return h, c


class LSTMCell(nn.Module):
    r"""The tutorial's LSTM cell, in PyTorch's parameter layout.

    .. math::
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)

    Parameters: ``weight_ih`` (4H, I), ``weight_hh`` (4H, H), ``bias_ih`` (4H,), ``bias_hh``
    (4H,), gate order i, f, g, o, initialised U(-1/sqrt(H), 1/sqrt(H)); a
    ``torch.nn.LSTMCell`` state_dict loads into it and back.

    Input: ``x`` (B, I) or unbatched (I,); ``hx = (h, c)``, each (B, H) or (H,), zeros if None.
    Output: ``(h', c')`` with the batch shape of the input.
    """

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        kw = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size, **kw))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if x.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: input must be 1-D (I,) or 2-D (B, I), got {x.dim()}-D")
        if x.size(-1) != self.input_size:
            raise ValueError(
                f"LSTMCell: input.size(-1) must be {self.input_size}, got {x.size(-1)}"
            )
        unbatched = x.dim() == 1
        xb = x.unsqueeze(0) if unbatched else x
        shape = (xb.size(0), self.hidden_size)
        if hx is None:
            h = c = xb.new_zeros(shape)
        else:
            h, c = (s.unsqueeze(0) if unbatched else s for s in hx)
            for name, s in (("h", h), ("c", c)):
                if tuple(s.shape) != shape:
                    raise ValueError(
                        f"LSTMCell: {name} must have shape {shape}, got {tuple(s.shape)}"
                    )
        h, c = lstm_cell(xb, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        return s if self.bias else s + ", bias=False"
