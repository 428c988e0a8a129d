"""The Triton backend: persistent GPU kernels for the recurrence, torch matmuls for the rest.

Forward: ``gates = x @ W_ih^T + b`` for all steps is one large matmul; one kernel launch then
runs every time step (:mod:`lstmkit.backends._triton_kernels`). Backward: one launch runs the
recurrence backwards and writes ``dgates`` (T, B, 4H); ``dx``, ``dW_ih``, ``dW_hh`` and the
biases are then a few large matmuls over all steps at once.

Runs float32 and bfloat16 (fp32 accumulation, fp32 cell state). float32 uses TF32 exactly
when torch.nn.LSTM's cuDNN path would (:func:`tf32_enabled`), else 3xTF32 (float32
accuracy on the tensor cores). No projection (``proj_size``).

Variants (``extras``, :class:`lstmkit.variants.CellExtras`): peepholes, layer norm, coupled
gates, cell clipping, recurrent dropout and zoneout, forward and backward, in any combination,
each a constexpr flag of the same kernels (the plain LSTM compiles as before). Layer norm of
the input projection is torch ops over all steps (as the fused backend does); that of the
recurrent projection (over 4H) and of the cell (over H) runs in the kernel, which needs one
program to own every gate column of its batch rows: layer norm is planned so (``own_all``),
and refused above hidden ``LN_MAX_HIDDEN``. The gradients of the peepholes and of the gains
are sums over steps of saved values, torch ops after the reverse kernel.

The work split (:func:`plan_split`) keeps each program's slice of ``weight_hh`` on chip when
it fits the registers and the card's shared memory, else streams it; a launch the card
still refuses for its shared memory is planned again with streamed weights. Triton is
optional and imported on first use; on the CPU the kernels run only in triton's interpreter
(``TRITON_INTERPRET=1`` set before this backend first loads its kernels), which tests use;
``bench/gpu_compile_report.py`` compiles them for a GPU without one.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from lstmkit.backends import BackendError, _variant_loops, lacking
from lstmkit.variants import CellExtras

_KERNELS = "lstmkit.backends._triton_kernels"
_PLAIN = CellExtras()
_DTYPES = (torch.float32, torch.bfloat16)
_MAX_ELEMS = 2**31 - 1  # the kernels index with int32
# variants the kernels run (see lstmkit.variants)
_FEATURES = frozenset(
    {"layer_norm", "peephole", "coupled", "cell_clip", "recurrent_dropout", "zoneout"}
)
# Layer norm keeps a row's 4H gates in one program: 4 x BB x HP fp32 accumulators, 64 KB at
# BB = 16, HP = 256 (a register file per SM holds 256 KB); beyond that it is refused. Compiled
# for sm_90 (bench/gpu_compile_report.py --variants layer_norm): no spills at hidden 64, about
# 200 B per thread at 128, 1-2 KB at 256; the speed there is unmeasured (bench/gpu_variants.py).
LN_MAX_HIDDEN = 256
_RESIDENT_BYTES = 64 * 1024  # weight_hh slice kept in registers when it is at most this


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    """Whether the kernels run (or, once loaded, will run) in triton's CPU interpreter."""
    mod = sys.modules.get(_KERNELS)
    if mod is not None:
        return mod.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def unsupported(req) -> str | None:
    if not _triton_installed():
        return "triton is not installed (pip install lstmkit[gpu])"
    if req.device_type == "cpu" and not _interpreting():
        return "device cpu (triton runs on CUDA, or on the CPU only with TRITON_INTERPRET=1)"
    if req.device_type not in ("cuda", "cpu"):
        return f"device {req.device_type}"
    if req.dtype not in _DTYPES:
        return f"dtype {req.dtype} (float32 or bfloat16 only)"
    if req.P:
        return "proj_size"
    if req.T * req.B * 4 * req.H > _MAX_ELEMS:
        return f"T*B*4H = {req.T * req.B * 4 * req.H} elements (more than 2**31 - 1)"
    missing = lacking(req, _FEATURES)
    if missing is None and "layer_norm" in req.features and req.H > LN_MAX_HIDDEN:
        return (f"variant layer_norm at hidden {req.H} (its kernels keep all 4H gate columns of "
                f"a row in one program: hidden at most {LN_MAX_HIDDEN})")  # fmt: skip
    if missing is None and req.cell_states and req.needs_grad:
        return "return_cell_states with gradients (its backward kernel takes no cell gradient)"
    return missing


