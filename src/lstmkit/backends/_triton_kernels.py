"""Persistent Triton kernels for one LSTM layer and direction: the recurrence only.

Imported lazily by :mod:`lstmkit.backends.triton` (it imports triton at the top). Whether the
kernels run on the GPU or in triton's CPU interpreter is fixed when this module is imported
(``TRITON_INTERPRET=1`` at that moment): :data:`INTERPRETED` records which.

Work split. Program ``(j, b)`` owns hidden units ``j*BH .. j*BH+BH-1`` (all four gates of them)
for batch rows ``b*BB .. b*BB+BB-1``, and loops over time inside the launch. Its slice of
``weight_hh`` (4 x BH rows, forward; 4 x BH columns, backward) is loaded once before the time
loop when it fits (``W_RES``), else streamed in K-chunks from L2 each step. Its cell state and
gradients stay in registers (fp32) for the whole launch.

Sharing the recurrent state. Each step needs the whole previous h (forward) or the whole
previous dgates (backward) of its batch rows, which other programs computed. They go through
global memory (``hs`` / ``dgates``, one slot per step, so nothing is overwritten while still
being read) and the NH programs of one batch block meet at a barrier each step: an atomic
counter per batch block that only grows (step k waits for k*NH arrivals, so it never needs
resetting inside a launch). A spinning barrier is correct only if all NH programs run at once,
so the host launches the persistent form only when the grid fits on the GPU's SMs (one
program per SM) and otherwise, or in the interpreter (which runs programs one after another),
launches one step at a time with ``SYNC=False``: the launch boundary is then the barrier.
Should the GPU still not run them all at once (other work holding SMs for seconds), a
barrier gives up after ``SPIN_LIMIT`` polls, marks the counter broken, and every program
that meets the mark writes NaN from that step on: a loud failure, never a silent wrong one.

Buffers (time-major; s is the processing index, t = s forward, T-1-s reverse):
    gates   (T, B, 4H)  in: x @ W_ih^T + b;  out (if STORE): activations i, f, g, o
    hs      (T+1, B, H) hs[0] = h0, hs[s+1] = state h after step s (carried past the length)
    cs      (T+1, B, H) fp32, the same for c
    out     (T, B, H)   h at valid steps, 0 beyond each sequence's length
    dgates  (T, B, 4H)  gradient w.r.t. the gate pre-activations (0 beyond the length)
    dh, dc  (B, H) fp32 in: grad of h_n, c_n;  out: grad of h0, c0
    lens    (B,) int32, counter (NB,) int32 zeros

Variants (:func:`lstmkit.cell.lstm_step`'s equations), each behind a constexpr flag so that the
plain kernels compile exactly as before; a buffer whose flag is off is never read (the host
passes any tensor). Indexed by time t, fp32 unless said:
    peep    (3H,) p_i, p_f, p_o                          PEEP
    lnw     (6H,) g_hh (4H), g_c, b_c: layer-norm gains  LN (needs BH == HP: a program owns
                                                         every gate column of its rows)
    hmask   (B, H) recurrent dropout mask, x's dtype     HMASK
    zc, zh  (T, B, H) zoneout: weight of the previous c / h                      ZONEOUT
    cn      (T, B, H) the cell before zoneout (written by the forward with STORE)  ZONEOUT
    ghat    (T, B, 4H) normalised recurrent projection; chat (T, B, H) normalised cell;
    rstd    (T, B, 2) their 1/std (forward with STORE writes them)             LN
    dgh     (T, B, 4H) backward: the gradient of h @ W_hh^T (LN); the recurrent product reads
            it (without LN the host passes dgates itself)
    dcout   (T, B, H) backward: the gradient of the normalised cell (for g_c, b_c)     LN
    COUPLED f = 1 - i;  CLIP c' = clip(c', -clip, clip)
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Triton's interpreter computes tl.dot on bfloat16 operands wrongly (triton 3.9); a product
# of two bfloat16 numbers is exact in float32 and the GPU's MMA accumulates in float32, so
# interpreted runs multiply float32 copies: the same arithmetic, and the bf16 path testable
FP32_DOTS = tl.constexpr(INTERPRETED)
SPIN_LIMIT = tl.constexpr(1 << 22)  # polls of the barrier counter (seconds) before giving up
BARRIER_BROKEN = tl.constexpr(1 << 24)  # added to a counter whose barrier timed out
LN_EPS = tl.constexpr(1e-5)  # as lstmkit.cell.LN_EPS


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b (fp32 accumulator) in precision PREC; see FP32_DOTS."""
    if FP32_DOTS:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # exp of a non-positive number never overflows; the sign is put back after
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, y, -y)


