"""The Triton backend's LSTM variants on a GPU: correctness, then timings beside cuDNN.

    PYTHONPATH=src python3 bench/gpu_variants.py              # on a CUDA machine, ~2 minutes
    PYTHONPATH=src python bench/gpu_variants.py --cpu-smoke   # the script's logic, on the CPU
    PYTHONPATH=src python3 bench/gpu_variants.py --fp32 --check-only --variants layer_norm all

1. Correctness, per variant: outputs and every gradient (the variants' parameters included)
   of ``lstmkit.backends.triton`` against the reference backend in float64 on the same
   parameters and masks, as ‖a − b‖ / ‖b‖ (short sequences, with lengths, reverse).
2. Timings (median, CUDA events): one layer, input size = hidden, batch 16, 1000 steps,
   hidden 256 by default (in reverse, as the check: the same kernels); forward (no grad) and
   forward + backward of the triton backend with
   each variant, beside the plain ``torch.nn.LSTM`` (cuDNN; it has no variants: the price
   of the plain LSTM), the reference backend's Python loop over the cell, and the fused
   backend (what ``auto`` runs when triton cannot), on the GPU.
   float32 at torch's default flags (cuDNN's RNN and the triton backend in TF32).
Prints markdown tables; writes ``$OUT/gpu_variants.{md,json}`` if OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

SMOKE = "--cpu-smoke" in sys.argv
if SMOKE:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from torch import nn  # noqa: E402

from lstmkit.backends import fused, reference  # noqa: E402
from lstmkit.backends import triton as tb  # noqa: E402
from lstmkit.variants import FEATURES, CellExtras  # noqa: E402

VARIANTS = {
    "plain": (),
    "peephole": ("peephole",),
    "layer_norm": ("layer_norm",),
    "recurrent_dropout": ("recurrent_dropout",),
    "zoneout": ("zoneout",),
    "coupled": ("coupled",),
    "cell_clip": ("cell_clip",),
    "all": tuple(FEATURES),
}
TOL = 1e-2  # relative, TF32 products compounded over the recurrence (as gpu_check's "default")
SAME_PRECISION = 3.0  # or within this factor of the reference's own error at triton's precision
NAMES = ["out", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"]


def make(feats, T, B, H, dev, seed):
    """Inputs (x, h0, c0, weights), the variant's parameters (leaves) and masks (float64 on
    the CPU: each contestant converts), as a (tensors, params, masks) triple."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale) + shift

    def bern(p, *shape):
        return torch.bernoulli(torch.full(shape, p, dtype=torch.float64), generator=g)

    k = H**-0.5
    tensors = [rnd(T, B, H), rnd(B, H), rnd(B, H), rnd(4 * H, H, scale=k), rnd(4 * H, H, scale=k),
               rnd(4 * H, scale=k), rnd(4 * H, scale=k)]  # fmt: skip
    params, masks = {}, {}
    if "peephole" in feats:
        params["peephole"] = rnd(3 * H, scale=0.5)
    if "layer_norm" in feats:
        params.update(g_ih=rnd(4 * H, scale=0.3, shift=1), g_hh=rnd(4 * H, scale=0.3, shift=1),
                      g_c=rnd(H, scale=0.3, shift=1), b_c=rnd(H, scale=0.2))  # fmt: skip
    if "recurrent_dropout" in feats:
        masks["h_mask"] = bern(0.75, B, H) / 0.75
    if "zoneout" in feats:
        masks["zoneout_c"], masks["zoneout_h"] = bern(0.15, T, B, H), bern(0.05, T, B, H)
    return tensors, params, masks


def extras(feats, params, masks):
    ln = None
    if "layer_norm" in feats:
        ln = tuple(params[n] for n in ("g_ih", "g_hh", "g_c", "b_c"))
    return CellExtras(
        peephole=params.get("peephole"),
        layer_norm=ln,
        coupled="coupled" in feats,
        cell_clip=1.0 if "cell_clip" in feats else None,
        **masks,
    )


def to(case, dev, dtype, grad):
    tensors, params, masks = case
    t = [x.to(dev, dtype).requires_grad_(grad) for x in tensors]
    p = {k: v.to(dev, dtype).requires_grad_(grad) for k, v in params.items()}
    m = {k: v.to(dev, dtype) for k, v in masks.items()}
    return t, p, m


def run(backend, feats, t, p, m, lens, reverse):
    ex = extras(feats, p, m) if feats else None
    return backend.run(*t, None, lens, reverse, ex)


