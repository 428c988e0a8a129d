"""The fused backend's recurrences for the variants (peepholes, layer norm, coupled gates,
cell clipping, recurrent dropout, zoneout), in any combination.

The same buffers and slots as the plain loops in :mod:`.fused` (see :mod:`._bptt`); the
equations are :func:`lstmkit.cell.lstm_step`'s, and the C++ loops of the native backend
follow this file step for step.
"""

from __future__ import annotations

import torch
from torch import Tensor

LN_EPS = 1e-5  # as lstmkit.cell.LN_EPS


def normalize(v: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of v (..., N) as (v - mean) / sqrt(var + eps), and 1/sqrt(var + eps) (...)."""
    centred = v - v.mean(-1, keepdim=True)
    rstd = torch.rsqrt((centred * centred).mean(-1) + LN_EPS)
    return centred.mul_(rstd.unsqueeze(-1)), rstd


def normalize_backward(dy: Tensor, vhat: Tensor, rstd: Tensor) -> Tensor:
    """The gradient of v from that of vhat = normalize(v)[0], row by row."""
    m1 = dy.mean(-1, keepdim=True)
    m2 = (dy * vhat).mean(-1, keepdim=True)
    return (dy - m1 - vhat * m2) * rstd.unsqueeze(-1)


def norm_rows(v: Tensor, gain: Tensor, shift: Tensor | None, save: bool):
    """See ``Loops.norm_rows`` in :mod:`._bptt`."""
    vhat, rstd = normalize(v)
    y = vhat * gain
    if shift is not None:
        y += shift
    return (y, vhat, rstd) if save else (y, None, None)


def norm_rows_backward(dy: Tensor, gain: Tensor, vhat: Tensor, rstd: Tensor):
    """See ``Loops.norm_rows_backward`` in :mod:`._bptt`."""
    dgain = (dy * vhat).sum(tuple(range(dy.dim() - 1)))
    return normalize_backward(dy * gain, vhat, rstd), dgain


def _z(z, t):
    """Zoneout's weight of the previous state at step t: a (B, ·) mask, a float, or None."""
    if z is None:
        return None
    return z[t] if isinstance(z, torch.Tensor) else z


def _slots(T: int, reverse: bool):
    if reverse:
        return [(t, t + 1, t) for t in range(T - 1, -1, -1)]
    return [(t, t, t + 1) for t in range(T)]


def forward(xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex):
    """See ``Loops.forward`` in :mod:`._bptt`."""
    T, B, G = xg.shape
    H = G // 4
    P = h0.size(1)
    ln = ex.layer_norm is not None
    hbuf = xg.new_empty(T + 1, B, P)
    hbuf[T if reverse else 0] = h0
    cbuf = xg.new_empty(T + 1, B, H)
    cbuf[T if reverse else 0] = c0
    n = T if save else 1
    tc = xg.new_empty(n, B, H)
    r = xg.new_empty(n, B, H) if w_hr is not None else None
    aux = {}
    if save and ex.zoneout_c is not None:
        aux["cnew"] = xg.new_empty(T, B, H)
    if ln:
        _, g_hh, g_c, b_c = ex.layer_norm
        ghat, grstd = xg.new_empty(n, B, G), xg.new_empty(n, B)
        chat, crstd = xg.new_empty(n, B, H), xg.new_empty(n, B)
    if ex.peephole is not None:
        p_i, p_f, p_o = ex.peephole.split(H)
    w_hh_t = w_hh.t()
    for t, rd, wr in _slots(T, reverse):
        k = t if save else 0
        g = xg[t]
        h_prev, c_prev = hbuf[rd], cbuf[rd]
        h_in = h_prev if ex.h_mask is None else h_prev * ex.h_mask
        if ln:
            gh, grstd[k] = normalize(h_in @ w_hh_t)
            ghat[k] = gh
            g.addcmul_(gh, g_hh)
        else:
            g.addmm_(h_in, w_hh_t)
        gi, gf, gg, go = g.split(H, dim=1)
        if ex.peephole is not None:
            gi.addcmul_(p_i, c_prev)
            gf.addcmul_(p_f, c_prev)
        gi.sigmoid_()
        if ex.coupled:
            torch.sub(1, gi, out=gf)
        else:
            gf.sigmoid_()
        gg.tanh_()
        c_new = gf * c_prev + gi * gg
        if ex.cell_clip is not None:
            c_new.clamp_(-ex.cell_clip, ex.cell_clip)
        if ex.peephole is not None:
            go.addcmul_(p_o, c_new)
        go.sigmoid_()
        c_out = c_new
        if ln:
            c_out, crstd[k] = normalize(c_new)
            chat[k] = c_out
            c_out = c_out * g_c + b_c
        tcn = torch.tanh(c_out, out=tc[k])
        h_new = go * tcn
        if w_hr is not None:
            r[k] = h_new
            h_new = h_new @ w_hr.t()
        if "cnew" in aux:
            aux["cnew"][t] = c_new
        zc, zh = _z(ex.zoneout_c, t), _z(ex.zoneout_h, t)
        if zc is not None:
            c_new = c_new + zc * (c_prev - c_new)
        if zh is not None:
            h_new = h_new + zh * (h_prev - h_new)
        if mask is not None:
            m = mask[t].unsqueeze(1)  # dead sequences keep their state
            h_new, c_new = torch.where(m, h_new, h_prev), torch.where(m, c_new, c_prev)
        hbuf[wr], cbuf[wr] = h_new, c_new
    c_n = cbuf[0 if reverse else T].clone()
    if not save:
        return hbuf, c_n, None, None, None, None
    if ln:
        aux.update(ghat=ghat, grstd=grstd, chat=chat, crstd=crstd)
    return hbuf, c_n, cbuf, tc, r, aux


def backward(dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, ex, aux, dcs=None):
    """See ``Loops.backward`` in :mod:`._bptt`."""
    T, B, G = gates.shape
    H = G // 4
    P = w_hh.size(1)
    ln = ex.layer_norm is not None
    dG = torch.zeros_like(gates)
    dgh = torch.zeros_like(gates) if ln else dG
    dcout = gates.new_zeros(T, B, H) if ln else None
    dht = gates.new_zeros(T, B, P) if w_hr is not None else None
    dh = gates.new_zeros(B, P) if dh_n is None else dh_n.clone()
    dc = gates.new_zeros(B, H) if dc_n is None else dc_n.clone()
    if ln:
        _, g_hh, g_c, _ = ex.layer_norm
    if ex.peephole is not None:
        p_i, p_f, p_o = ex.peephole.split(H)
    for t, rd, wr in reversed(_slots(T, reverse)):
        m = None if mask is None else mask[t].unsqueeze(1)
        mf = None if m is None else m.to(gates.dtype)
        if dout is not None:
            dh = dh + (dout[t] if mf is None else dout[t] * mf)
        if dcs is not None:
            dc = dc + dcs[t]  # the gradient of the carried c_t (zero on dead steps)
        i, f, g, o = gates[t].split(H, dim=1)
        c_prev = cbuf[rd]
        c_new = aux["cnew"][t] if "cnew" in aux else cbuf[wr]
        zc, zh = _z(ex.zoneout_c, t), _z(ex.zoneout_h, t)
        dh_new = dh if zh is None else dh * (1 - zh)
        dc_new = dc if zc is None else dc * (1 - zc)
        if w_hr is not None:
            dht[t] = dh_new if mf is None else dh_new * mf
            dr = dh_new @ w_hr
        else:
            dr = dh_new
        t_c = tc[t]
        do = dr * t_c * o * (1 - o)
        dco = dr * o * (1 - t_c * t_c)  # gradient of the cell the output reads
        if ln:
            dcout[t] = dco if mf is None else dco * mf
            dco = normalize_backward(dco * g_c, aux["chat"][t], aux["crstd"][t])
        dc_new = dc_new + dco
        if ex.peephole is not None:
            dc_new = dc_new + do * p_o
        if ex.cell_clip is not None:
            dc_new = dc_new * (c_new.abs() < ex.cell_clip).to(gates.dtype)
        di = dc_new * g
        if ex.coupled:
            di = di - dc_new * c_prev  # f = 1 - i
            df = torch.zeros_like(di)
        else:
            df = dc_new * c_prev * f * (1 - f)
        di = di * i * (1 - i)
        dgg = dc_new * i * (1 - g * g)
        dc_prev = dc_new * f
        if ex.peephole is not None:
            dc_prev = dc_prev + di * p_i + df * p_f
        if zc is not None:
            dc_prev = dc_prev + dc * zc
        dgt = torch.cat([di, df, dgg, do], dim=1)
        if mf is not None:
            dgt = dgt * mf
        dG[t] = dgt
        if ln:
            dgt = normalize_backward(dgt * g_hh, aux["ghat"][t], aux["grstd"][t])
            dgh[t] = dgt
        dh_prev = dgt @ w_hh
        if ex.h_mask is not None:
            dh_prev = dh_prev * ex.h_mask
        if zh is not None:
            dh_prev = dh_prev + dh * zh
        if m is not None:  # dead steps pass the gradient through untouched
            dh_prev, dc_prev = torch.where(m, dh_prev, dh), torch.where(m, dc_prev, dc)
        dh, dc = dh_prev, dc_prev
    return dG, dht, dh, dc, _parameter_grads(dG, dgh, dcout, cbuf, reverse, ex, aux)


def _parameter_grads(dG, dgh, dcout, cbuf, reverse, ex, aux) -> dict:
    """The sums over every step: peephole weights, layer-norm gains and shift; and dgh."""
    H = dG.size(2) // 4
    out = {}
    if ex.peephole is not None:
        cprev = cbuf[1:] if reverse else cbuf[:-1]
        cnew = aux["cnew"] if "cnew" in aux else (cbuf[:-1] if reverse else cbuf[1:])
        out["dpeep"] = torch.cat(
            [
                (dG[..., :H] * cprev).sum((0, 1)),
                (dG[..., H : 2 * H] * cprev).sum((0, 1)),
                (dG[..., 3 * H :] * cnew).sum((0, 1)),
            ]
        )
    if ex.layer_norm is not None:
        out["dgh"] = dgh
        out["dg_hh"] = (dG * aux["ghat"]).sum((0, 1))
        out["dg_c"] = (dcout * aux["chat"]).sum((0, 1))
        out["db_c"] = dcout.sum((0, 1))
    return out