@triton.jit
def _step_barrier(counter_ptr, target, SYNC: tl.constexpr):
    """Wait until every program sharing ``counter_ptr`` has finished the previous step.

    Without SYNC (one program per batch block) only this program's threads need to agree.
    Returns 1 (int32) if the barrier is broken: a program never arrived, so the shared state
    this step reads is not all written; the caller then poisons its results with NaN."""
    tl.debug_barrier()  # all threads' stores of this program precede the release below
    broken = tl.full((), 0, tl.int32)
    if SYNC:
        tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
        n = tl.full((), 0, tl.int32)
        while (tl.load(counter_ptr, volatile=True) < target) & (n < SPIN_LIMIT):
            n += 1
        if n >= SPIN_LIMIT:
            # a program never arrived (the grid was not co-resident): open every later
            # barrier of this launch too, so that the GPU is not hung, and mark the counter
            # so that every program (this one, and those that see the mark) poisons its state
            tl.atomic_add(counter_ptr, BARRIER_BROKEN, sem="relaxed", scope="gpu")
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")  # order loads after it
        broken = (seen >= BARRIER_BROKEN).to(tl.int32)
        tl.debug_barrier()
    return broken


@triton.jit
def _tile(lens, B, H, BB: tl.constexpr, BH: tl.constexpr):
    """Program (j, b)'s cells: batch rows, hidden units, the row mask, the (row, unit) mask,
    the cells' offsets in a (B, H) step, and each row's sequence length."""
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    cols = tl.program_id(0) * BH + tl.arange(0, BH)
    rmask = rows < B
    m2 = rmask[:, None] & (cols < H)[None, :]
    own = rows[:, None] * H + cols[None, :]
    length = tl.load(lens + rows, mask=rmask, other=0)
    return rows, cols, rmask, m2, own, length


@triton.jit
def _load_input_gates(gates, s, T, B, H, rows, cols, m2, REVERSE: tl.constexpr):
    """The input part of step s's gates (x_t @ W_ih^T + b) for this program: four fp32 tiles."""
    if REVERSE:  # noqa: SIM108 (a plain if on a constexpr: resolved at compile time)
        t = T - 1 - s
    else:
        t = s
    gp = gates + t * (B * 4 * H) + rows[:, None] * (4 * H) + cols[None, :]
    a_i = tl.load(gp, mask=m2, other=0.0).to(tl.float32)
    a_f = tl.load(gp + H, mask=m2, other=0.0).to(tl.float32)
    a_g = tl.load(gp + 2 * H, mask=m2, other=0.0).to(tl.float32)
    a_o = tl.load(gp + 3 * H, mask=m2, other=0.0).to(tl.float32)
    return a_i, a_f, a_g, a_o


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _rsum(x):
    """Row sums of a 2-D tile. tl.reduce with a combine function of this module, not tl.sum:
    triton's own jit helpers are not interpretable when triton was imported before
    TRITON_INTERPRET was set (see the tl.full note in lstm_bwd_kernel)."""
    return tl.reduce(x, 1, _add)


@triton.jit
def _norm4(a_i, a_f, a_g, a_o, cm, n):
    """Layer norm (no gain) of the rows of four (BB, BH) tiles taken as one row of n columns
    (``cm``: the real columns): the normalised tiles, zero on the others, and 1/std (BB,)."""
    mean = (_rsum(a_i) + _rsum(a_f) + _rsum(a_g) + _rsum(a_o)) / n
    d_i = tl.where(cm, a_i - mean[:, None], 0.0)
    d_f = tl.where(cm, a_f - mean[:, None], 0.0)
    d_g = tl.where(cm, a_g - mean[:, None], 0.0)
    d_o = tl.where(cm, a_o - mean[:, None], 0.0)
    var = (_rsum(d_i * d_i) + _rsum(d_f * d_f) + _rsum(d_g * d_g)
           + _rsum(d_o * d_o)) / n  # fmt: skip
    rs = 1.0 / tl.sqrt(var + LN_EPS)
    return d_i * rs[:, None], d_f * rs[:, None], d_g * rs[:, None], d_o * rs[:, None], rs


