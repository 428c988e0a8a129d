"""One GPU check of the Triton backend: correctness first, then timings against cuDNN.

    PYTHONPATH=src python3 bench/gpu_check.py          # on a CUDA machine, < 5 minutes
    PYTHONPATH=src python3 bench/gpu_check.py --cells default:384:16:1000,bf16:768:64:1000
    PYTHONPATH=src python bench/gpu_check.py --cpu-smoke   # the script's logic, on the CPU

1. Correctness: outputs and every gradient of ``lstmkit.backends.triton`` (and, for scale,
   of the cuDNN backend) against the reference backend in float64, as ‖a − b‖ / ‖b‖, at
   several sizes, with lengths and reverse, in fp32 (TF32 off), TF32 and bf16.
2. Timings (CUDA events, median, contestants interleaved): one layer, input size = hidden,
   forward (no grad) and forward + backward, triton vs ``torch.nn.LSTM`` (cuDNN, same dtype
   and TF32 setting) over hidden x batch x steps, with TF32 off ("fp32") and at torch's
   default flags ("default": cuDNN's RNN and the triton backend in TF32), bf16 where auto
   runs triton, and the tutorial's Python loop over a cell of four nn.Linear at a few cells.
Prints markdown tables (with the card's name); writes ``$OUT/gpu_results.json`` if OUT is set.
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

from lstmkit.backends import cudnn, reference  # noqa: E402
from lstmkit.backends import triton as tb  # noqa: E402

# relative error bounds: fp32 exact math; TF32 (10-bit mantissa) and bf16 (8-bit) inputs to
# every product, compounded over the recurrence; cuDNN's own error is printed beside ours
TOL = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2, "default": 1e-2}
# mode -> (dtype, TF32 for matmuls and cuDNN; None = torch's defaults: matmuls without TF32,
# cuDNN's RNN with it, which lstmkit's triton backend follows as nn.LSTM does)
MODES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "default": (torch.float32, None),
}


def set_tf32(on: bool | None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = True if on is None else on


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_case(T, B, I, H, dtype, dev, lengths, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * scale).to(dev, dtype)

    k = H**-0.5
    tensors = [rnd(T, B, I), rnd(B, H), rnd(B, H), rnd(4 * H, I, scale=k), rnd(4 * H, H, scale=k),
               rnd(4 * H, scale=k), rnd(4 * H, scale=k)]  # fmt: skip
    lens = torch.randint(1, T + 1, (B,), generator=g) if lengths else None
    if lens is not None:
        lens[0] = T
    cot = [torch.randn(T, B, H, generator=g), torch.randn(B, H, generator=g),
           torch.randn(B, H, generator=g)]  # fmt: skip
    return tensors, lens, cot


def run_and_grad(fn, tensors, lens, reverse, cot, dtype):
    ins = [t.detach().to(dtype).requires_grad_() for t in tensors]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = ins
    outs = fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, lens, reverse)
    grads = torch.autograd.grad(
        outs, ins, [c.to(o.device, o.dtype) for c, o in zip(cot, outs, strict=True)]
    )
    return [o.detach() for o in outs] + list(grads)


NAMES = ["out", "h_n", "c_n", "dx", "dh0", "dc0", "dW_ih", "dW_hh", "db_ih", "db_hh"]


def check(sizes, modes, dev, log):
    rows, ok = [], True
    for T, B, I, H, lengths, reverse in sizes:
        for mode in modes:
            dtype, tf32 = MODES[mode]
            set_tf32(tf32)
            tensors, lens, cot = make_case(T, B, I, H, dtype, dev, lengths, seed=T * B + H)
            want = run_and_grad(reference.run, tensors, lens, reverse, cot, torch.float64)
            got = run_and_grad(tb.run, tensors, lens, reverse, cot, dtype)
            errs = {n: rel(a, b) for n, a, b in zip(NAMES, got, want, strict=True)}
            worst = max(errs, key=errs.get)
            err_cudnn = float("nan")
            if dev.type == "cuda":
                ref_c = run_and_grad(cudnn.run, tensors, lens, reverse, cot, dtype)
                err_cudnn = max(rel(a, b) for a, b in zip(ref_c, want, strict=True))
            prec = tb._precision(dtype, dev)
            p = tb._plan(B, H, dtype, dev, prec)
            form = "stepwise" if p["stepwise"] else "persistent+sync" if p["SYNC"] else "persistent"
            plan = (
                f"prec {prec} carry {int(p['CARRY'])} grid {p['grid']} BH {p['BH']} "
                f"BB {p['BB']} BK {p['BK']} res {int(p['W_RES'])} {form}"
            )
            passed = errs[worst] <= TOL[mode]
            ok &= passed
            rows.append(dict(T=T, B=B, I=I, H=H, lengths=lengths, reverse=reverse, mode=mode,
                             max_err=errs[worst], worst=worst, cudnn_err=err_cudnn, plan=plan,
                             passed=passed, errors=errs))  # fmt: skip
            log(f"check T={T} B={B} I={I} H={H} len={int(lengths)} rev={int(reverse)} {mode}: "
                f"max rel err {errs[worst]:.2e} ({worst}), cudnn {err_cudnn:.2e}, {plan} "
                f"-> {'PASS' if passed else 'FAIL'}")  # fmt: skip
    set_tf32(False)
    return rows, ok


class TutorialCell(nn.Module):
    """The tutorial's cell: four nn.Linear on concat(x, h)."""

    def __init__(self, I, H):
        super().__init__()
        self.gates = nn.ModuleList(nn.Linear(I + H, H) for _ in range(4))

    def forward(self, x, h, c):
        z = torch.cat([x, h], dim=1)
        i, f, g, o = (lin(z) for lin in self.gates)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


