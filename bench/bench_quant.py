"""int8 dynamic quantization (``lstmkit.export.quantize_int8``) against float32 on the CPU.

Speed: forward of one LSTM layer (input size = hidden), T steps, under ``inference_mode``;
contestants float32 ``lstmkit.LSTM`` (backend auto), float32 ``torch.nn.LSTM`` (``to_torch``)
and its int8 dynamic quantization; medians, interleaved round-robin after a warm-up.
Accuracy: max |int8 - float32| over the output, relative to the output's largest value
(random weights at the default init, random input); and, when a trained run exists at
``--run``, its ``predict`` answers in float32 and int8.

    python bench/bench_quant.py [--run runs/counting] [--hidden 32 256 1024] [--batch 1 16]
                                [--threads 1] [--reps 15] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from lstmkit import LSTM
from lstmkit.checkpoint import load_run
from lstmkit.export import quantize_int8
from lstmkit.forecast import predict_steps


def _time(fns: dict, x, reps: int) -> dict:
    for f in fns.values():  # warm-up
        f(x)
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            f(x)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


@torch.inference_mode()
def cell(H: int, B: int, T: int, reps: int) -> dict:
    torch.manual_seed(0)
    ours = LSTM(H, H).eval()
    ref = ours.to_torch().eval()
    q = quantize_int8(ours)
    x = torch.randn(T, B, H)
    want = ours(x)[0]
    err = (q(x)[0] - want).abs().max().item() / want.abs().max().item()
    ms = _time({"lstmkit fp32": ours, "nn.LSTM fp32": ref, "int8 dynamic": q}, x, reps)
    return {"H": H, "B": B, "T": T, "ms": ms, "rel_err": err}


def run_answers(path: str) -> dict | None:
    if not Path(path).is_dir():
        return None
    run = load_run(path)
    q = dataclasses.replace(run, model=quantize_int8(run.model))
    out = {}
    for values in ([5, 6, 7, 8], [1000, 1001, 1002, 1003]):
        key = " ".join(map(str, values))
        out[key] = {"fp32": predict_steps(run, values), "int8": predict_steps(q, values)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/counting")
    p.add_argument("--hidden", type=int, nargs="+", default=[32, 256, 1024])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.ao's notice
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    cells = [cell(H, B, args.steps, args.reps) for H in args.hidden for B in args.batch]
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cells": cells}
    res["run"] = run_answers(args.run)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"torch {res['torch']}, {res['threads']} threads, T={args.steps}", file=sys.stderr)
    print("| H | B | lstmkit fp32 ms | nn.LSTM fp32 ms | int8 ms | int8 / lstmkit | rel. err |")
    print("|---|---|---|---|---|---|---|")
    for c in cells:
        ms = c["ms"]
        ratio = ms["int8 dynamic"] / ms["lstmkit fp32"]
        print(
            f"| {c['H']} | {c['B']} | {ms['lstmkit fp32']:.2f} | {ms['nn.LSTM fp32']:.2f} "
            f"| {ms['int8 dynamic']:.2f} | {ratio:.2f} | {c['rel_err']:.1e} |"
        )
    for key, ans in (res["run"] or {}).items():
        fmt = " ".join
        print(f"predict {key}: fp32 {fmt(f'{v:.2f}' for v in ans['fp32'])}, ", end="")
        print(f"int8 {fmt(f'{v:.2f}' for v in ans['int8'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