@triton.jit
def _norm1(a, cm, n):
    """Layer norm (no gain) of the rows of one (BB, BH) tile of n real columns, and 1/std."""
    mean = _rsum(tl.where(cm, a, 0.0)) / n
    d = tl.where(cm, a - mean[:, None], 0.0)
    rs = 1.0 / tl.sqrt(_rsum(d * d) / n + LN_EPS)
    return d * rs[:, None], rs


@triton.jit
def _vec(ptr, cols, H):
    """Row vector (1, BH) fp32 of ptr[cols], zero past H."""
    return tl.load(ptr + cols, mask=cols < H, other=0.0).to(tl.float32)[None, :]


@triton.jit
def lstm_fwd_kernel(
    gates, whh, hs, cs, out, lens, counter,
    peep, lnw, hmask, zc, zh, cn, ghat, chat, rstd,
    T, B, H, s_begin, s_end, clip,
    REVERSE: tl.constexpr, STORE: tl.constexpr, SYNC: tl.constexpr,
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    W_RES: tl.constexpr, CARRY: tl.constexpr, PREC: tl.constexpr,
    PEEP: tl.constexpr = False, LN: tl.constexpr = False, HMASK: tl.constexpr = False,
    ZONEOUT: tl.constexpr = False, COUPLED: tl.constexpr = False, CLIP: tl.constexpr = False,
):  # fmt: skip
    """Steps s_begin .. s_end-1 of the forward recurrence; see the module docstring."""
    pid_b = tl.program_id(1)
    nh = tl.num_programs(0)
    rows, cols, rmask, m2, own, length = _tile(lens, B, H, BB, BH)
    G = 4 * H
    step = B * H
    kk = tl.arange(0, HP)
    if W_RES:
        # w_k[r, u] = W_hh[k*H + cols[u], r]: the transposed rows of this program's units
        wp = whh + cols[None, :] * H + kk[:, None]
        wm = (kk < H)[:, None] & (cols < H)[None, :]
        w_i = tl.load(wp, mask=wm, other=0.0)
        w_f = tl.load(wp + H * H, mask=wm, other=0.0)
        w_g = tl.load(wp + 2 * H * H, mask=wm, other=0.0)
        w_o = tl.load(wp + 3 * H * H, mask=wm, other=0.0)
    if PEEP:
        p_i = _vec(peep, cols, H)
        p_f = _vec(peep + H, cols, H)
        p_o = _vec(peep + 2 * H, cols, H)
    if LN:
        cm = (cols < H)[None, :]
        l_i = _vec(lnw, cols, H)
        l_f = _vec(lnw + H, cols, H)
        l_g = _vec(lnw + 2 * H, cols, H)
        l_o = _vec(lnw + 3 * H, cols, H)
        l_c = _vec(lnw + 4 * H, cols, H)
        l_b = _vec(lnw + 5 * H, cols, H)
    if HMASK:
        if CARRY:  # the whole h of these rows is this program's own tile
            hmk = tl.load(hmask + own, mask=m2, other=0.0).to(tl.float32)
        elif W_RES:
            hmk = tl.load(hmask + rows[:, None] * H + kk[None, :],
                          mask=rmask[:, None] & (kk < H)[None, :], other=0.0)  # fmt: skip
    c = tl.load(cs + s_begin * step + own, mask=m2, other=0.0)
    broken = tl.full((), 0, tl.int32)  # a broken barrier: results are NaN from then on
    if CARRY:
        # one program owns every unit (BH == HP): h stays in registers from step to step, and
        # the input part of the next step's gates is loaded one step ahead
        h = tl.load(hs + s_begin * step + own, mask=m2, other=0.0).to(tl.float32)
        nx_i, nx_f, nx_g, nx_o = _load_input_gates(gates, s_begin, T, B, H, rows, cols, m2,
                                                   REVERSE)  # fmt: skip
    for s in range(s_begin, s_end):
        if REVERSE:  # noqa: SIM108 (a plain if on a constexpr: resolved at compile time)
            t = T - 1 - s
        else:
            t = s
        gp = gates + t * (B * G) + rows[:, None] * G + cols[None, :]
        hrow = hs + s * step
        if CARRY:
            acc_i, acc_f, acc_g, acc_o = nx_i, nx_f, nx_g, nx_o
            s_next = tl.minimum(s + 1, s_end - 1)  # the last step reloads itself (unused)
            nx_i, nx_f, nx_g, nx_o = _load_input_gates(gates, s_next, T, B, H, rows, cols, m2,
                                                       REVERSE)  # fmt: skip
        else:
            if not LN:
                # the input part of the gates does not depend on h: load it before waiting
                acc_i, acc_f, acc_g, acc_o = _load_input_gates(gates, s, T, B, H, rows, cols,
                                                               m2, REVERSE)  # fmt: skip
            if s > s_begin:  # hs[s] was written inside this launch, partly by other programs
                broken |= _step_barrier(counter + pid_b, (s - s_begin) * nh, SYNC)
        if LN:  # the recurrent projection is normalised alone: accumulate it from zero
            if CARRY:
                x_i, x_f, x_g, x_o = acc_i, acc_f, acc_g, acc_o
            acc_i = tl.full((BB, BH), 0.0, tl.float32)
            acc_f = tl.full((BB, BH), 0.0, tl.float32)
            acc_g = tl.full((BB, BH), 0.0, tl.float32)
            acc_o = tl.full((BB, BH), 0.0, tl.float32)
        if W_RES:
            if CARRY:
                if HMASK:  # noqa: SIM108 (a constexpr: resolved at compile time)
                    hp = (h * hmk).to(hs.dtype.element_ty)
                else:
                    hp = h.to(hs.dtype.element_ty)  # (BB, BH), BH == HP: the whole previous h
            else:
                hm = rmask[:, None] & (kk < H)[None, :]
                hp = tl.load(hrow + rows[:, None] * H + kk[None, :], mask=hm, other=0.0,
                             cache_modifier=".cg")  # fmt: skip
                if HMASK:
                    hp = hp * hmk
            acc_i = _mma(hp, w_i, acc_i, PREC)
            acc_f = _mma(hp, w_f, acc_f, PREC)
            acc_g = _mma(hp, w_g, acc_g, PREC)
            acc_o = _mma(hp, w_o, acc_o, PREC)
        else:
            for k0 in range(0, H, BK):
                kb = k0 + tl.arange(0, BK)
                hm = rmask[:, None] & (kb < H)[None, :]
                hp = tl.load(hrow + rows[:, None] * H + kb[None, :], mask=hm, other=0.0,
                             cache_modifier=".cg")  # fmt: skip
                if HMASK:
                    hp = hp * tl.load(hmask + rows[:, None] * H + kb[None, :], mask=hm, other=0.0)
                wp = whh + cols[None, :] * H + kb[:, None]
                wm = (kb < H)[:, None] & (cols < H)[None, :]
                w = tl.load(wp, mask=wm, other=0.0)
                acc_i = _mma(hp, w, acc_i, PREC)
                w = tl.load(wp + H * H, mask=wm, other=0.0)
                acc_f = _mma(hp, w, acc_f, PREC)
                w = tl.load(wp + 2 * H * H, mask=wm, other=0.0)
                acc_g = _mma(hp, w, acc_g, PREC)
                w = tl.load(wp + 3 * H * H, mask=wm, other=0.0)
                acc_o = _mma(hp, w, acc_o, PREC)
        if LN:
            if not CARRY:  # loaded only now: four tiles fewer held through the product
                x_i, x_f, x_g, x_o = _load_input_gates(gates, s, T, B, H, rows, cols, m2,
                                                       REVERSE)  # fmt: skip
            n_i, n_f, n_g, n_o, rs_g = _norm4(acc_i, acc_f, acc_g, acc_o, cm, 4 * H)
            acc_i = x_i + n_i * l_i
            acc_f = x_f + n_f * l_f
            acc_g = x_g + n_g * l_g
            acc_o = x_o + n_o * l_o
        if PEEP:
            acc_i += p_i * c
            acc_f += p_f * c
        i = _sigmoid(acc_i)
        if COUPLED:  # noqa: SIM108 (a constexpr: resolved at compile time)
            f = 1.0 - i
        else:
            f = _sigmoid(acc_f)
        g = _tanh(acc_g)
        c_new = f * c + i * g
        if CLIP:
            c_new = tl.minimum(tl.maximum(c_new, -clip), clip)
        if PEEP:
            acc_o += p_o * c_new
        o = _sigmoid(acc_o)
        if LN:
            n_c, rs_c = _norm1(c_new, cm, H)
            h_new = o * _tanh(n_c * l_c + l_b)
        else:
            h_new = o * _tanh(c_new)
        if CARRY:
            h_old = h
        else:
            h_old = tl.load(hrow + own, mask=m2, other=0.0, cache_modifier=".cg").to(tl.float32)
        if ZONEOUT:
            zt = t * step + own
            if STORE:  # the backward needs the cell before zoneout
                tl.store(cn + zt, c_new, mask=m2)
            z_c = tl.load(zc + zt, mask=m2, other=0.0)
            z_h = tl.load(zh + zt, mask=m2, other=0.0)
            c_new = c_new + z_c * (c - c_new)
            h_new = h_new + z_h * (h_old - h_new)
        if SYNC:
            c_new = tl.where(broken != 0, float("nan"), c_new)
            h_new = tl.where(broken != 0, float("nan"), h_new)
        valid = (t < length)[:, None]
        c = tl.where(valid, c_new, c)  # past its length a sequence keeps its state
        h_keep = tl.where(valid, h_new, h_old)
        if CARRY:
            h = h_keep
        tl.store(
            out + t * step + own, tl.where(valid, h_new, 0.0).to(out.dtype.element_ty), mask=m2
        )
        tl.store(hrow + step + own, h_keep.to(hs.dtype.element_ty), mask=m2)
        tl.store(cs + (s + 1) * step + own, c, mask=m2)
        if STORE:  # the backward reads the activations instead of recomputing them
            ty = gates.dtype.element_ty
            tl.store(gp, i.to(ty), mask=m2)
            tl.store(gp + H, f.to(ty), mask=m2)
            tl.store(gp + 2 * H, g.to(ty), mask=m2)
            tl.store(gp + 3 * H, o.to(ty), mask=m2)
            if LN:
                np_ = ghat + t * (B * G) + rows[:, None] * G + cols[None, :]
                tl.store(np_, n_i, mask=m2)
                tl.store(np_ + H, n_f, mask=m2)
                tl.store(np_ + 2 * H, n_g, mask=m2)
                tl.store(np_ + 3 * H, n_o, mask=m2)
                tl.store(chat + t * step + own, n_c, mask=m2)
                tl.store(rstd + t * (2 * B) + rows * 2, rs_g, mask=rmask)
                tl.store(rstd + t * (2 * B) + rows * 2 + 1, rs_c, mask=rmask)