def tutorial_loop(cell, x, h, c):
    outs = []
    for t in range(x.size(0)):
        h, c = cell(x[t], h, c)
        outs.append(h)
    return torch.stack(outs), h, c


def _time_once(fn, dev) -> float:
    if dev.type == "cuda":
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def timed(fns: dict, dev, target_s=0.25, max_rounds=20, min_rounds=3) -> dict:
    """Median milliseconds of each fn, the contestants interleaved: one warm-up call each
    (which also compiles), then rounds that call every fn once, until ``target_s`` has passed
    (at least ``min_rounds``, at most ``max_rounds``)."""
    for fn in fns.values():
        fn()
    sync(dev)
    times = {k: [] for k in fns}
    t_start = time.perf_counter()
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - t_start < target_s):
        for k, fn in fns.items():
            times[k].append(_time_once(fn, dev))
        rounds += 1
    return {k: statistics.median(v) for k, v in times.items()}


def bench_cell(T, B, H, mode, dev, tutorial=False):
    dtype, tf32 = MODES[mode]
    set_tf32(tf32)
    I = H
    torch.manual_seed(0)
    lstm = nn.LSTM(I, H).to(dev, dtype)
    lstm.flatten_parameters()  # else cuDNN compacts the weights at every call (seen for bf16)
    x = torch.randn(T, B, I, device=dev, dtype=dtype, requires_grad=True)
    h0 = torch.zeros(B, H, device=dev, dtype=dtype, requires_grad=True)
    c0 = torch.zeros(B, H, device=dev, dtype=dtype, requires_grad=True)
    ws = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    cot = [torch.randn(shape, device=dev, dtype=dtype) for shape in ((T, B, H), (B, H), (B, H))]

    def tri_fwd():
        with torch.no_grad():
            tb.run(x, h0, c0, *ws, None, None, False)

    def tri_fb():
        torch.autograd.backward(tb.run(x, h0, c0, *ws, None, None, False), cot)

    def cud_fwd():
        with torch.no_grad():
            lstm(x, (h0[None], c0[None]))

    def cud_fb():
        out, (h, c) = lstm(x, (h0[None], c0[None]))
        torch.autograd.backward([out, h[0], c[0]], cot)

    r = dict(T=T, B=B, H=H, mode=mode)
    t = timed({"triton_fwd_ms": tri_fwd, "cudnn_fwd_ms": cud_fwd}, dev)
    t |= timed({"triton_fb_ms": tri_fb, "cudnn_fb_ms": cud_fb}, dev)
    r.update(t)
    if tutorial:
        cell = TutorialCell(I, H).to(dev, dtype)

        def tut_fwd():
            with torch.no_grad():
                tutorial_loop(cell, x, h0, c0)

        def tut_fb():
            torch.autograd.backward(tutorial_loop(cell, x, h0, c0), cot)

        # the tutorial is slow: three rounds, interleaved with triton again
        t = timed({"tutorial_fwd_ms": tut_fwd, "triton_fwd_ms": tri_fwd}, dev, 0, 3)
        t2 = timed({"tutorial_fb_ms": tut_fb, "triton_fb_ms": tri_fb}, dev, 0, 3)
        r["tutorial_fwd_ms"], r["tutorial_fb_ms"] = t["tutorial_fwd_ms"], t2["tutorial_fb_ms"]
        r["triton_fwd_ms_with_tutorial"] = t["triton_fwd_ms"]
        r["triton_fb_ms_with_tutorial"] = t2["triton_fb_ms"]
    prec = tb._precision(dtype, dev)
    p = tb._plan(B, H, dtype, dev, prec)
    r["plan"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}
    r["plan"]["PREC"] = prec
    set_tf32(False)
    return r