def rel(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def tf32_round(x):
    """x with its float32 mantissa rounded to TF32's 10 bits (nearest), back in x's dtype."""
    bits = x.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32).to(x.dtype)


class _TF32Product(torch.autograd.Function):
    """a @ b (2-D) with every operand rounded to TF32, forward and backward (as tensor cores
    take them), accumulated in the operands' dtype."""

    @staticmethod
    def forward(ctx, a, b):
        a, b = tf32_round(a), tf32_round(b)
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        grad = tf32_round(grad)
        return grad @ b.T, a.T @ grad


class TF32Products(torch.overrides.TorchFunctionMode):
    """The float64 reference at the precision of TF32 tensor cores (their rounding alone):
    every 2-D matrix product goes through ``_TF32Product``."""

    PRODUCTS = {"matmul", "__matmul__", "mm"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.PRODUCTS and not kwargs and len(args) == 2:
            a, b = args
            if a.dim() == 2 and b.dim() == 2:
                return _TF32Product.apply(a, b)
        return func(*args, **kwargs)


def check(T, B, H, dev, log, variants) -> list[dict]:
    """Triton's worst relative error per variant against the float64 reference, beside the
    error that triton's precision alone costs: the float64 reference with TF32-rounded
    product operands (``TF32Products``) when triton runs TF32 (cuDNN's RNN flag), else the
    reference in float32. A variant passes within TOL, or within SAME_PRECISION times that
    error (the layer-normed cell amplifies TF32's rounding ~70-fold, the plain cell does not)."""
    tf32 = torch.backends.cudnn.allow_tf32
    same = "float64, TF32-rounded products" if tf32 else "float32"
    log(f"## correctness: triton vs the float64 reference (T={T}, B={B}, H={H}, lengths, "
        f"reverse), worst ‖a − b‖ / ‖b‖ over outputs and gradients; 'same precision' = the "
        f"reference in {same}, against the same float64 reference\n")  # fmt: skip
    log("| variant | worst | where | same precision | pass |")
    log("|---|---:|---|---:|---|")
    rows = []
    for name in variants:
        feats = VARIANTS[name]
        case = make(feats, T, B, H, dev, seed=len(name))
        lens = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(1))
        lens[0] = T
        res = []
        same_dtype = torch.float64 if tf32 else torch.float32
        contestants = ((reference, "cpu", torch.float64, False), (tb, dev, torch.float32, False),
                       (reference, "cpu", same_dtype, tf32))  # fmt: skip
        for backend, dev_, dtype, emulate in contestants:
            t, p, m = to(case, dev_, dtype, True)
            if emulate:
                with TF32Products():
                    outs = run(backend, feats, t, p, m, lens, True)
            else:
                outs = run(backend, feats, t, p, m, lens, True)
            g = torch.Generator().manual_seed(2)
            cot = [torch.randn(o.shape, generator=g).to(o) for o in outs]
            res.append([*outs, *torch.autograd.grad(outs, [*t, *p.values()], cot)])
        names = NAMES + [f"d{k}" for k in case[1]]
        errs = {n: rel(a, b) for n, a, b in zip(names, res[1], res[0], strict=True)}
        same_errs = {n: rel(a, b) for n, a, b in zip(names, res[2], res[0], strict=True)}
        worst = max(errs, key=errs.get)
        ok = all(e <= max(TOL, SAME_PRECISION * same_errs[n]) for n, e in errs.items())
        rows.append(dict(variant=name, worst=errs[worst], where=worst, passed=ok, errors=errs,
                         same_precision_errors=same_errs))  # fmt: skip
        log(f"| {name} | {errs[worst]:.1e} | {worst} | {same_errs[worst]:.1e} | "
            f"{'PASS' if ok else 'FAIL'} |")  # fmt: skip
    return rows