@triton.jit
def _load_dgates(dgates, t, B, H, rows, rmask, k0, KB: tl.constexpr):
    """dgates[t, rows, k*H + k0 .. k0+KB-1] for the four gates k: four (BB, KB) tiles."""
    kb = k0 + tl.arange(0, KB)
    m = rmask[:, None] & (kb < H)[None, :]
    p = dgates + t * (B * 4 * H) + rows[:, None] * (4 * H) + kb[None, :]
    d_i = tl.load(p, mask=m, other=0.0, cache_modifier=".cg")
    d_f = tl.load(p + H, mask=m, other=0.0, cache_modifier=".cg")
    d_g = tl.load(p + 2 * H, mask=m, other=0.0, cache_modifier=".cg")
    d_o = tl.load(p + 3 * H, mask=m, other=0.0, cache_modifier=".cg")
    return d_i, d_f, d_g, d_o


@triton.jit
def _step_dgates(gates, cs, dout, dgates, s, T, B, H, rows, cols, m2, own, length, gh, gc,
                 peep, lnw, zc, zh, cn, ghat, chat, rstd, dgh, dcout, clip,
                 REVERSE: tl.constexpr, PEEP: tl.constexpr, LN: tl.constexpr,
                 ZONEOUT: tl.constexpr, COUPLED: tl.constexpr, CLIP: tl.constexpr):  # fmt: skip
    """Step s of backprop through the cell: stores dgates[t] and returns the four tiles the
    recurrent product reads (fp32: dgates, or with LN the gradient of the raw projection,
    also stored in dgh), the validity mask of the step, the gradient w.r.t. c before the
    step, and gh less what reaches h_prev through W_hh: with ZONEOUT the direct part,
    z_h * (gradient of h after the step), on valid steps (gh itself on others)."""
    if REVERSE:  # noqa: SIM108 (a plain if on a constexpr: resolved at compile time)
        t = T - 1 - s
    else:
        t = s
    step = B * H
    G = 4 * H
    valid = (t < length)[:, None]
    go = gh + tl.load(dout + t * step + own, mask=m2 & valid, other=0.0).to(tl.float32)
    gp = gates + t * (B * G) + rows[:, None] * G + cols[None, :]
    i = tl.load(gp, mask=m2, other=0.0).to(tl.float32)
    f = tl.load(gp + H, mask=m2, other=0.0).to(tl.float32)
    g = tl.load(gp + 2 * H, mask=m2, other=0.0).to(tl.float32)
    o = tl.load(gp + 3 * H, mask=m2, other=0.0).to(tl.float32)
    c_prev = tl.load(cs + s * step + own, mask=m2, other=0.0)
    gc_new = gc
    gh_rest = gh
    if ZONEOUT:
        c_new = tl.load(cn + t * step + own, mask=m2, other=0.0)
        z_c = tl.load(zc + t * step + own, mask=m2, other=0.0)
        z_h = tl.load(zh + t * step + own, mask=m2, other=0.0)
        gh_rest = tl.where(valid, go * z_h, gh)
        go = go * (1.0 - z_h)
        gc_new = gc * (1.0 - z_c)
    else:
        c_new = tl.load(cs + (s + 1) * step + own, mask=m2, other=0.0)
    if LN:
        cm = (cols < H)[None, :]
        n_c = tl.load(chat + t * step + own, mask=m2, other=0.0)
        l_c = _vec(lnw + 4 * H, cols, H)
        tc = _tanh(n_c * l_c + _vec(lnw + 5 * H, cols, H))
    else:
        tc = _tanh(c_new)
    dco = go * o * (1.0 - tc * tc)  # gradient of the cell the output reads
    if LN:
        dco = tl.where(valid, dco, 0.0)
        tl.store(dcout + t * step + own, dco, mask=m2)
        rs_c = tl.load(rstd + t * (2 * B) + rows * 2 + 1, mask=rows < B, other=0.0)
        dy = dco * l_c
        m1 = _rsum(dy) / H
        mm = _rsum(dy * n_c) / H
        dco = tl.where(cm, (dy - m1[:, None] - n_c * mm[:, None]) * rs_c[:, None], 0.0)
    dpo = tl.where(valid, go * tc * o * (1.0 - o), 0.0)
    dct = gc_new + dco
    if PEEP:
        p_i = _vec(peep, cols, H)
        p_f = _vec(peep + H, cols, H)
        dct += dpo * _vec(peep + 2 * H, cols, H)
    if CLIP:
        dct = tl.where(tl.abs(c_new) < clip, dct, 0.0)
    if COUPLED:
        dpi = tl.where(valid, dct * (g - c_prev) * i * (1.0 - i), 0.0)
        dpf = tl.full(dpi.shape, 0.0, tl.float32)
    else:
        dpi = tl.where(valid, dct * g * i * (1.0 - i), 0.0)
        dpf = tl.where(valid, dct * c_prev * f * (1.0 - f), 0.0)
    dpg = tl.where(valid, dct * i * (1.0 - g * g), 0.0)
    dc_prev = dct * f
    if PEEP:
        dc_prev += dpi * p_i + dpf * p_f
    if ZONEOUT:
        dc_prev += gc * z_c
    ty = dgates.dtype.element_ty
    dp = dgates + t * (B * G) + rows[:, None] * G + cols[None, :]
    tl.store(dp, dpi.to(ty), mask=m2)
    tl.store(dp + H, dpf.to(ty), mask=m2)
    tl.store(dp + 2 * H, dpg.to(ty), mask=m2)
    tl.store(dp + 3 * H, dpo.to(ty), mask=m2)
    if LN:
        rs_g = tl.load(rstd + t * (2 * B) + rows * 2, mask=rows < B, other=0.0)
        gq = ghat + t * (B * G) + rows[:, None] * G + cols[None, :]
        n_i = tl.load(gq, mask=m2, other=0.0)
        n_f = tl.load(gq + H, mask=m2, other=0.0)
        n_g = tl.load(gq + 2 * H, mask=m2, other=0.0)
        n_o = tl.load(gq + 3 * H, mask=m2, other=0.0)
        y_i = dpi * _vec(lnw, cols, H)
        y_f = dpf * _vec(lnw + H, cols, H)
        y_g = dpg * _vec(lnw + 2 * H, cols, H)
        y_o = dpo * _vec(lnw + 3 * H, cols, H)
        m1 = (_rsum(y_i) + _rsum(y_f) + _rsum(y_g) + _rsum(y_o)) / G
        mm = (_rsum(y_i * n_i) + _rsum(y_f * n_f) + _rsum(y_g * n_g)
              + _rsum(y_o * n_o)) / G  # fmt: skip
        r_i = tl.where(cm, (y_i - m1[:, None] - n_i * mm[:, None]) * rs_g[:, None], 0.0)
        r_f = tl.where(cm, (y_f - m1[:, None] - n_f * mm[:, None]) * rs_g[:, None], 0.0)
        r_g = tl.where(cm, (y_g - m1[:, None] - n_g * mm[:, None]) * rs_g[:, None], 0.0)
        r_o = tl.where(cm, (y_o - m1[:, None] - n_o * mm[:, None]) * rs_g[:, None], 0.0)
        rp = dgh + t * (B * G) + rows[:, None] * G + cols[None, :]
        tl.store(rp, r_i.to(ty), mask=m2)
        tl.store(rp + H, r_f.to(ty), mask=m2)
        tl.store(rp + 2 * H, r_g.to(ty), mask=m2)
        tl.store(rp + 3 * H, r_o.to(ty), mask=m2)
    else:
        r_i, r_f, r_g, r_o = dpi, dpf, dpg, dpo
    return r_i, r_f, r_g, r_o, valid, tl.where(valid, dc_prev, gc), gh_rest


