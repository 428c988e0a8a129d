"""CPU benchmark of the variants: each one through ``auto`` against plain torch.nn.LSTM (which
has none of them) and against the same variant run by the reference loop.

    python bench/bench_variants.py [--quick] [--out bench/results_variants.json]
    python bench/bench_cpu.py --variants            (the same)

For every variant (and layer norm + recurrent dropout together) and every cell of the grid
(hidden x batch at T steps, input size = hidden size, fp32, one layer), it times training
(forward + backward of a fixed upstream gradient; the model in training mode, so dropout
masks are drawn) and inference (forward under ``torch.inference_mode`` in evaluation mode),
interleaving the contestants round robin in one process like ``bench_cpu.py``. The reference
loop runs only where it takes at most a few seconds. Ratios: auto / nn.LSTM (the price of
the variant over the plain fast LSTM) and reference / auto (the speed-up over writing the
variant as a Python loop). Prints markdown tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu import cpu_name, time_round_robin  # noqa: E402

import lstmkit  # noqa: E402

VARIANTS = {
    "forget_bias": {"forget_bias": 1.0},
    "chrono": {"init": "chrono", "t_max": 100},
    "layer_norm": {"layer_norm": True},
    "peephole": {"peephole": True},
    "coupled": {"coupled": True},
    "recurrent_dropout": {"recurrent_dropout": 0.25},
    "zoneout": {"zoneout": 0.1},
    "weight_drop": {"weight_drop": 0.5},
    "cell_clip": {"cell_clip": 3.0},
    "layer_norm+recurrent_dropout": {"layer_norm": True, "recurrent_dropout": 0.25},
}
# The project's hidden x batch grid at T = 100 steps, and the cell the issue names for the
# reference loop (B = 1, T = 1000, H = 64).
GRID = [(H, B, 100) for H in (16, 64, 256, 1024) for B in (1, 16, 256)] + [(64, 1, 1000)]
REFERENCE_MAX_WORK = 2e8  # T*B*H^2 above this: the reference loop would take too long


def bench_cell(H, B, T, mode, kw, budget_s, min_reps=3, max_reps=100) -> dict:
    """Median seconds of nn.LSTM (plain), auto (variant) and, if small enough, the reference
    loop (variant), interleaved."""
    torch.manual_seed(0)
    models = {"nn.LSTM": nn.LSTM(H, H), "auto": lstmkit.LSTM(H, H, **kw)}
    if T * B * H * H <= REFERENCE_MAX_WORK:
        models["reference"] = lstmkit.LSTM(H, H, backend="reference", **kw)
    for m in models.values():
        m.train(mode == "train")
    x, gout = torch.randn(T, B, H), torch.randn(T, B, H)
    times = time_round_robin(models, x, gout, mode, budget_s, min_reps, max_reps)
    med = {n: statistics.median(v) for n, v in times.items()}
    cell = {"H": H, "B": B, "T": T, "mode": mode, "median_s": med}
    cell["auto_pick"] = models["auto"].backend_choice(x)[0]
    cell["auto_vs_nn"] = med["auto"] / med["nn.LSTM"]
    if "reference" in med:
        cell["reference_vs_auto"] = med["reference"] / med["auto"]
    return cell


def _geo(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def summarize(cells: list[dict]) -> dict:
    out: dict = {}
    for name in VARIANTS:
        for mode in ("train", "infer"):
            rows = [c for c in cells if c["variant"] == name and c["mode"] == mode]
            if not rows:
                continue
            r = [c["auto_vs_nn"] for c in rows]
            s = {"geomean_auto_vs_nn": _geo(r), "max_auto_vs_nn": max(r), "cells": len(r)}
            issue_cell = [c for c in rows if (c["H"], c["B"], c["T"]) == (64, 1, 1000)]
            if issue_cell and "reference_vs_auto" in issue_cell[0]:
                s["reference_vs_auto_H64_B1_T1000"] = issue_cell[0]["reference_vs_auto"]
            out.setdefault(name, {})[mode] = s
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"CPU: {m['cpu']}, torch threads: {m['threads']}, torch {m['torch']}",
        "",
        "| variant | train: auto / nn.LSTM geomean (max) | infer: auto / nn.LSTM geomean (max) "
        "| train: reference / auto at H=64 B=1 T=1000 | infer: same |",
        "|---|---|---|---|---|",
    ]
    for name, modes in result["summary"].items():
        cols = []
        for mode in ("train", "infer"):
            s = modes.get(mode)
            cols.append(f"{s['geomean_auto_vs_nn']:.2f} ({s['max_auto_vs_nn']:.2f})" if s else "-")
        for mode in ("train", "infer"):
            s = modes.get(mode, {})
            x = s.get("reference_vs_auto_H64_B1_T1000")
            cols.append(f"{x:.1f}x" if x else "-")
        lines.append(f"| {name} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def run(grid, names, budget_s, log=print) -> dict:
    cells = []
    t0 = time.perf_counter()
    for name in names:
        for H, B, T in grid:
            for mode in ("train", "infer"):
                cell = bench_cell(H, B, T, mode, VARIANTS[name], budget_s)
                cell["variant"] = name
                cells.append(cell)
                ref = cell.get("reference_vs_auto")
                log(
                    f"{name:28s} {mode:5s} H={H:4d} B={B:3d} T={T:4d} auto/nn="
                    f"{cell['auto_vs_nn']:.2f} ({cell['auto_pick']})"
                    + (f" ref/auto={ref:.1f}" if ref else "")
                    + f"  [{time.perf_counter() - t0:.0f}s]"
                )
    return {
        "machine": {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "settings": {"budget_s": budget_s, "dtype": "float32", "grid": grid},
        "cells": cells,
        "summary": summarize(cells),
        "total_s": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="two small cells, for smoke tests")
    p.add_argument("--out", default="bench/results_variants.json", help="where to write JSON")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per cell and mode")
    p.add_argument("--variants", default=",".join(VARIANTS), help="which, comma-separated")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    grid = [(16, 1, 20), (64, 4, 50)] if args.quick else GRID
    budget = 0.05 if args.quick else args.budget
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = run(grid, names, budget, log)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
