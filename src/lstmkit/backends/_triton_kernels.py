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
def lstm_fwd_kernel(
    gates, whh, hs, cs, out, lens, counter,
    T, B, H, s_begin, s_end,
    REVERSE: tl.constexpr, STORE: tl.constexpr, SYNC: tl.constexpr,
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    W_RES: tl.constexpr, CARRY: tl.constexpr, PREC: tl.constexpr,
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
            # the input part of the gates does not depend on h: load it before waiting for h
            acc_i, acc_f, acc_g, acc_o = _load_input_gates(gates, s, T, B, H, rows, cols, m2,
                                                           REVERSE)  # fmt: skip
            if s > s_begin:  # hs[s] was written inside this launch, partly by other programs
                broken |= _step_barrier(counter + pid_b, (s - s_begin) * nh, SYNC)
        if W_RES:
            if CARRY:
                hp = h.to(hs.dtype.element_ty)  # (BB, BH) and BH == HP: the whole previous h
            else:
                hm = rmask[:, None] & (kk < H)[None, :]
                hp = tl.load(hrow + rows[:, None] * H + kk[None, :], mask=hm, other=0.0,
                             cache_modifier=".cg")  # fmt: skip
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
        i = _sigmoid(acc_i)
        f = _sigmoid(acc_f)
        g = _tanh(acc_g)
        o = _sigmoid(acc_o)
        c_new = f * c + i * g
        h_new = o * _tanh(c_new)
        if SYNC:
            c_new = tl.where(broken != 0, float("nan"), c_new)
            h_new = tl.where(broken != 0, float("nan"), h_new)
        valid = (t < length)[:, None]
        if CARRY:
            h_old = h
        else:
            h_old = tl.load(hrow + own, mask=m2, other=0.0, cache_modifier=".cg").to(tl.float32)
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
                 REVERSE: tl.constexpr):  # fmt: skip
    """Step s of backprop through the cell: stores dgates[t] and returns its four tiles
    (fp32), the validity mask of the step, and the gradient w.r.t. c before the step."""
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
    tc = _tanh(tl.load(cs + (s + 1) * step + own, mask=m2, other=0.0))
    dct = gc + go * o * (1.0 - tc * tc)
    dpi = tl.where(valid, dct * g * i * (1.0 - i), 0.0)
    dpf = tl.where(valid, dct * c_prev * f * (1.0 - f), 0.0)
    dpg = tl.where(valid, dct * i * (1.0 - g * g), 0.0)
    dpo = tl.where(valid, go * tc * o * (1.0 - o), 0.0)
    ty = dgates.dtype.element_ty
    dp = dgates + t * (B * G) + rows[:, None] * G + cols[None, :]
    tl.store(dp, dpi.to(ty), mask=m2)
    tl.store(dp + H, dpf.to(ty), mask=m2)
    tl.store(dp + 2 * H, dpg.to(ty), mask=m2)
    tl.store(dp + 3 * H, dpo.to(ty), mask=m2)
    return dpi, dpf, dpg, dpo, valid, tl.where(valid, dct * f, gc)


@triton.jit
def lstm_bwd_kernel(
    gates, whh, cs, dout, dgates, dh, dc, lens, counter,
    T, B, H, s_hi, s_lo,
    REVERSE: tl.constexpr, SYNC: tl.constexpr,
    HP: tl.constexpr, BH: tl.constexpr, BB: tl.constexpr, BK: tl.constexpr,
    W_RES: tl.constexpr, CARRY: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Steps s_hi down to s_lo of backprop through time (s = -1: only dh0 from dgates[s=0]).

    With CARRY (one program owns every unit, all steps in one launch: s_lo = -1) step s's
    dgates @ W_hh goes into gh at the end of step s, in registers, not through memory."""
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
    gh = tl.load(dh + own, mask=m2, other=0.0)  # grad w.r.t. the state h after step s
    gc = tl.load(dc + own, mask=m2, other=0.0)  # grad w.r.t. the state c after step s
    if CARRY:  # no barrier and no branch in the loop: step s, then its share of gh
        ty = dgates.dtype.element_ty
        for it in range(0, s_hi + 1):
            dpi, dpf, dpg, dpo, valid, gc = _step_dgates(
                gates, cs, dout, dgates, s_hi - it, T, B, H, rows, cols, m2, own, length,
                gh, gc, REVERSE,
            )  # fmt: skip
            rec = _mma(dpi.to(ty), v_i, tl.full((BB, BH), 0.0, tl.float32), PREC)
            rec = _mma(dpf.to(ty), v_f, rec, PREC)
            rec = _mma(dpg.to(ty), v_g, rec, PREC)
            rec = _mma(dpo.to(ty), v_o, rec, PREC)
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
                    d_i, d_f, d_g, d_o = _load_dgates(dgates, t1, B, H, rows, rmask, 0, HP)
                    rec = _mma(d_i, v_i, rec, PREC)
                    rec = _mma(d_f, v_f, rec, PREC)
                    rec = _mma(d_g, v_g, rec, PREC)
                    rec = _mma(d_o, v_o, rec, PREC)
                else:
                    for k0 in range(0, H, BK):
                        d_i, d_f, d_g, d_o = _load_dgates(dgates, t1, B, H, rows, rmask, k0, BK)
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
                gh = tl.where((t1 < length)[:, None], rec, gh)  # a skipped step passes gh through
                if SYNC:
                    gh = tl.where(broken != 0, float("nan"), gh)
                    gc = tl.where(broken != 0, float("nan"), gc)
            if s >= 0:
                _, _, _, _, _, gc = _step_dgates(gates, cs, dout, dgates, s, T, B, H, rows, cols,
                                                 m2, own, length, gh, gc, REVERSE)  # fmt: skip
    tl.store(dh + own, gh, mask=m2)
    tl.store(dc + own, gc, mask=m2)