@triton.jit
def lstm_bwd_kernel(
    gates, whh, cs, dout, dgates, dh, dc, lens, counter,
    peep, lnw, hmask, zc, zh, cn, ghat, chat, rstd, dgh, dcout,
    T, B, H, s_hi, s_lo, clip,
    REVERSE: tl.constexpr, SYNC: tl.constexpr,
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    W_RES: tl.constexpr, CARRY: tl.constexpr, PREC: tl.constexpr,
    PEEP: tl.constexpr = False, LN: tl.constexpr = False, HMASK: tl.constexpr = False,
    ZONEOUT: tl.constexpr = False, COUPLED: tl.constexpr = False, CLIP: tl.constexpr = False,
):  # fmt: skip
    """Steps s_hi down to s_lo of backprop through time (s = -1: only dh0 from dgates[s=0]).

    With CARRY (one program owns every unit, all steps in one launch: s_lo = -1) step s's
    dgates @ W_hh goes into gh at the end of step s, in registers, not through memory. The
    recurrent product reads ``dgh`` (dgates itself without LN)."""
    pid_b = tl.program_id(1)
    nh = tl.num_programs(0)
    rows, cols, rmask, m2, own, length = _tile(lens, B, H, BB, BH)
    kk = tl.arange(0, HP)
    if W_RES:
        # v_k[r, u] = W_hh[k*H + r, cols[u]]: dh_prev[:, cols] = sum_k dgates_k @ v_k
        wp = whh + kk[:, None] * H + cols[None, :]
        wm = (kk < H)[:, None] & (cols < H)[None, :]
        v_i = tl.load(wp, mask=wm, other=0.0)
        v_f = tl.load(wp + H * H, mask=wm, other=0.0)
        v_g = tl.load(wp + 2 * H * H, mask=wm, other=0.0)
        v_o = tl.load(wp + 3 * H * H, mask=wm, other=0.0)
    if HMASK:  # the gates read h_prev * mask: its gradient is masked the same way
        hmk = tl.load(hmask + own, mask=m2, other=0.0).to(tl.float32)
    gh = tl.load(dh + own, mask=m2, other=0.0)  # grad w.r.t. the state h after step s
    gc = tl.load(dc + own, mask=m2, other=0.0)  # grad w.r.t. the state c after step s
    if CARRY:  # no barrier and no branch in the loop: step s, then its share of gh
        ty = dgates.dtype.element_ty
        for it in range(0, s_hi + 1):
            dpi, dpf, dpg, dpo, valid, gc, gh_rest = _step_dgates(
                gates, cs, dout, dgates, s_hi - it, T, B, H, rows, cols, m2, own, length,
                gh, gc, peep, lnw, zc, zh, cn, ghat, chat, rstd, dgh, dcout, clip,
                REVERSE, PEEP, LN, ZONEOUT, COUPLED, CLIP,
            )  # fmt: skip
            rec = _mma(dpi.to(ty), v_i, tl.full((BB, BH), 0.0, tl.float32), PREC)
            rec = _mma(dpf.to(ty), v_f, rec, PREC)
            rec = _mma(dpg.to(ty), v_g, rec, PREC)
            rec = _mma(dpo.to(ty), v_o, rec, PREC)
            if HMASK:
                rec = rec * hmk
            if ZONEOUT:  # noqa: SIM108 (a constexpr: resolved at compile time)
                gh = gh_rest + tl.where(valid, rec, 0.0)
            else:
                gh = tl.where(valid, rec, gh)  # a skipped step passes gh through
    else:
        broken = tl.full((), 0, tl.int32)  # a broken barrier: results are NaN from then on
        for it in range(0, s_hi - s_lo + 1):
            s = s_hi - it
            if s < T - 1:
                # gh: grad w.r.t. h after step s+1 -> after step s, through W_hh and dgates[s+1]
                if it > 0:  # dgates of step s+1 were written inside this launch
                    broken |= _step_barrier(counter + pid_b, it * nh, SYNC)
                if REVERSE:  # noqa: SIM108 (a plain if on a constexpr: resolved at compile time)
                    t1 = T - 2 - s
                else:
                    t1 = s + 1
                # tl.full, not tl.zeros: triton's own jit helpers are not interpretable when
                # triton was imported before TRITON_INTERPRET was set
                rec = tl.full((BB, BH), 0.0, tl.float32)
                if W_RES:
                    d_i, d_f, d_g, d_o = _load_dgates(dgh, t1, B, H, rows, rmask, 0, HP)
                    rec = _mma(d_i, v_i, rec, PREC)
                    rec = _mma(d_f, v_f, rec, PREC)
                    rec = _mma(d_g, v_g, rec, PREC)
                    rec = _mma(d_o, v_o, rec, PREC)
                else:
                    for k0 in range(0, H, BK):
                        d_i, d_f, d_g, d_o = _load_dgates(dgh, t1, B, H, rows, rmask, k0, BK)
                        kb = k0 + tl.arange(0, BK)
                        wp = whh + kb[:, None] * H + cols[None, :]
                        wm = (kb < H)[:, None] & (cols < H)[None, :]
                        rec = _mma(d_i, tl.load(wp, mask=wm, other=0.0), rec, PREC)
                        w = tl.load(wp + H * H, mask=wm, other=0.0)
                        rec = _mma(d_f, w, rec, PREC)
                        w = tl.load(wp + 2 * H * H, mask=wm, other=0.0)
                        rec = _mma(d_g, w, rec, PREC)
                        w = tl.load(wp + 3 * H * H, mask=wm, other=0.0)
                        rec = _mma(d_o, w, rec, PREC)
                if HMASK:
                    rec = rec * hmk
                if ZONEOUT:  # gh holds the direct part already (see _step_dgates)
                    gh = gh + tl.where((t1 < length)[:, None], rec, 0.0)
                else:
                    gh = tl.where((t1 < length)[:, None], rec, gh)  # a skipped step: gh as is
                if SYNC:
                    gh = tl.where(broken != 0, float("nan"), gh)
                    gc = tl.where(broken != 0, float("nan"), gc)
            if s >= 0:
                _, _, _, _, _, gc, gh = _step_dgates(
                    gates, cs, dout, dgates, s, T, B, H, rows, cols, m2, own, length, gh, gc,
                    peep, lnw, zc, zh, cn, ghat, chat, rstd, dgh, dcout, clip,
                    REVERSE, PEEP, LN, ZONEOUT, COUPLED, CLIP,
                )  # fmt: skip
    tl.store(dh + own, gh, mask=m2)
    tl.store(dc + own, gc, mask=m2)
