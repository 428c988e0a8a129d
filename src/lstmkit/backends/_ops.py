"""The fused and native recurrences as ``torch.library`` custom ops, for torch.compile and
torch.export: one op per layer and direction in the graph, never a loop over time.

* ``lstmkit::lstm_layer`` runs one layer in one direction (the arguments of a backend's
  ``run``, the variants' tensors flattened) and returns ``out, h_n, c_n``, every step's cell
  state (T, B, H) when ``cells`` (else an empty tensor), followed by the
  buffers its backward reads (:data:`lstmkit.backends._bptt.STATE` less the time mask, which
  the backward rebuilds from ``lengths``); with ``save=False`` (inference) those buffers are
  empty and the inputs are projected in chunks of steps, as in eager inference.
* ``lstmkit::lstm_layer_backward`` is its backward through time, itself an op, registered
  with ``register_autograd`` (first derivatives only, as in eager).

Both have fake implementations that give every output's shape from the inputs' shapes and
the static flags, so T and B stay symbolic. ``impl`` names the loops ("fused" or "native").
Eager calls never go through these ops (``_bptt.run_with`` calls them only while
``torch.compiler.is_compiling()``), so eager speed is unchanged; importing ``lstmkit``
registers them, which is all a process loading a ``torch.export``-ed program needs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.backends import _bptt, fused, native
from lstmkit.variants import CellExtras

# The saved buffers the forward op returns after out, h_n, c_n (the mask is rebuilt).
SAVED = tuple(k for k in _bptt.STATE if k != "mask")
# The gradients the backward op returns, in LSTMFunction's input order.
GRADS = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
GRADS += ("peep", "g_ih", "g_hh", "g_c", "b_c")


def _loops(impl: str):
    if impl == "fused":
        return fused.LOOPS
    if impl == "native":
        return native.NativeLoops(native.prepare())  # BackendError where it cannot be built
    raise ValueError(f"lstmkit::lstm_layer: impl must be 'fused' or 'native', got {impl!r}")


def _extras(variant, peep, g_ih, g_hh, g_c, b_c, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p):
    """The CellExtras the flat op arguments describe (None: the plain LSTM)."""
    if not variant:
        return None
    return CellExtras(
        peephole=peep,
        layer_norm=None if g_ih is None else (g_ih, g_hh, g_c, b_c),
        coupled=coupled,
        cell_clip=cell_clip,
        h_mask=h_mask,
        zoneout_c=zc if zc is not None else (zc_p or None),  # 0.0: no zoneout, as the
        zoneout_h=zh if zh is not None else (zh_p or None),  # fake implementation assumes
    )


def _saved_shapes(x, h0, c0, w_hr, g_ih, zc, zc_p, T, B) -> dict:
    """The shape of each saved buffer of a training forward (None: not kept)."""
    H, P, G = c0.size(1), h0.size(1), 4 * c0.size(1)
    ln = g_ih is not None
    return {
        "gates": (T, B, G),
        "hbuf": (T + 1, B, P),
        "cbuf": (T + 1, B, H),
        "tc": (T, B, H),
        "r": (T, B, H) if w_hr is not None else None,
        "xhat": (T, B, G) if ln else None,
        "rstd": (T, B) if ln else None,
        "cnew": (T, B, H) if zc is not None or zc_p else None,
        "ghat": (T, B, G) if ln else None,
        "grstd": (T, B) if ln else None,
        "chat": (T, B, H) if ln else None,
        "crstd": (T, B) if ln else None,
    }


# The (T, B, ...) buffers a step writes only where it is live.
_PER_STEP = ("gates", "tc", "r", "cnew", "ghat", "grstd", "chat", "crstd")

_ARGS = (
    "Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? w_hr, Tensor? lengths, bool reverse, str impl, bool save, bool cells, "
    "bool variant, Tensor? peep, Tensor? g_ih, Tensor? g_hh, Tensor? g_c, Tensor? b_c, "
    "bool coupled, float? cell_clip, Tensor? h_mask, Tensor? zc, float? zc_p, Tensor? zh, "
    "float? zh_p"
)
# A tuple, not a Tensor[]: autograd sees each output on its own (out, h_n, c_n differentiable).
_SCHEMA = f"({_ARGS}) -> ({', '.join(['Tensor'] * (4 + len(SAVED)))})"


@torch.library.custom_op("lstmkit::lstm_layer", mutates_args=(), schema=_SCHEMA)
def lstm_layer(
    x: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    impl: str,
    save: bool,
    cells: bool,
    variant: bool,
    peep: Tensor | None,
    g_ih: Tensor | None,
    g_hh: Tensor | None,
    g_c: Tensor | None,
    b_c: Tensor | None,
    coupled: bool,
    cell_clip: float | None,
    h_mask: Tensor | None,
    zc: Tensor | None,
    zc_p: float | None,
    zh: Tensor | None,
    zh_p: float | None,
) -> tuple[Tensor, ...]:
    loops = _loops(impl)
    ex = _extras(
        variant, peep, g_ih, g_hh, g_c, b_c, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p
    )
    if not save:
        infer = _bptt.forward_cells_no_grad if cells else _bptt.forward_no_grad
        out, h_n, c_n, *cs = infer(
            loops, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex
        )
        if out.storage_offset() != 0:  # a view into the state buffer: start it at 0, as
            out = out.clone()  # the fake implementation's output does
        cs = cs[0] if cells else x.new_empty(0)
        return (out, h_n, c_n, cs, *(x.new_empty(0) for _ in SAVED))
    out, h_n, c_n, state = _bptt.forward_train(
        loops, x.contiguous(), h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex
    )
    cs = _bptt.cell_states(state[2], state[5], reverse) if cells else x.new_empty(0)
    state += (None,) * (len(_bptt.STATE) - len(state))  # the plain LSTM's: no variant aux
    if state[5] is not None:
        # The native loops skip dead steps, leaving those rows of the per-step buffers
        # unwritten; zero them so that the op's outputs are deterministic (the backward
        # never reads them).
        dead = ~state[5]
        for k, t in zip(_bptt.STATE, state, strict=True):
            if t is not None and k in _PER_STEP:
                t[dead] = 0
    kept = (t for k, t in zip(_bptt.STATE, state, strict=True) if k != "mask")
    return (out, h_n, c_n, cs, *(x.new_empty(0) if t is None else t for t in kept))


@lstm_layer.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, impl, save, cells, variant,
      peep, g_ih, g_hh, g_c, b_c, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p):  # fmt: skip
    T, B = x.size(0), x.size(1)
    P, H = h0.size(1), c0.size(1)
    outs = [x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H)]
    outs.append(x.new_empty(T, B, H) if cells else x.new_empty(0))
    shapes = _saved_shapes(x, h0, c0, w_hr, g_ih, zc, zc_p, T, B)
    return (
        *outs,
        *(
            x.new_empty(shapes[k]) if save and shapes[k] is not None else x.new_empty(0)
            for k in SAVED
        ),
    )


@torch.library.custom_op("lstmkit::lstm_layer_backward", mutates_args=())
def lstm_layer_backward(
    dout: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    dcs: Tensor | None,
    x: Tensor,
    h0: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    saved: list[Tensor],
    lengths: Tensor | None,
    reverse: bool,
    impl: str,
    needs: list[bool],
    has_bias: bool,
    variant: bool,
    peep: Tensor | None,
    g_ih: Tensor | None,
    g_hh: Tensor | None,
    g_c: Tensor | None,
    b_c: Tensor | None,
    coupled: bool,
    cell_clip: float | None,
    h_mask: Tensor | None,
    zc: Tensor | None,
    zc_p: float | None,
    zh: Tensor | None,
    zh_p: float | None,
) -> list[Tensor]:
    loops = _loops(impl)
    ex = _extras(
        variant, peep, g_ih, g_hh, g_c, b_c, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p
    )
    T, B = x.size(0), x.size(1)
    shapes = _saved_shapes(x, h0, h0.new_empty(B, w_hh.size(0) // 4), w_hr, g_ih, zc, zc_p, T, B)
    kept = [t if shapes[k] is not None else None for k, t in zip(SAVED, saved, strict=True)]
    mask = _bptt.time_mask(lengths, T, x.device)
    state = (*kept[:5], mask, *kept[5:])  # in _bptt.STATE's order
    grads = _bptt.backward_train(
        loops, x.contiguous(), w_ih, w_hh, w_hr, state, dout, dh_n, dc_n, needs, has_bias,
        reverse, ex, dcs,
    )  # fmt: skip
    return [g if n and g is not None else x.new_empty(0) for g, n in zip(grads, needs, strict=True)]


@lstm_layer_backward.register_fake
def _(dout, dh_n, dc_n, dcs, x, h0, w_ih, w_hh, w_hr, saved, lengths, reverse, impl, needs,
      has_bias, variant, peep, g_ih, g_hh, g_c, b_c, *_):  # fmt: skip
    inputs = (x, h0, None, w_ih, w_hh, None, None, w_hr, peep, g_ih, g_hh, g_c, b_c)
    like = dict(zip(GRADS, inputs, strict=True))
    H = w_hh.size(0) // 4
    like["c0"] = x.new_empty(x.size(1), H)
    bias = x.new_empty(4 * H) if has_bias else None
    like["b_ih"] = like["b_hh"] = bias
    # backward_train gives a gradient exactly where it is needed and the input exists
    # (g_ih, g_hh, g_c, b_c come together with layer norm; the peephole alone).
    return [
        torch.empty_like(like[k]) if needs[i] and like[k] is not None else x.new_empty(0)
        for i, k in enumerate(GRADS)
    ]


def _setup_context(ctx, inputs, output):
    (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, impl, save, cells, *var) = inputs
    if not save:
        return  # inference: the backward below refuses (nothing was kept)
    variant, peep, g_ih, g_hh, g_c, b_c, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p = var
    ctx.save_for_backward(x, h0, w_ih, w_hh, w_hr, lengths, peep, g_ih, g_hh, g_c, b_c, h_mask,
                          zc, zh, *output[4:])  # fmt: skip
    ctx.flags = (reverse, impl, b_ih is not None, variant, coupled, cell_clip, zc_p, zh_p)
    ctx.cells = cells
    ctx.mark_non_differentiable(*output[4:])


def _backward(ctx, *grads):
    if not hasattr(ctx, "flags"):
        raise RuntimeError(
            "lstmkit::lstm_layer ran with save=False (no grad was needed when traced); "
            "it cannot be differentiated"
        )
    x, h0, w_ih, w_hh, w_hr, lengths, peep, g_ih, g_hh, g_c, b_c, h_mask, zc, zh, *saved = (
        ctx.saved_tensors
    )
    reverse, impl, has_bias, variant, coupled, cell_clip, zc_p, zh_p = ctx.flags
    var = (variant, peep, g_ih, g_hh, g_c, b_c, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p)
    dout, dh_n, dc_n = grads[:3]
    dcs = grads[3] if ctx.cells else None  # else the empty placeholder's (empty) gradient
    needs = list(ctx.needs_input_grad[:8]) + list(ctx.needs_input_grad[14:19])
    res = torch.ops.lstmkit.lstm_layer_backward(
        dout, dh_n, dc_n, dcs, x, h0, w_ih, w_hh, w_hr, saved, lengths, reverse, impl, needs,
        has_bias, *var,
    )  # fmt: skip
    res = [g if n else None for g, n in zip(res, needs, strict=True)]
    # the op's inputs: 8 tensors, lengths, reverse, impl, save, cells, variant, 5 variant
    # tensors, coupled, cell_clip, h_mask, zc, zc_p, zh, zh_p
    return (*res[:8], None, None, None, None, None, None, *res[8:], None, None, None, None,
            None, None, None)  # fmt: skip


lstm_layer.register_autograd(_backward, setup_context=_setup_context)


def run(impl: str, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, ex, save: bool,
        cells: bool = False):  # fmt: skip
    """A backend ``run`` through ``lstmkit::lstm_layer`` (see :mod:`lstmkit.backends`); with
    ``cells`` a fourth result, every step's cell state (T, B, H)."""
    if ex is None:
        var = [False, None, None, None, None, None, False, None, None, None, None, None, None]
    else:
        ln = ex.layer_norm or (None,) * 4
        zone = []
        for z in (ex.zoneout_c, ex.zoneout_h):
            zone += [z, None] if isinstance(z, Tensor) else [None, z]
        var = [True, ex.peephole, *ln, ex.coupled, ex.cell_clip, ex.h_mask, *zone]
    res = torch.ops.lstmkit.lstm_layer(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, impl, save, cells, *var
    )
    return (res[0], res[1], res[2], res[3]) if cells else (res[0], res[1], res[2])
