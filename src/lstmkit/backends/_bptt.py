"""The shared frame of the fast CPU backends: big GEMMs outside the time loop, BPTT by hand.

``fused`` (Python loop) and ``native`` (C++ loop) differ only in how they run the per-step
recurrence; everything that can be done for all T steps at once lives here:

* forward: the input projection ``x (T*B, I) @ W_ih^T + b_ih + b_hh`` as one GEMM;
* backward: after the reverse loop has produced the pre-activation gate gradients
  dG (T, B, 4H), the gradients of x, W_ih, W_hh, the biases and W_hr as one GEMM each.

A *loops* object supplies the two recurrences (see :class:`Loops`). Buffers are time-major and
the hidden states live in ``hbuf`` (T+1, B, P): in the forward direction step t reads slot t and
writes slot t+1; in reverse it reads slot t+1 and writes slot t. So ``out`` is the contiguous
view ``hbuf[1:]`` (or ``hbuf[:-1]``), and the states each step read are the other T slots,
which makes dW_hh a single GEMM too. ``cbuf`` (T+1, B, H) uses the same slots for c.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import torch
from torch import Tensor


class Loops(Protocol):
    """The per-step recurrences a backend provides (shapes in the module docstring)."""

    def forward(self, xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex=None):
        """Run the recurrence. ``xg`` (T, B, 4H) holds x·W_ih^T + b and is overwritten with the
        activated gates i, f, g, o. ``mask`` (T, B) bool or None: step t is live for b. ``ex``:
        the variants (:class:`lstmkit.variants.CellExtras`; the input projection's layer norm
        is already in ``xg``), or None for the plain LSTM.

        Returns (hbuf (T+1, B, P), c_n (B, H), cbuf (T+1, B, H) | None, tc (T, B, H) | None,
        r (T, B, H) | None); the last three (tanh(c_t), the pre-projection h_t) only if ``save``
        and r only with a projection. Dead steps copy the previous state into the new slot.
        With variants a sixth item, ``aux`` (a dict, filled only if ``save``), holds what their
        backward needs: "cnew" (T, B, H) the cell before zoneout (zoneout only), "ghat"
        (T, B, 4H) and "grstd" (T, B) the normalised recurrent projection and its 1/std,
        "chat" (T, B, H) and "crstd" (T, B) the same for the cell (layer norm only); and tc
        is tanh of the (normalised) cell the output reads."""

    def backward(
        self, dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, ex=None, aux=None,
        dcs=None,
    ):  # fmt: skip
        """Reverse loop. ``dout`` (T, B, P) | None, ``dh_n`` (B, P) | None, ``dc_n`` (B, H) | None,
        ``dcs`` (T, B, H) | None the gradient of every step's cell state c_t (zero on dead
        steps; added to the cell's gradient at step t, as ``dout`` is to the hidden state's).

        Returns (dG (T, B, 4H) pre-activation gate gradients, zero on dead steps;
        dht (T, B, P) | None the gradient reaching each projected h_t, zero on dead steps;
        dh0 (B, P); dc0 (B, H); then, with variants, a dict with "dgh" (T, B, 4H) the gradient
        of the raw recurrent projection (layer norm; otherwise it is dG), and the variant
        parameters' gradients summed over every step: "dpeep" (3H,), "dg_hh" (4H,), "dg_c"
        and "db_c" (H,))."""

    def norm_rows(self, v, gain, shift, save):
        """Layer norm of the rows of v (..., n) (overwritten): (v̂·gain + shift, v̂, 1/std),
        the last two None unless ``save``."""

    def norm_rows_backward(self, dy, gain, vhat, rstd):
        """(dv, dgain) from dy, the gradient of norm_rows' output."""

    def mm(self, a, b, bias=None, reuse=False):
        """a (M, K) @ b (K, N) (+ bias (N,)): the big products outside the time loop. ``reuse``:
        b is a weight that the same call multiplies again (inference chunks), so a backend
        that repacks it may keep the packed copy."""

    def empty(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A new uninitialised tensor of ``like``'s dtype and device for a result of T·B rows
        (the outputs), from wherever the backend keeps big buffers."""


def mm(a: Tensor, b: Tensor, bias: Tensor | None = None, reuse: bool = False) -> Tensor:
    """Loops.mm for the backends that leave the big products to torch (BLAS)."""
    return torch.mm(a, b) if bias is None else torch.addmm(bias, a, b)


def empty(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Loops.empty for the backends that leave allocation to torch."""
    return like.new_empty(shape)


def input_projection(loops, x: Tensor, w_ih: Tensor, b_ih, b_hh) -> Tensor:
    """x (T, B, I) -> x·W_ih^T + b_ih + b_hh as (T, B, 4H), one GEMM for every step."""
    T, B, I = x.shape
    bias = None if b_ih is None else b_ih + b_hh
    return loops.mm(x.reshape(T * B, I), w_ih.t(), bias, reuse=True).view(T, B, -1)


def normed_projection(loops, x, w_ih, b_ih, b_hh, g_ih, save: bool):
    """Layer norm's input projection: LN(x·W_ih^T)·g_ih + b_ih + b_hh as (T, B, 4H), with the
    normalised projection and its 1/std for the backward (None unless ``save``)."""
    T, B, I = x.shape
    raw = loops.mm(x.reshape(T * B, I), w_ih.t(), reuse=True).view(T, B, -1)
    shift = None if b_ih is None else b_ih + b_hh
    return loops.norm_rows(raw, g_ih, shift, save)


def _project(loops, x, w_ih, b_ih, b_hh, ex) -> Tensor:
    """The input projection for inference (layer norm applied when the variant has it)."""
    if ex is None or ex.layer_norm is None:
        return input_projection(loops, x, w_ih, b_ih, b_hh)
    return normed_projection(loops, x, w_ih, b_ih, b_hh, ex.layer_norm[0], False)[0]


def time_mask(lengths: Tensor | None, T: int, device) -> Tensor | None:
    """(T, B) bool, True where t < lengths[b]; None when every sequence has length T."""
    if lengths is None or bool((lengths == T).all()):
        return None
    return (torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)).to(device)