def table(rows) -> str:
    out = ["| mode | hidden | batch | steps | triton fwd ms | cuDNN fwd ms | fwd ratio | "
           "triton fwd+bwd ms | cuDNN fwd+bwd ms | fwd+bwd ratio |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        out.append(f"| {r['mode']} | {r['H']} | {r['B']} | {r['T']} | {r['triton_fwd_ms']:.3f} | "
                   f"{r['cudnn_fwd_ms']:.3f} | {r['triton_fwd_ms'] / r['cudnn_fwd_ms']:.2f} | "
                   f"{r['triton_fb_ms']:.3f} | {r['cudnn_fb_ms']:.3f} | "
                   f"{r['triton_fb_ms'] / r['cudnn_fb_ms']:.2f} |")  # fmt: skip
    return "\n".join(out)


def time_cells(spec: str, dev) -> int:
    """--cells: triton against cuDNN on the given cells only ("default:384:16:1000,..."),
    for placing auto's boundaries between the grid's sizes."""
    results = []
    for item in spec.split(","):
        mode, H, B, T = item.split(":")
        if mode not in MODES:
            raise SystemExit(f"--cells: mode must be one of {', '.join(MODES)}, got {mode!r}")
        results.append(bench_cell(int(T), int(B), int(H), mode, dev, tutorial=False))
        print(f"  {item} done", flush=True)
    print(table(results))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (interpreter)")
    ap.add_argument("--budget", type=float, default=255.0, help="seconds; later timings skipped")
    ap.add_argument("--cells", default=None, help="only time these: mode:H:B:T,... (no check)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    dev = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.cells:
        return time_cells(args.cells, dev)
    lines: list[str] = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    card = "CPU (triton interpreter)" if SMOKE else torch.cuda.get_device_name(dev)
    import triton

    log(f"# lstmkit triton backend: GPU check on {card}")
    log(f"torch {torch.__version__}, triton {triton.__version__}, python {sys.version.split()[0]}")
    if SMOKE:
        sizes = [(4, 3, 4, 8, True, True), (3, 2, 3, 16, False, False)]
        modes = ["fp32"]
        grid = [(H, B, T) for H in (8, 16) for B in (1, 3) for T in (3,)]
        grid_modes = ["fp32"]
        subsets = {"default": [(16, 3, 3)]}
        tut_cells = {(16, 3, 3)}
    else:
        sizes = [(40, 16, 32, 64, False, False), (30, 3, 16, 128, True, True),
                 (30, 64, 64, 256, True, False), (20, 5, 32, 512, False, True),
                 (12, 16, 64, 1024, True, True), (16, 256, 32, 256, False, False),
                 (10, 130, 24, 96, True, False)]  # fmt: skip
        modes = ["fp32", "tf32", "bf16"]
        grid = [(H, B, T) for H in (64, 128, 256, 512, 1024) for B in (1, 16, 64, 256)
                for T in (100, 1000)]  # fmt: skip
        # the whole grid with TF32 off, and at torch's default flags (what users get: cuDNN's
        # RNN and the triton backend in TF32); bf16 where auto runs triton
        grid_modes = ["fp32", "default"]
        subsets = {"bf16": [(H, B, 1000) for H in (256, 512, 1024) for B in (16, 64)]}
        tut_cells = {(256, 16, 1000), (64, 1, 100), (512, 64, 100)}
    log("\n## Correctness (relative error vs the float64 reference)")
    check_rows, ok = check(sizes, modes, dev, log)
    if not SMOKE:  # the one-launch-per-step form, used when the grid cannot be co-resident
        tb._OVERRIDE.update(stepwise=True, sync=False)
        rows2, ok2 = check([(20, 5, 32, 512, True, True)], ["fp32"], dev, log)
        tb._OVERRIDE.clear()
        check_rows += rows2
        ok &= ok2
    log(f"correctness: {'ALL PASS' if ok else 'FAILURES'} ({time.perf_counter() - t_start:.0f} s)")

    results, skipped = [], []
    jobs = [(H, B, T, m) for H, B, T in grid for m in grid_modes]
    jobs += [(H, B, T, m) for m, cells in subsets.items() for H, B, T in cells]
    jobs.sort(key=lambda j: j[0])  # small hidden sizes first: the budget cuts the largest
    for H, B, T, mode in jobs:
        if time.perf_counter() - t_start > args.budget:
            skipped.append((H, B, T, mode))
            continue
        try:
            tut = mode in ("fp32", "default") and (H, B, T) in tut_cells
            r = bench_cell(T, B, H, mode, dev, tutorial=tut)
        except Exception as e:  # report and go on: one failing size must not hide the rest
            log(f"bench H={H} B={B} T={T} {mode}: {type(e).__name__}: {e}")
            continue
        results.append(r)
        tri, cud = (f"{r[k + '_fwd_ms']:.3f}/{r[k + '_fb_ms']:.3f} ms" for k in ("triton", "cudnn"))
        print(f"  bench {mode} H={H} B={B} T={T}: triton {tri}, cudnn {cud}", flush=True)
    log(f"\n## Timings on {card} (median ms; ratio = triton / cuDNN, < 1 means triton is faster)")
    log(
        "fp32: TF32 off for matmuls and cuDNN (triton: 3xTF32 dots); tf32: on for both; "
        "default: torch's defaults (matmuls without, cuDNN's RNN with TF32; triton follows "
        "cuDNN's flag); input size = hidden; one layer; contestants interleaved.\n"
    )
    log(table(results))
    if skipped:
        log(f"\nskipped for the time budget: {skipped}")
    log("\n## Tutorial loop (Python loop over four nn.Linear on concat(x, h))")
    log("Timed in rounds interleaved with triton (the triton columns here are those rounds').\n")
    log("| mode | hidden | batch | steps | tutorial fwd ms | triton fwd ms | speedup | "
        "tutorial fwd+bwd ms | triton fwd+bwd ms | speedup |")  # fmt: skip
    log("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "tutorial_fwd_ms" in r:
            tf, tfb = r["triton_fwd_ms_with_tutorial"], r["triton_fb_ms_with_tutorial"]
            log(
                f"| {r['mode']} | {r['H']} | {r['B']} | {r['T']} | {r['tutorial_fwd_ms']:.2f} | "
                f"{tf:.3f} | {r['tutorial_fwd_ms'] / tf:.1f}x | "
                f"{r['tutorial_fb_ms']:.2f} | {tfb:.3f} | {r['tutorial_fb_ms'] / tfb:.1f}x |"
            )
    log("")
    for mode in MODES:
        small = [r for r in results if r["H"] <= 512 and r["mode"] == mode]
        if small:
            fwd = max(r["triton_fwd_ms"] / r["cudnn_fwd_ms"] for r in small)
            fb = max(r["triton_fb_ms"] / r["cudnn_fb_ms"] for r in small)
            log(f"worst {mode} ratio at hidden <= 512 ({len(small)} cells): forward {fwd:.2f} "
                f"(target <= 1.5), forward+backward {fb:.2f} (target <= 2)")  # fmt: skip
    log(f"total {time.perf_counter() - t_start:.0f} s")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_results.json"), "w") as f:
            meta = dict(card=card, torch=torch.__version__, triton=triton.__version__)
            json.dump(dict(**meta, correctness=check_rows, timings=results, skipped=skipped), f)
        with open(os.path.join(os.environ["OUT"], "gpu_results.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