def timer(dev, fn, reps: int) -> float:
    """Median milliseconds of ``fn()`` (one warm-up call first)."""
    fn()
    times = []
    for _ in range(reps):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def timings(T, B, H, dev, reps, ref_reps, log) -> list[dict]:
    log(f"\n## timings: one layer, T={T}, B={B}, I=H={H}, float32 at torch's default flags "
        f"(TF32 in cuDNN's RNN and in triton), median ms\n")  # fmt: skip
    lstm = nn.LSTM(H, H).to(dev)
    x = torch.randn(T, B, H, device=dev)

    def cudnn_fwd():
        with torch.no_grad():
            lstm(x)

    def cudnn_fb():
        xi = x.detach().requires_grad_()
        out, (h, c) = lstm(xi)
        (out.sum() + h.sum() + c.sum()).backward()

    c_f, c_fb = timer(dev, cudnn_fwd, reps), timer(dev, cudnn_fb, reps)
    log(f"plain torch.nn.LSTM (cuDNN): forward {c_f:.2f} ms, forward+backward {c_fb:.2f} ms\n")
    log("| variant | triton fwd | triton fwd+bwd | fwd / cuDNN plain | fwd+bwd / cuDNN plain "
        "| reference fwd | reference fwd+bwd | fused fwd | fused fwd+bwd |")  # fmt: skip
    log("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, feats in VARIANTS.items():
        t, p, m = to(make(feats, T, B, H, dev, seed=3), dev, torch.float32, True)

        def fwd(backend, t=t, p=p, m=m, feats=feats):
            with torch.no_grad():
                run(backend, feats, t, p, m, None, True)

        def fb(backend, t=t, p=p, m=m, feats=feats):
            outs = run(backend, feats, t, p, m, None, True)
            sum(o.sum() for o in outs).backward()

        tf, tfb = timer(dev, lambda: fwd(tb), reps), timer(dev, lambda: fb(tb), reps)
        rf = timer(dev, lambda: fwd(reference), ref_reps)
        rfb = timer(dev, lambda: fb(reference), ref_reps)
        ff, ffb = timer(dev, lambda: fwd(fused), ref_reps), timer(dev, lambda: fb(fused), ref_reps)
        rows.append(dict(variant=name, T=T, B=B, H=H, triton_fwd_ms=tf, triton_fb_ms=tfb,
                         cudnn_plain_fwd_ms=c_f, cudnn_plain_fb_ms=c_fb, reference_fwd_ms=rf,
                         reference_fb_ms=rfb, fused_fwd_ms=ff, fused_fb_ms=ffb))  # fmt: skip
        log(f"| {name} | {tf:.2f} | {tfb:.2f} | {tf / c_f:.2f}x | {tfb / c_fb:.2f}x | {rf:.1f} "
            f"| {rfb:.1f} | {ff:.1f} | {ffb:.1f} |")  # fmt: skip
    return rows


def variant(name: str) -> str:
    """A --variants entry: a name of VARIANTS, or FEATURES joined by '+' (added to VARIANTS)."""
    if name not in VARIANTS:
        feats = tuple(name.split("+"))
        unknown = [f for f in feats if f not in FEATURES]
        if unknown:
            known = f"{', '.join(VARIANTS)} or {'+'.join(FEATURES)}"
            raise argparse.ArgumentTypeError(f"unknown variant {name!r}: expected one of {known}")
        VARIANTS[name] = feats
    return name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, kernels interpreted")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--ref-reps", type=int, default=3, help="the Python loop is slow")
    ap.add_argument("--variants", nargs="+", type=variant, default=list(VARIANTS),
                    help=f"names ({', '.join(VARIANTS)}) or features joined by '+' "
                    "(layer_norm+cell_clip)")  # fmt: skip
    ap.add_argument("--fp32", action="store_true", help="TF32 off (cuDNN's RNN, matmuls, triton)")
    ap.add_argument("--check-only", action="store_true", help="no timings")
    args = ap.parse_args()
    if args.fp32:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    if SMOKE:
        dev, (T, B, H), reps, ref_reps, check_size = torch.device("cpu"), (5, 2, 8), 1, 1, (4, 2, 8)
    else:
        if not torch.cuda.is_available():
            print("no CUDA device (use --cpu-smoke for a run of the logic on the CPU)")
            return 1
        dev, (T, B, H) = torch.device("cuda"), (args.steps, args.batch, args.hidden)
        # the check at the timed batch and hidden size (and direction): the same plans and
        # constexprs, so each variant's kernels compile once
        reps, ref_reps, check_size = args.reps, args.ref_reps, (50, B, H)
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (interpreted smoke)"
    log(f"# lstmkit triton variants on {card}, torch {torch.__version__}\n")
    rows = check(*check_size, dev, log, args.variants)
    ok = all(r["passed"] for r in rows)
    log(f"\ncorrectness: {'ALL PASS' if ok else 'FAILURES'}")
    times = [] if args.check_only else timings(T, B, H, dev, reps, ref_reps, log)
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu_variants.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(out, "gpu_variants.json"), "w") as f:
            json.dump({"device": card, "correctness": rows, "timings": times}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