# The saved buffers of the variants' loops (``aux`` in Loops.forward).
_AUX_KEYS = ("cnew", "ghat", "grstd", "chat", "crstd")


def _outputs(hbuf: Tensor, c_n: Tensor, mask: Tensor | None, reverse: bool,
             saved_by: Loops | None = None):  # fmt: skip
    """(out (T, B, P) zero on dead steps, h_n (B, P), c_n) from the state buffer.

    h_n is always its own tensor (never aliasing a row of out); out is too when ``hbuf`` is
    saved for backward (``saved_by``: the loops whose ``empty`` holds the copy), so callers
    may modify outputs in place as with torch.nn.LSTM."""
    out = hbuf[:-1] if reverse else hbuf[1:]
    h_n = hbuf[0] if reverse else hbuf[-1]
    if saved_by is not None:
        own = saved_by.empty(tuple(out.shape), out)
        out = own.copy_(out) if mask is None else torch.mul(out, _alive(mask, out), out=own)
    elif mask is not None:
        out = out * _alive(mask, out)
    return out, h_n.clone(), c_n


def _alive(mask: Tensor, like: Tensor) -> Tensor:
    """The (T, B) mask as (T, B, 1) factors in ``like``'s dtype."""
    return mask.unsqueeze(-1).to(like.dtype)


def cell_states(cbuf: Tensor, mask: Tensor | None, reverse: bool) -> Tensor:
    """Every step's cell state c_t (T, B, H) in time order, zero on dead steps, from the
    saved cell buffer (its own tensor: never a view of the buffer the backward reads)."""
    cs = cbuf[:-1] if reverse else cbuf[1:]
    return cs * mask.unsqueeze(-1).to(cs.dtype) if mask is not None else cs.clone()


def forward_cells_no_grad(
    loops: Loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex=None
):
    """Inference that also returns every step's cell state: (out, h_n, c_n, cells (T, B, H)).
    One pass over all steps with the cell buffer kept (as training keeps it), not chunked."""
    mask = time_mask(lengths, x.size(0), x.device)
    xg = _project(loops, x, w_ih, b_ih, b_hh, ex)
    hbuf, c_n, cbuf, *_ = loops.forward(xg, h0, c0, w_hh, w_hr, mask, reverse, True, ex)
    return (*_outputs(hbuf, c_n, mask, reverse), cell_states(cbuf, mask, reverse))


# Inference projects the inputs one chunk of steps at a time so that the gate buffer stays in
# cache: all T steps at once is T*B*4H values (65 MB at T=1000, B=256, H=16), written by the
# GEMM and read back by the loop from memory. Chunks hold about this many bytes of gates, and
# at least CHUNK_MIN_STEPS steps so that the input GEMM is not cut too thin. Each chunk's GEMM
# reads all of W_ih again, so a big W_ih (16 MB at H = 1024) gets chunks up to 4x longer.
CHUNK_BYTES = 1 << 21
CHUNK_MIN_STEPS = 4


