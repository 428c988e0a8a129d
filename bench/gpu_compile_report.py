"""Compile the Triton kernels for a GPU without one, and report registers, spills and shared
memory per work split: the CPU-side check of what the persistent kernels cost on chip.

    python bench/gpu_compile_report.py                # the gpu_check grid, H100 (sm_90, 132 SMs)
    python bench/gpu_compile_report.py --hidden 256 --batch 16 --mode fp32
    python bench/gpu_compile_report.py --arch 89 --sms 58    # an L4 (99 KB shared per block)

Each (hidden, batch, mode) gets the plan ``lstmkit.backends.triton`` would choose on that
GPU; the forward and backward kernels are compiled by Triton for the target and assembled by
the ptxas that ships with Triton (``-v``). A spilling kernel is the first suspect for a slow
one: on an H100, the fp32 (3xTF32) forward at hidden 256 with the weights in registers used
255 registers and spilled 3 KB per thread, and measured 14x slower than cuDNN.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

# Triton 3.9 warns that its FP-fusion default will change; keep the default the GPU runs use
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from lstmkit.backends import _triton_kernels as k  # noqa: E402
from lstmkit.backends import triton as tb  # noqa: E402

# mode -> (dtype, Triton dot precision on the GPU)
MODES = {"fp32": (torch.float32, "tf32x3"), "tf32": (torch.float32, "tf32"),
         "bf16": (torch.bfloat16, "ieee")}  # fmt: skip
_PTR = {torch.float32: "*fp32", torch.bfloat16: "*bf16"}
_VAR_ARGS = ("peep", "lnw", "hmask", "zc", "zh", "cn", "ghat", "chat", "rstd")
_FWD_ARGS = ("gates", "whh", "hs", "cs", "out", "lens", "counter", *_VAR_ARGS, "T", "B", "H",
             "s_begin", "s_end", "clip")  # fmt: skip
_BWD_ARGS = ("gates", "whh", "cs", "dout", "dgates", "dh", "dc", "lens", "counter", *_VAR_ARGS,
             "dgh", "dcout", "T", "B", "H", "s_hi", "s_lo", "clip")  # fmt: skip
_FP32_BUFS = {"cs", "dh", "dc", "peep", "lnw", "zc", "zh", "cn", "ghat", "chat", "rstd", "dcout"}
# the variants' constexpr flags (lstmkit.backends.triton._Variant), by feature name
FLAGS = {"peephole": "PEEP", "layer_norm": "LN", "recurrent_dropout": "HMASK",
         "zoneout": "ZONEOUT", "coupled": "COUPLED", "cell_clip": "CLIP"}  # fmt: skip
_INT_BUFS = {"lens", "counter"}


def _ptxas() -> str:
    d = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):  # the newer one reads the newest PTX
        if os.path.exists(os.path.join(d, name)):
            return os.path.join(d, name)
    raise SystemExit("no ptxas in this triton installation")


def _signature(names, dtype) -> dict:
    sig = {}
    for n in names:
        if n in _INT_BUFS:
            sig[n] = "*i32"
        elif n in _FP32_BUFS:
            sig[n] = "*fp32"
        elif n in ("T", "B", "H", "s_begin", "s_end", "s_hi", "s_lo"):
            sig[n] = "i32"
        elif n == "clip":
            sig[n] = "fp32"
        else:
            sig[n] = _PTR[dtype]
    return sig


def compile_kernel(which: str, plan: dict, dtype, prec: str, arch: int, kernels=k,
                   variants=()) -> dict:  # fmt: skip
    """Registers, spill bytes and shared memory of one kernel for one plan. ``kernels``: the
    module holding the kernels, compiled (not interpreted) ones; ``variants``: feature names
    (lstmkit.variants.FEATURES) whose flags are on (plan layer norm with ``own_all``)."""
    fn = kernels.lstm_fwd_kernel if which == "fwd" else kernels.lstm_bwd_kernel
    names = _FWD_ARGS if which == "fwd" else _BWD_ARGS
    consts = {"REVERSE": False, "SYNC": plan["SYNC"], "HP": plan["HP"], "BH": plan["BH"],
              "BB": plan["BB"], "BK": plan["BK"], "W_RES": plan["W_RES"],
              "CARRY": plan["CARRY"], "PREC": prec}  # fmt: skip
    if which == "fwd":
        consts["STORE"] = True
    consts.update({flag: name in variants for name, flag in FLAGS.items()})
    sig = _signature(names, dtype) | {c: "constexpr" for c in consts}
    src = ASTSource(fn, sig, constexprs=consts)
    opts = {"num_warps": plan["num_warps"], "num_stages": 1}
    ck = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ck.asm["ptx"])
    try:
        sm = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"  # Triton targets 90a on Hopper
        r = subprocess.run([_ptxas(), f"-arch={sm}", "-v", f.name, "-o", os.devnull],
                           capture_output=True, text=True, check=True)  # fmt: skip
    finally:
        os.unlink(f.name)
    text = r.stdout + r.stderr
    regs = int(re.search(r"Used (\d+) registers", text).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"regs": regs, "spill_store": int(spill.group(1)), "spill_load": int(spill.group(2)),
            "shared": ck.metadata.shared}  # fmt: skip


# shared memory one block may opt in to, by compute capability (KB): A100, A10/RTX 30xx,
# L4/L40/RTX 40xx, H100
SMEM_KB = {80: 163, 86: 99, 89: 99, 90: 227}


def report(hidden, batch, modes, arch, sms, smem_kb=None, log=print, variants=()) -> list[dict]:
    smem = (smem_kb or SMEM_KB.get(arch, 99)) * 1024
    rows = []
    log("| mode | hidden | batch | grid | BH | BB | resident | carry | warps | "
        "fwd regs | fwd spill B | bwd regs | bwd spill B | smem KB |")  # fmt: skip
    log("|---|---:|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        dtype, prec = MODES[mode]
        for H in hidden:
            for B in batch:
                own_all = "layer_norm" in variants
                p = tb.plan_split(B, H, dtype, prec, sms, smem=smem, own_all=own_all)
                f = compile_kernel("fwd", p, dtype, prec, arch, variants=variants)
                b = compile_kernel("bwd", p, dtype, prec, arch, variants=variants)
                shared = max(f["shared"], b["shared"])
                r_fits = shared <= smem
                mark = "" if r_fits else " (!)"
                rows.append(dict(mode=mode, H=H, B=B, plan=p, fwd=f, bwd=b, fits=r_fits))
                log(f"| {mode} | {H} | {B} | {p['grid']} | {p['BH']} | {p['BB']} | "
                    f"{'yes' if p['W_RES'] else 'no'} | {'yes' if p['CARRY'] else 'no'} | "
                    f"{p['num_warps']} | {f['regs']} | {f['spill_store']} | {b['regs']} | "
                    f"{b['spill_store']} | {shared // 1024}{mark} |")  # fmt: skip
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--mode", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (H100: 90)")
    ap.add_argument("--sms", type=int, default=132, help="SM count (H100 SXM: 132)")
    ap.add_argument("--smem", type=int, default=None,
                    help=f"shared memory per block, KB (default by arch: {SMEM_KB})")  # fmt: skip
    ap.add_argument(
        "--variants",
        nargs="*",
        choices=list(FLAGS),
        default=[],
        help="compile with these variants on (layer_norm: one program per row)",
    )
    args = ap.parse_args()
    on = f", variants {' '.join(args.variants)}" if args.variants else ""
    print(f"# Triton kernels compiled for sm_{args.arch} ({args.sms} SMs), triton "
          f"{triton.__version__}{on}; spill B = bytes of spill stores per thread\n")  # fmt: skip
    rows = report(args.hidden, args.batch, args.mode, args.arch, args.sms, args.smem,
                  variants=tuple(args.variants))  # fmt: skip
    spilled = [r for r in rows if r["fwd"]["spill_store"] or r["bwd"]["spill_store"]]
    worst = max((max(r["fwd"]["spill_store"], r["bwd"]["spill_store"]) for r in rows), default=0)
    too_big = [r for r in rows if not r["fits"]]
    print(f"\n{len(spilled)} of {len(rows)} plans spill registers (at most {worst} B per thread); "
          f"{len(too_big)} need more shared memory than the card has (!)")  # fmt: skip
    return 1 if too_big else 0


if __name__ == "__main__":
    sys.exit(main())
