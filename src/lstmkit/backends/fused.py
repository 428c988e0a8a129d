"""The fused backend: one GEMM for all inputs, one per step, in-place gate math, handwritten BPTT.

Pure PyTorch, so it runs on any device and float dtype. Per step it issues one ``addmm_``
into the preallocated gate buffer and a handful of in-place elementwise ops writing into
preallocated state buffers; nothing is allocated inside the loop except views. The weight
and input gradients are a few large GEMMs after the reverse loop (see :mod:`._bptt`).
"""

from __future__ import annotations

import torch

from lstmkit.backends import _bptt, _variant_loops


def unsupported(req) -> str | None:
    if not req.dtype.is_floating_point:
        return f"dtype {req.dtype}"
    return None


def _slots(T: int, reverse: bool):
    """(t, slot read, slot written) in processing order; see the _bptt docstring."""
    if reverse:
        return [(t, t + 1, t) for t in range(T - 1, -1, -1)]
    return [(t, t, t + 1) for t in range(T)]


class _PythonLoops:
    """The per-step recurrences as a Python loop over in-place torch ops."""

    name = "fused"  # for lstmkit::lstm_layer (see ._ops)
    mm = staticmethod(_bptt.mm)
    empty = staticmethod(_bptt.empty)

    @staticmethod
    def forward(xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex=None):
        if ex is not None:
            return _variant_loops.forward(xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex)
        T, B, G = xg.shape
        H = G // 4
        hbuf = xg.new_empty(T + 1, B, h0.size(1))
        hbuf[T if reverse else 0] = h0
        # Training keeps every c and tanh(c); inference ping-pongs between two c buffers.
        cbuf = xg.new_empty(T + 1 if save else 2, B, H)
        cbuf[T if reverse and save else 0] = c0
        tc = xg.new_empty(T, B, H) if save else xg.new_empty(1, B, H)
        r = None
        if w_hr is not None:
            r = xg.new_empty(T, B, H) if save else xg.new_empty(1, B, H)
        w_hh_t = w_hh.t()
        w_hr_t = None if w_hr is None else w_hr.t()
        for n, (t, rd, wr) in enumerate(_slots(T, reverse)):
            cr, cw = (rd, wr) if save else (n % 2, (n + 1) % 2)
            k = t if save else 0
            g = xg[t]
            g.addmm_(hbuf[rd], w_hh_t)
            g[:, : 2 * H].sigmoid_()  # i, f
            g[:, 2 * H : 3 * H].tanh_()  # g
            g[:, 3 * H :].sigmoid_()  # o
            i, f, gg, o = g.split(H, dim=1)
            c_new = cbuf[cw]
            torch.mul(f, cbuf[cr], out=c_new)
            c_new.addcmul_(i, gg)
            tcn = torch.tanh(c_new, out=tc[k])
            if w_hr is None:
                torch.mul(o, tcn, out=hbuf[wr])
            else:
                torch.mul(o, tcn, out=r[k])
                torch.mm(r[k], w_hr_t, out=hbuf[wr])
            if mask is not None:
                m = mask[t].unsqueeze(1)  # dead sequences keep their state
                torch.where(m, hbuf[wr], hbuf[rd], out=hbuf[wr])
                torch.where(m, c_new, cbuf[cr], out=c_new)
        c_n = cbuf[0 if reverse else T] if save else cbuf[T % 2]
        if not save:
            return hbuf, c_n.clone(), None, None, None
        return hbuf, c_n.clone(), cbuf, tc, r

    @staticmethod
    def backward(
        dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, ex=None, aux=None,
        dcs=None,
    ):  # fmt: skip
        if ex is not None:
            return _variant_loops.backward(
                dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, ex, aux, dcs
            )
        T, B, G = gates.shape
        H = G // 4
        P = w_hh.size(1)
        dG = torch.empty_like(gates)
        dht = gates.new_zeros(T, B, P) if w_hr is not None else None
        dh = gates.new_zeros(B, P) if dh_n is None else dh_n.clone()
        dc = gates.new_zeros(B, H) if dc_n is None else dc_n.clone()
        dh_next, dr, tmp = gates.new_empty(B, P), gates.new_empty(B, H), gates.new_empty(B, H)
        # Activation derivatives for all steps at once: s(1-s) for i, f, o; 1-g^2 for g;
        # 1-tanh(c)^2. Two big ops here instead of temporaries inside the loop.
        dact = gates * (1 - gates)
        dact.view(T, B, 4, H)[:, :, 2] = 1 - gates.view(T, B, 4, H)[:, :, 2] ** 2
        dtc = 1 - tc * tc
        mf = None if mask is None else mask.unsqueeze(-1).to(gates.dtype)
        for t, rd, _ in reversed(_slots(T, reverse)):
            m = None if mask is None else mask[t].unsqueeze(1)
            if dout is not None:
                if m is None:
                    dh.add_(dout[t])
                else:
                    dh.addcmul_(dout[t], mf[t])  # out is constant 0 on dead steps
            if dcs is not None:
                dc.add_(dcs[t])  # zero on dead steps (masked by the caller)
            if w_hr is not None:
                dht[t] = dh if m is None else dh * mf[t]
                torch.mm(dh, w_hr, out=dr)
            else:
                dr = dh
            i, f, g, o = gates[t].split(H, dim=1)
            si, sf, sg, so = dact[t].split(H, dim=1)
            di, df, dg, do = dG[t].split(H, dim=1)
            torch.mul(dr, o, out=tmp).mul_(dtc[t])  # through h = o * tanh(c)
            if m is not None:
                tmp.mul_(mf[t])  # dead steps leave dc untouched
            dc.add_(tmp)
            torch.mul(dr, tc[t], out=do).mul_(so)
            torch.mul(dc, g, out=di).mul_(si)
            torch.mul(dc, cbuf[rd], out=df).mul_(sf)
            torch.mul(dc, i, out=dg).mul_(sg)
            if m is None:
                dc.mul_(f)
                torch.mm(dG[t], w_hh, out=dh)
            else:
                dG[t].mul_(mf[t])
                torch.where(m, dc * f, dc, out=dc)
                torch.mm(dG[t], w_hh, out=dh_next)
                torch.where(m, dh_next, dh, out=dh)
        return dG, dht, dh, dc

    norm_rows = staticmethod(_variant_loops.norm_rows)
    norm_rows_backward = staticmethod(_variant_loops.norm_rows_backward)


LOOPS = _PythonLoops()


def run(
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras=None,
    cells=False,
):  # fmt: skip
    """One layer, one direction; see :mod:`lstmkit.backends` for shapes and semantics.

    x (T, B, I), h0 (B, P or H), c0 (B, H) -> out (T, B, P or H), h_n, c_n (and with
    ``cells`` every step's c_t (T, B, H)).
    """
    return _bptt.run_with(
        LOOPS, x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse,
        extras, cells,
    )  # fmt: skip