def chunk_steps(T: int, B: int, G: int, itemsize: int, weight_bytes: int = 0) -> int:
    """Steps per inference chunk (see CHUNK_BYTES); ``weight_bytes``: W_ih's size."""
    size = max(CHUNK_BYTES, min(4 * CHUNK_BYTES, weight_bytes))
    return min(T, max(CHUNK_MIN_STEPS, size // max(1, B * G * itemsize)))


def forward_no_grad(
    loops: Loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex=None
):
    """Inference: the same recurrence, nothing saved for backward, in chunks of steps.

    Each chunk runs the loop from the state the previous one left (reverse: chunks from the
    end), so the result is that of one pass; dead steps carry state across chunk borders."""
    T, B, _ = x.shape
    mask = time_mask(lengths, T, x.device)
    n = chunk_steps(T, B, w_ih.size(0), x.element_size(), w_ih.numel() * w_ih.element_size())
    if n >= T:
        xg = _project(loops, x, w_ih, b_ih, b_hh, ex)
        hbuf, c_n, *_ = loops.forward(xg, h0, c0, w_hh, w_hr, mask, reverse, False, ex)
        return _outputs(hbuf, c_n, mask, reverse)
    out = loops.empty((T, B, w_hh.size(1)), x)
    h, c = h0, c0
    starts = range(0, T, n)
    for t0 in reversed(starts) if reverse else starts:
        t1 = min(t0 + n, T)
        xg = _project(loops, x[t0:t1], w_ih, b_ih, b_hh, ex)
        m = None if mask is None else mask[t0:t1]
        hbuf, c, *_ = loops.forward(xg, h, c, w_hh, w_hr, m, reverse, False, _chunk(ex, t0, t1))
        out[t0:t1] = hbuf[:-1] if reverse else hbuf[1:]
        h = hbuf[0] if reverse else hbuf[-1]
    if mask is not None:
        out.mul_(mask.unsqueeze(-1).to(out.dtype))  # zero past each length, as in one pass
    return out, h.clone(), c


def _chunk(ex, t0: int, t1: int):
    """The variants of steps t0..t1-1 (per-step zoneout masks sliced)."""
    if ex is None:
        return None
    z = {k: getattr(ex, k) for k in ("zoneout_c", "zoneout_h")}
    z = {k: v[t0:t1] if isinstance(v, Tensor) else v for k, v in z.items()}
    return dataclasses.replace(ex, **z)


# What a training forward keeps for the backward, in this order (None where unused):
# the activated gates (T, B, 4H), hbuf, cbuf, tc, r, the (T, B) time mask, the input
# projection's normalised rows and 1/std (layer norm), and the variants' aux (see Loops).
STATE = ("gates", "hbuf", "cbuf", "tc", "r", "mask", "xhat", "rstd", *_AUX_KEYS)


def forward_train(loops: Loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex):
    """The forward that keeps what :func:`backward_train` needs: (out, h_n, c_n, state), state
    a tuple in :data:`STATE`'s order (its first 8 only for the plain LSTM: tuples and no
    dicts, as this is eager training's path); ``x`` must be contiguous."""
    xhat = rstd = None
    if ex is None or ex.layer_norm is None:
        xg = input_projection(loops, x, w_ih, b_ih, b_hh)
    else:
        xg, xhat, rstd = normed_projection(loops, x, w_ih, b_ih, b_hh, ex.layer_norm[0], True)
    mask = time_mask(lengths, x.size(0), x.device)
    hbuf, c_n, cbuf, tc, r, *aux = loops.forward(
        xg, h0, c0, w_hh, w_hr, mask, reverse, True, *([ex] if ex is not None else [])
    )
    state = (xg, hbuf, cbuf, tc, r, mask, xhat, rstd)
    if aux:
        state += tuple(aux[0].get(k) for k in _AUX_KEYS)
    return (*_outputs(hbuf, c_n, mask, reverse, saved_by=loops), state)


def backward_train(loops: Loops, x, w_ih, w_hh, w_hr, state, dout, dh_n, dc_n, needs, has_bias,
                   reverse, ex, dcs=None):  # fmt: skip
    """The gradients of :class:`LSTMFunction`'s first 13 inputs (x, h0, c0, w_ih, w_hh, b_ih,
    b_hh, w_hr, peep, g_ih, g_hh, g_c, b_c), None where ``needs[i]`` is False or unused.
    ``dcs`` (T, B, H) | None: the gradient of :func:`cell_states`' output."""
    gates, hbuf, cbuf, tc, r, mask, xhat, rstd = state[:8]
    T, B, I = x.shape
    if dout is not None:
        dout = dout.contiguous()
    if dcs is not None:  # the cell states are zero past each length: no gradient there
        dcs = dcs.contiguous() if mask is None else dcs * mask.unsqueeze(-1).to(dcs.dtype)
    extra = []
    if ex is not None:
        extra = [ex, {k: t for k, t in zip(_AUX_KEYS, state[8:], strict=True) if t is not None}]
    dG, dht, dh0, dc0, *vgrads = loops.backward(
        dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, *extra, dcs=dcs
    )
    vg = vgrads[0] if vgrads else {}
    dG2 = dG.view(T * B, -1)
    hprev = hbuf[1:] if reverse else hbuf[:-1]  # the state each step read
    if ex is not None and ex.h_mask is not None:
        hprev = hprev * ex.h_mask  # the gates read h ⊙ m
    dgh = vg.get("dgh", dG).view(T * B, -1)  # gradient of h·W_hh^T (layer norm: raw)
    dxg = dG2  # gradient of x·W_ih^T
    dg_ih = None
    if xhat is not None:
        dxg, dg_ih = loops.norm_rows_backward(dG, ex.layer_norm[0], xhat, rstd)
        dxg = dxg.view(T * B, -1)
    dx = loops.mm(dxg, w_ih).view(T, B, I) if needs[0] else None
    dw_ih = loops.mm(dxg.t(), x.view(T * B, I)) if needs[3] else None
    dw_hh = loops.mm(dgh.t(), hprev.reshape(T * B, -1)) if needs[4] else None
    db = dG2.sum(0) if has_bias and (needs[5] or needs[6]) else None
    dw_hr = None
    if w_hr is not None and needs[7]:
        dw_hr = torch.mm(dht.view(T * B, -1).t(), r.view(T * B, -1))
    dh0 = dh0 if needs[1] else None
    dc0 = dc0 if needs[2] else None
    db2 = None if db is None else db.clone()  # each bias gets its own gradient tensor
    dvar = [vg.get(k) if needs[i] else None for i, k in enumerate(_VGRADS, start=8)]
    dg_ih = dg_ih if needs[9] else None
    return (dx, dh0, dc0, dw_ih, dw_hh, db, db2, dw_hr, dvar[0], dg_ih, *dvar[2:])


class LSTMFunction(torch.autograd.Function):
    """One layer, one direction, with a handwritten backward through time.

    The variants' parameters (peephole (3H,), layer-norm gains g_ih, g_hh (4H,), g_c, b_c
    (H,)) are inputs too, so that they get gradients; ``ex`` carries them with the masks.
    First derivatives only: the backward is not itself differentiable (no double backward).
    With ``cells`` a fourth output, every step's cell state (:func:`cell_states`).
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, g_ih, g_hh, g_c, b_c,
                lengths, reverse, loops, ex, cells):  # fmt: skip
        x = x.contiguous()
        out, h_n, c_n, state = forward_train(
            loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex
        )
        ctx.save_for_backward(x, w_ih, w_hh, w_hr, *state)
        ctx.reverse, ctx.loops, ctx.has_bias, ctx.ex = reverse, loops, b_ih is not None, ex
        ctx.set_materialize_grads(False)
        if cells:
            return out, h_n, c_n, cell_states(state[2], state[5], reverse)
        return out, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dh_n, dc_n, dcs=None):
        x, w_ih, w_hh, w_hr, *state = ctx.saved_tensors
        grads = backward_train(ctx.loops, x, w_ih, w_hh, w_hr, state, dout, dh_n, dc_n,
                               ctx.needs_input_grad, ctx.has_bias, ctx.reverse, ctx.ex,
                               dcs)  # fmt: skip
        return (*grads, None, None, None, None, None)


# The variant parameters' gradients a loops backward returns, in LSTMFunction's input order
# from input 8 (g_ih's, input 9, comes from norm_rows_backward).
_VGRADS = ("dpeep", "dg_ih", "dg_hh", "dg_c", "db_c")


def run_with(loops: Loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex=None,
             cells=False):  # fmt: skip
    """The backend ``run`` over a given loops object (see :mod:`lstmkit.backends`); with
    ``cells`` a fourth result, every step's cell state (T, B, H), zero on dead steps."""
    peep = None if ex is None else ex.peephole
    ln = (None,) * 4 if ex is None or ex.layer_norm is None else ex.layer_norm
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, peep, *ln)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if torch.compiler.is_compiling():  # torch.compile / torch.export: one custom op
        from lstmkit.backends import _ops

        return _ops.run(loops.name, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse,
                        ex, save, cells)  # fmt: skip
    if save:
        return LSTMFunction.apply(*tensors, lengths, reverse, loops, ex, cells)
    infer = forward_cells_no_grad if cells else forward_no_grad
    return infer(loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex)
