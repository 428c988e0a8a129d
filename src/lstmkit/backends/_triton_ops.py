"""The Triton backend as ``torch.library`` custom ops, for torch.compile and torch.export.

* ``lstmkit::triton_layer`` runs one plain layer in one direction on the kernels and returns
  ``out, h_n, c_n``, every step's cell state (T, B, H) when ``cells`` (else empty), then the
  buffers its backward reads: the activated gates (T, B, 4H), the hidden states (T+1, B, H)
  and the fp32 cell states (T+1, B, H) in processing order (empty when ``save`` is False).
* ``lstmkit::triton_layer_backward`` is its backward, itself an op, registered with
  ``register_autograd`` (first derivatives only, as in eager).

A custom op rather than ``torch.library.triton_op``: the launcher plans the work split per
card and retries a launch the card refuses (see :mod:`.triton`), which ``triton_op``'s
traced-into-Inductor form cannot express; Inductor calls the op as a whole. Both ops have
fake implementations, so T and B stay symbolic. The variants are not in the op yet: under
torch.compile the triton backend runs the plain LSTM (with lengths, bidirectional, layers).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.backends import triton as tb
from lstmkit.errors import BackendError

_OUT = "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor"


@torch.library.custom_op(
    "lstmkit::triton_layer",
    mutates_args=(),
    schema="(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
    f"Tensor? b_hh, Tensor? lengths, bool reverse, bool save, bool cells) -> ({_OUT})",
)
def triton_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, cells):
    out, h_n, c_n, saved, _ = tb.forward_layer(
        x.contiguous(), h0.contiguous(), c0.contiguous(), w_ih, w_hh, b_ih, b_hh, None,
        lengths, reverse, None, save,
    )  # fmt: skip
    gates, hs, cs, lens = saved[3], saved[4], saved[5], saved[6]
    c_all = tb.cell_states(cs, lens, reverse, x.dtype) if cells else x.new_empty(0)
    if not save:
        gates, hs, cs = x.new_empty(0), x.new_empty(0), x.new_empty(0)
    return out, h_n, c_n, c_all, gates, hs, cs


@triton_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, cells):
    T, B, H = x.size(0), x.size(1), w_hh.size(1)
    saved = [(T, B, 4 * H), (T + 1, B, H)] if save else [(0,), (0,)]
    return (
        x.new_empty(T, B, H),
        x.new_empty(B, H),
        x.new_empty(B, H),
        x.new_empty(T, B, H) if cells else x.new_empty(0),
        *(x.new_empty(s) for s in saved),
        x.new_empty((T + 1, B, H) if save else (0,), dtype=torch.float32),
    )


@torch.library.custom_op("lstmkit::triton_layer_backward", mutates_args=())
def triton_layer_backward(
    dout: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    gates: Tensor,
    hs: Tensor,
    cs: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    needs: list[bool],
    has_bias: bool,
) -> list[Tensor]:
    T, B, _ = x.shape
    lens = tb.int_lengths(lengths, T, B, x.device)
    saved = (x.contiguous(), w_ih, w_hh.contiguous(), gates, hs, cs, lens, None, None, None)
    need = [*needs[:5], needs[5], needs[5], False, False, False, False, False]
    grads = tb.backward_layer(saved, None, reverse, has_bias, need, dout, dh_n, dc_n)[:6]
    return [g if n and g is not None else x.new_empty(0) for g, n in zip(grads, needs, strict=True)]


@triton_layer_backward.register_fake
def _(dout, dh_n, dc_n, x, w_ih, w_hh, gates, hs, cs, lengths, reverse, needs, has_bias):
    B, H = x.size(1), w_hh.size(1)
    like = [x, x.new_empty(B, H), x.new_empty(B, H), w_ih, w_hh]
    like.append(x.new_empty(4 * H) if has_bias else None)
    return [
        torch.empty_like(t) if n and t is not None else x.new_empty(0)
        for t, n in zip(like, needs, strict=True)
    ]


def _setup_context(ctx, inputs, output):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, cells = inputs
    ctx.flags = (save, reverse, b_ih is not None, cells)
    if save:
        ctx.save_for_backward(x, w_ih, w_hh, lengths, *output[4:])
    ctx.mark_non_differentiable(*output[4:])


def _backward(ctx, dout, dh_n, dc_n, dcs, *_):
    save, reverse, has_bias, cells = ctx.flags
    if not save:
        raise RuntimeError(
            "lstmkit::triton_layer ran with save=False (no grad was needed when traced); "
            "it cannot be differentiated"
        )
    if cells and dcs is not None:  # unsupported() refuses this request: a guard
        raise BackendError("backend 'triton' does not support gradients of the cell states")
    x, w_ih, w_hh, lengths, gates, hs, cs = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[2], n[3], n[4], n[5] or n[6]]
    res = torch.ops.lstmkit.triton_layer_backward(
        dout, dh_n, dc_n, x, w_ih, w_hh, gates, hs, cs, lengths, reverse, needs, has_bias
    )
    g = [r if k else None for r, k in zip(res, needs, strict=True)]
    db = g[5]
    return (*g[:5], db if n[5] else None, db.clone() if n[6] and db is not None else None,
            None, None, None, None)  # fmt: skip


triton_layer.register_autograd(_backward, setup_context=_setup_context)


def run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save: bool, cells: bool):
    """A plain triton ``run`` through ``lstmkit::triton_layer`` (see :mod:`lstmkit.backends`)."""
    res = torch.ops.lstmkit.triton_layer(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, save, cells
    )
    return res[:4] if cells else res[:3]