def _kernels():
    import importlib

    return importlib.import_module(_KERNELS)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# Tests set this to force a work split: keys BH, BB, BK, W_RES, stepwise, sync, carry.
_OVERRIDE: dict = {}

# Bytes per element of the h (forward) / dgates (backward) operand of tl.dot, by precision:
# 3xTF32 splits each float32 into a high and a low TF32 part, so it holds two copies.
_OPERAND_BYTES = {"tf32x3": 8, "tf32": 4, "ieee": 4}
# The dot's left operand is BB rows of the previous h: all HP columns when the weights are
# resident, BK columns per chunk when they are streamed. Bounds on its size, in bytes, below
# which the kernels compiled for sm_90 do not spill registers (bench/gpu_compile_report.py).
_OPERAND_RESIDENT = 16 * 1024
_OPERAND_CHUNK = 4 * 1024


H100_SMEM = 227 * 1024  # shared memory one block may opt in to on an H100 (A100: 163 KB)


def _smem_per_block(device: torch.device) -> int:
    if device.type != "cuda":
        return H100_SMEM  # the interpreter has no limit; plan as for an H100
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", props.shared_memory_per_block))


# (device index, H, dtype, precision, own_all) whose resident-weight kernel the GPU refused
# for its shared memory: planned with streamed weights from then on (see _launch)
_STREAMED: set = set()


def _plan(B: int, H: int, dtype: torch.dtype, device: torch.device, prec: str = "ieee",
          own_all: bool = False) -> dict:  # fmt: skip
    """The work split for this device (see :func:`plan_split`)."""
    stream = (device.index, H, dtype, prec, own_all) in _STREAMED
    return plan_split(B, H, dtype, prec, _sm_count(device), interpreted=device.type == "cpu",
                      smem=_smem_per_block(device), stream=stream, own_all=own_all)  # fmt: skip


