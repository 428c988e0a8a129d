"""The cuDNN backend: torch's own fused LSTM (``torch._VF.lstm``) run with our weights.

CUDA only. It lets ``auto`` choose between cuDNN and the Triton kernels by size, and is the
baseline the Triton kernels are measured against. Lengths become a packed sequence; the
reverse direction runs forward over each sequence's valid part reversed in time.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from lstmkit.backends import BackendError, lacking


def unsupported(req) -> str | None:
    if req.device_type != "cuda":
        return f"device {req.device_type} (cudnn runs on CUDA only)"
    if not req.dtype.is_floating_point:
        return f"dtype {req.dtype}"
    if req.cell_states:
        return "return_cell_states (cuDNN gives only the last cell state)"
    return lacking(req, frozenset())


def _reversal_index(lengths: torch.Tensor, T: int, device) -> torch.Tensor:
    """(T, B) index: t -> len-1-t inside each sequence, t itself past its end (an involution)."""
    t = torch.arange(T, device=device)[:, None]
    n = lengths.to(device)[None, :]
    return torch.where(t < n, n - 1 - t, t)


def _time_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(0, idx[:, :, None].expand(-1, -1, x.size(2)))


def run(
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras=None
):
    """One layer, one direction; see :mod:`lstmkit.backends` for shapes and semantics.

    x (T, B, I), h0 (B, P or H), c0 (B, H) -> out (T, B, P or H), h_n, c_n."""
    if extras is not None:
        raise BackendError("backend 'cudnn' does not support the LSTM variants (cuDNN has none)")
    T = x.size(0)
    params = [weight_ih, weight_hh]
    if bias_ih is not None:
        params += [bias_ih, bias_hh]
    if weight_hr is not None:
        params.append(weight_hr)
    idx = None
    if reverse:
        if lengths is None:
            x = x.flip(0)
        else:
            idx = _reversal_index(lengths, T, x.device)
            x = _time_gather(x, idx)
    # cuDNN keeps what its backward needs only in training mode
    train = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, h0, c0, *params) if t is not None
    )
    hx = (h0.unsqueeze(0), c0.unsqueeze(0))
    has_bias = bias_ih is not None
    with warnings.catch_warnings():
        # our weights are separate tensors, not torch's flattened buffer: cuDNN copies them
        warnings.filterwarnings("ignore", message="RNN module weights are not part")
        if lengths is None:
            out, h_n, c_n = torch._VF.lstm(x, hx, params, has_bias, 1, 0.0, train, False, False)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
            order, unorder = packed.sorted_indices, packed.unsorted_indices
            hx = (hx[0].index_select(1, order), hx[1].index_select(1, order))
            data, h_n, c_n = torch._VF.lstm(
                packed.data, packed.batch_sizes, hx, params, has_bias, 1, 0.0, train, False
            )
            packed_out = PackedSequence(data, packed.batch_sizes, order, unorder)
            out, _ = pad_packed_sequence(packed_out, total_length=T)
            h_n, c_n = h_n.index_select(1, unorder), c_n.index_select(1, unorder)
    if reverse:
        out = out.flip(0) if idx is None else _time_gather(out, idx)
    return out, h_n[0], c_n[0]