def plan_split(
    B: int,
    H: int,
    dtype: torch.dtype,
    prec: str,
    sms: int,
    interpreted: bool = False,
    smem: int = H100_SMEM,
    stream: bool = False,
    own_all: bool = False,
) -> dict:
    """Choose the work split. The weight slice of one program (4 x HP x BH) stays on chip
    when it fits ``_RESIDENT_BYTES`` and the device's shared memory (``smem`` bytes per block:
    Triton stages the resident weights there, up to twice their size plus 8 KB on sm_80-90),
    and the dot's left operand, the whole previous h of BB rows, is small enough not to
    spill (3xTF32 at hidden 256 broke that: it spilled, and ran 14x slower than cuDNN on an
    H100); else (or with ``stream``) weight_hh is streamed in K-chunks of BK. The persistent
    form needs every program co-resident. One program over all units (NH == 1) keeps h in
    registers from step to step (``CARRY``). ``own_all`` (layer norm: a row-wide reduction)
    keeps every unit in one program (BH = HP), weights resident only within the same budget."""
    HP = max(16, _next_pow2(H))
    es = torch.empty(0, dtype=dtype).element_size()
    budget = min(_RESIDENT_BYTES, (smem - 8 * 1024) // 2)
    BH = HP
    while BH > 16 and 4 * HP * BH * es > budget and not own_all:
        BH //= 2
    NH = -(-H // BH)
    # enough batch rows per program that all programs fit on the SMs at once, at least 16
    # (the smallest tile tl.dot takes on the GPU), at most 128 (register pressure)
    want = -(-B * NH // max(1, sms))
    BB = min(128, max(16, _next_pow2(want), _next_pow2(B) if NH == 1 else 16))
    if NH == 1:  # no barrier between programs: many small independent ones (64 spilled)
        BB = 16
    op_bytes = _OPERAND_BYTES[prec] if dtype == torch.float32 else es
    split3 = dtype == torch.float32 and prec == "tf32x3"
    BK = min(64, HP)
    while BK > 16 and BB * BK * op_bytes > _OPERAND_CHUNK:
        BK //= 2
    plan = {
        "HP": HP,
        "BH": BH,
        "BB": BB,
        "BK": BK,
        # 3xTF32 splits the resident weights in two parts as well: count its operand twice
        "W_RES": not stream
        and 4 * HP * BH * es <= budget
        and BB * HP * op_bytes * (2 if split3 else 1) <= _OPERAND_RESIDENT,
    }
    if own_all and not plan["W_RES"]:
        # one program streams all 4 x HP columns: the smallest chunks (hidden 128: 164 B of
        # spills on sm_90 at BK 16, 676 B at 64; hidden 256 spills 1.6 KB or more: unmeasured)
        plan["BK"] = 16
    plan.update({k: v for k, v in _OVERRIDE.items() if k in plan and not (own_all and k == "BH")})
    NH = -(-H // plan["BH"])
    NB = -(-B // plan["BB"])
    # a spinning barrier between programs needs them all running at once: one per SM
    fits = NH == 1 or (not interpreted and sms >= NH * NB)
    plan["stepwise"] = _OVERRIDE.get("stepwise", not fits)
    plan["SYNC"] = _OVERRIDE.get("sync", NH > 1 and not plan["stepwise"])
    # h (forward) and dgates (backward) carried in registers from step to step: possible only
    # when one program computes all of them and lives for the whole launch
    can_carry = NH == 1 and plan["W_RES"] and not plan["stepwise"] and not plan["SYNC"]
    plan["CARRY"] = can_carry and _OVERRIDE.get("carry", True)
    plan["grid"] = (NH, NB)
    # 32-bit registers a program holds: its resident weights plus its largest tile; 8 warps
    # keep the resident weights near 64 registers per thread
    w_regs = 4 * plan["HP"] * plan["BH"] * es // 4 if plan["W_RES"] else 0
    tile = plan["BB"] * max(4 * plan["BH"], plan["HP"] if plan["W_RES"] else plan["BK"])
    plan["num_warps"] = 8 if w_regs + tile >= 8192 else 4
    if split3 and not plan["W_RES"]:  # streamed 3xTF32 spilled with 4 warps
        plan["num_warps"] = 8
    return plan


def tf32_enabled() -> bool:
    """Whether float32 recurrences may use TF32, decided as torch.nn.LSTM's cuDNN path decides
    it: ``torch.backends.cudnn.rnn.fp32_precision`` (torch >= 2.9; "tf32" by default, and
    "none" when ``torch.backends.cudnn.allow_tf32 = False``), else ``cudnn.allow_tf32``."""
    # the most specific flag that is set decides; "none" defers to the next one up
    cudnn = torch.backends.cudnn
    for flags in (getattr(cudnn, "rnn", None), cudnn, torch.backends):
        prec = getattr(flags, "fp32_precision", "none")
        if prec != "none":
            return prec == "tf32"
    # torch < 2.9, or "none" all the way up: the legacy flag (it raises only for mixed
    # settings, which the loop has resolved)
    return bool(torch.backends.cudnn.allow_tf32)


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    """float32 on CUDA: TF32 when nn.LSTM would use it (:func:`tf32_enabled`), else 3xTF32
    (each operand split in a TF32 high and low part, three products: float32 accuracy on the
    tensor cores; Triton's exact "ieee" path runs on the FMA units and measured 3-25x slower
    than cuDNN on an H100)."""
    if dtype != torch.float32 or device.type != "cuda":
        return "ieee"
    return "tf32" if tf32_enabled() else "tf32x3"


def _consts(p: dict, prec: str) -> dict:
    keys = ("HP", "BH", "BB", "BK", "W_RES", "CARRY")
    # num_stages=1: no software pipelining, which could hoist the next step's loads of the
    # shared state above the barrier that makes them valid
    return {**{k: p[k] for k in keys}, "PREC": prec, "num_warps": p["num_warps"], "num_stages": 1}


def _launch(kernel_name: str, B: int, H: int, like: torch.Tensor, launch, own_all=False) -> None:
    """Plan, then ``launch(kernel, plan, consts)``. A GPU with less shared memory than the
    plan assumed refuses a resident-weight kernel before it runs (Triton's OutOfResources):
    then plan again with streamed weights, and keep doing so for this shape."""
    k = _kernels()
    prec = _precision(like.dtype, like.device)
    p = _plan(B, H, like.dtype, like.device, prec, own_all)
    try:
        launch(getattr(k, kernel_name), p, _consts(p, prec))
    except Exception as e:
        from triton.runtime.errors import OutOfResources

        if not isinstance(e, OutOfResources) or not p["W_RES"]:
            raise
        _STREAMED.add((like.device.index, H, like.dtype, prec, own_all))
        p = _plan(B, H, like.dtype, like.device, prec, own_all)
        launch(getattr(k, kernel_name), p, _consts(p, prec))


class _Variant:
    """The variants of one forward as the kernels take them: constexpr flags, and a buffer for
    each pointer argument (``dummy`` for those whose flag is off: never read)."""

    def __init__(self, ex, T: int, B: int, H: int, x: torch.Tensor, store: bool):
        f32 = {"dtype": torch.float32, "device": x.device}
        dummy = x  # any tensor: the plain path allocates nothing more
        ex = ex or _PLAIN
        self.flags = {
            "PEEP": ex.peephole is not None,
            "LN": ex.layer_norm is not None,
            "HMASK": ex.h_mask is not None,
            "ZONEOUT": ex.zoneout_c is not None or ex.zoneout_h is not None,
            "COUPLED": bool(ex.coupled),
            "CLIP": ex.cell_clip is not None,
        }
        self.any = any(self.flags.values())
        self.clip = float(ex.cell_clip) if ex.cell_clip is not None else 0.0

        def f32c(v):
            return v.detach().to(torch.float32).contiguous()

        self.peep = f32c(ex.peephole) if self.flags["PEEP"] else dummy
        self.lnw = dummy
        if self.flags["LN"]:
            _, g_hh, g_c, b_c = ex.layer_norm
            self.lnw = torch.cat([f32c(g_hh), f32c(g_c), f32c(b_c)])
        self.hmask = ex.h_mask.detach().to(x.dtype).contiguous() if self.flags["HMASK"] else dummy
        self.zc = self.zh = self.cn = dummy
        if self.flags["ZONEOUT"]:

            def zone(z):  # a 0/1 mask (T, B, H), a probability (evaluation) or None
                if isinstance(z, torch.Tensor):
                    return f32c(z).expand(T, B, H).contiguous()
                return torch.full((T, B, H), float(z or 0.0), **f32)

            self.zc, self.zh = zone(ex.zoneout_c), zone(ex.zoneout_h)
            self.cn = torch.empty(T, B, H, **f32) if store else dummy
        self.ghat = self.chat = self.rstd = dummy
        if self.flags["LN"] and store:
            self.ghat = torch.empty(T, B, 4 * H, **f32)
            self.chat = torch.empty(T, B, H, **f32)
            self.rstd = torch.empty(T, B, 2, **f32)

    def fwd_args(self):
        return (self.peep, self.lnw, self.hmask, self.zc, self.zh, self.cn, self.ghat,
                self.chat, self.rstd)  # fmt: skip

    def bwd_args(self, dgh, dcout):
        return (self.peep, self.lnw, self.hmask, self.zc, self.zh, self.cn, self.ghat,
                self.chat, self.rstd, dgh, dcout)  # fmt: skip

    def consts(self) -> dict:
        # only the flags that are on: the plain launch passes exactly what it passed before
        return {k: True for k, v in self.flags.items() if v}


def _forward(gates, w_hh, hs, cs, out, lens, reverse, store, var):
    """Run the recurrence in place on the buffers (shapes in ``_triton_kernels``)."""
    T, B, H = out.shape

    def launch(kernel, p, c):
        counter = torch.zeros(p["grid"][1], dtype=torch.int32, device=gates.device)
        spans = [(s, s + 1) for s in range(T)] if p["stepwise"] else [(0, T)]
        for s0, s1 in spans:
            kernel[p["grid"]](
                gates, w_hh, hs, cs, out, lens, counter, *var.fwd_args(), T, B, H, s0, s1,
                var.clip, REVERSE=reverse, STORE=store, SYNC=p["SYNC"], **c, **var.consts(),
            )  # fmt: skip

    _launch("lstm_fwd_kernel", B, H, gates, launch, own_all=var.flags["LN"])


def _backward(gates, w_hh, cs, dout, dgates, dh, dc, lens, reverse, var, dgh, dcout):
    T, B, H = dout.shape

    def launch(kernel, p, c):
        counter = torch.zeros(p["grid"][1], dtype=torch.int32, device=gates.device)
        # s = -1 is the last pass: it only turns dgates of step 0 into the gradient of h0
        spans = [(s, s) for s in range(T - 1, -2, -1)] if p["stepwise"] else [(T - 1, -1)]
        for s_hi, s_lo in spans:
            kernel[p["grid"]](
                gates, w_hh, cs, dout, dgates, dh, dc, lens, counter,
                *var.bwd_args(dgh, dcout), T, B, H, s_hi, s_lo, var.clip,
                REVERSE=reverse, SYNC=p["SYNC"], **c, **var.consts(),
            )  # fmt: skip

    _launch("lstm_bwd_kernel", B, H, gates, launch, own_all=var.flags["LN"])


def forward_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, g_ih, lengths, reverse, ex, store):
    """One layer, one direction on the kernels: (out, h_n, c_n, saved, var). ``saved`` is
    what :func:`backward_layer` reads (with ``store``; the kernels then keep every state)."""
    T, B, I = x.shape
    H = w_hh.size(1)
    var = _Variant(ex, T, B, H, x, store)
    xhat = xrstd = None
    if g_ih is not None:  # layer norm of the input projection: torch ops over all steps
        raw = (x.reshape(T * B, I) @ w_ih.t()).view(T, B, 4 * H)
        shift = None if b_ih is None else b_ih + b_hh
        gates, xhat, xrstd = _variant_loops.norm_rows(raw, g_ih, shift, True)
    else:
        x2 = x.reshape(T * B, I)
        gates = torch.addmm(b_ih + b_hh, x2, w_ih.t()) if b_ih is not None else x2 @ w_ih.t()
    gates = gates.reshape(T, B, 4 * H).contiguous()
    hs = x.new_empty(T + 1, B, H)
    hs[0] = h0
    cs = torch.empty(T + 1, B, H, dtype=torch.float32, device=x.device)
    cs[0] = c0
    out = x.new_empty(T, B, H)
    lens = int_lengths(lengths, T, B, x.device)
    w_hh = w_hh.contiguous()
    _forward(gates, w_hh, hs, cs, out, lens, reverse, store, var)
    saved = (x, w_ih, w_hh, gates, hs, cs, lens, xhat, xrstd, g_ih)
    # c_n is its own tensor even in float32 (.to would return the buffer itself)
    return out, hs[T].clone(), cs[T].to(x.dtype, copy=True), saved, var


def int_lengths(lengths, T: int, B: int, device) -> torch.Tensor:
    """The kernels' lengths: (B,) int32 on the device (all T when ``lengths`` is None)."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)


def cell_states(cs, lens, reverse: bool, dtype) -> torch.Tensor:
    """Every step's cell state (T, B, H) in time order, zero past each length, from the
    kernel's (T+1, B, H) fp32 buffer (processing order: slot s+1 is the state after step s)."""
    T = cs.size(0) - 1
    c = cs[1:].flip(0) if reverse else cs[1:]
    live = torch.arange(T, device=cs.device)[:, None] < lens[None, :]
    return (c * live[..., None]).to(dtype)


def backward_layer(saved, var, reverse, has_bias, need, dout, dh_n, dc_n):
    """The gradients of (x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, g_ih, g_hh, g_c, b_c) from
    :func:`forward_layer`'s ``saved``; ``need`` says which (None where not needed); ``var``
    None: the plain LSTM."""
    x, w_ih, w_hh, gates, hs, cs, lens, xhat, xrstd, g_ih = saved
    T, B, I = x.shape
    H = w_hh.size(1)
    var = var or _Variant(None, T, B, H, x, True)
    if dout is None:
        dout = torch.zeros(T, B, H, dtype=x.dtype, device=x.device)
    dh = torch.zeros(B, H, dtype=torch.float32, device=x.device)
    dc = torch.zeros_like(dh)
    if dh_n is not None:
        dh += dh_n
    if dc_n is not None:
        dc += dc_n
    dgates = torch.empty(T, B, 4 * H, dtype=x.dtype, device=x.device)
    ln = var.flags["LN"]
    dgh = torch.empty_like(dgates) if ln else dgates  # gradient of h @ W_hh^T
    dcout = torch.empty(T, B, H, dtype=torch.float32, device=x.device) if ln else dh
    _backward(gates, w_hh, cs, dout.contiguous(), dgates, dh, dc, lens, reverse, var, dgh,
              dcout)  # fmt: skip
    # everything that is not the recurrence: large matmuls over all T*B rows at once
    dg2 = dgates.view(T * B, 4 * H)
    dxg = dg2  # gradient of x @ W_ih^T
    dg_ih = None
    if xhat is not None:
        dxg, dg_ih = _variant_loops.norm_rows_backward(dgates, g_ih, xhat, xrstd)
        dxg, dg_ih = dxg.view(T * B, 4 * H), dg_ih if need[8] else None
    dx = (dxg @ w_ih).view(T, B, I) if need[0] else None
    dw_ih = dxg.t() @ x.reshape(T * B, I) if need[3] else None
    dw_hh = None
    if need[4]:
        h_prev = hs[:T].flip(0) if reverse else hs[:T]  # h entering step t, time order
        if var.flags["HMASK"]:
            h_prev = h_prev * var.hmask  # the gates read h * mask
        dw_hh = dgh.view(T * B, 4 * H).t() @ h_prev.reshape(T * B, H)
    db = dg2.float().sum(0).to(x.dtype) if has_bias and (need[5] or need[6]) else None
    vg = _variant_grads(var, dgates, cs, dcout, reverse, need, x.dtype) if var.any else []
    vg = vg or [None] * 4
    return (dx, dh.to(x.dtype), dc.to(x.dtype), dw_ih, dw_hh, db, db, vg[0], dg_ih, *vg[1:])


class _LSTMFunction(torch.autograd.Function):
    """One layer, one direction. The variants' parameters (peephole (3H,), layer-norm gains
    g_ih, g_hh (4H,), g_c, b_c (H,)) are inputs, so that they get gradients; ``ex`` carries
    them with this forward's masks (which get none)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, g_ih, g_hh, g_c, b_c, lengths,
                reverse, ex, cells):  # fmt: skip
        store = any(ctx.needs_input_grad)
        out, h_n, c_n, saved, var = forward_layer(
            x, h0, c0, w_ih, w_hh, b_ih, b_hh, g_ih, lengths, reverse, ex, store
        )
        if store:
            ctx.save_for_backward(*saved)
            ctx.var = var
        ctx.meta = (reverse, b_ih is not None)
        if cells:
            return out, h_n, c_n, cell_states(saved[5], saved[6], reverse, x.dtype)
        return out, h_n, c_n

    @staticmethod
    def backward(ctx, dout, dh_n, dc_n, dcs=None):
        if dcs is not None:  # unsupported() refuses cell states with grad: this is a guard
            raise BackendError("backend 'triton' does not support gradients of the cell states")
        reverse, has_bias = ctx.meta
        grads = backward_layer(ctx.saved_tensors, ctx.var, reverse, has_bias,
                               ctx.needs_input_grad, dout, dh_n, dc_n)  # fmt: skip
        return (*grads, None, None, None, None)


def _variant_grads(var, dgates, cs, dcout, reverse, need, dtype) -> list:
    """Gradients of the peepholes and of g_hh, g_c, b_c: sums over every step of saved values
    (dgates is zero on dead steps, and so is dcout)."""
    H = cs.size(2)
    T = dgates.size(0)
    dG = dgates.float()
    dpeep = dg_hh = dg_c = db_c = None
    if var.flags["PEEP"] and need[7]:
        c_prev = cs[:T].flip(0) if reverse else cs[:T]  # the cell entering step t, time order
        c_new = var.cn if var.flags["ZONEOUT"] else (cs[1:].flip(0) if reverse else cs[1:])
        dpeep = torch.cat(
            [
                (dG[..., :H] * c_prev).sum((0, 1)),
                (dG[..., H : 2 * H] * c_prev).sum((0, 1)),
                (dG[..., 3 * H :] * c_new).sum((0, 1)),
            ]
        ).to(dtype)
    if var.flags["LN"]:
        dg_hh = (dG * var.ghat).sum((0, 1)).to(dtype) if need[9] else None
        dg_c = (dcout * var.chat).sum((0, 1)).to(dtype) if need[10] else None
        db_c = dcout.sum((0, 1)).to(dtype) if need[11] else None
    return [dpeep, dg_hh, dg_c, db_c]


def run(
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras=None,
    cells=False,
):  # fmt: skip
    """One layer, one direction; see :mod:`lstmkit.backends` for shapes and semantics.

    x (T, B, I), h0 (B, H), c0 (B, H) -> out (T, B, H), h_n (B, H), c_n (B, H), and with
    ``cells`` every step's c_t (T, B, H) (forward only: no gradient flows back through it);
    ``extras``: the variants (:class:`lstmkit.variants.CellExtras`) or None."""
    if weight_hr is not None:
        raise BackendError("backend 'triton' does not support proj_size")
    peep = None if extras is None else extras.peephole
    ln = (None,) * 4 if extras is None or extras.layer_norm is None else extras.layer_norm
    if ln[0] is not None and weight_hh.size(1) > LN_MAX_HIDDEN:
        raise BackendError(
            f"backend 'triton' does not support variant layer_norm at hidden "
            f"{weight_hh.size(1)} (at most {LN_MAX_HIDDEN})"
        )
    if torch.compiler.is_compiling():  # torch.compile / torch.export: one custom op
        if extras is not None:
            raise BackendError(
                "backend 'triton' under torch.compile/torch.export runs the plain LSTM only, "
                "got variants (they run eager, or on the fused and native backends compiled)"
            )
        from lstmkit.backends import _triton_ops

        tensors = (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
        save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        return _triton_ops.run(*tensors, lengths, bool(reverse), save, cells)
    return _LSTMFunction.apply(
        x.contiguous(), h0.contiguous(), c0.contiguous(), weight_ih, weight_hh,
        bias_ih, bias_hh, peep, *ln, lengths, bool(reverse), extras, cells,
    )  # fmt: skip
