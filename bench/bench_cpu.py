"""CPU benchmark: lstmkit's backends against torch.nn.LSTM and the tutorial's Python loop.

    python bench/bench_cpu.py [--quick] [--out bench/results_cpu.json]
    python bench/bench_cpu.py --cells infer:1024:1:100,train:256:1:1000 --backends native
    python bench/bench_cpu.py --cells both:256:16:100 --backends native,fused --dtype bfloat16
    python bench/bench_cpu.py --variants     (the variants: see bench/bench_variants.py)

``--cells`` (mode:H:B:T, mode infer, train or both) and ``--backends`` time a few cells
against nn.LSTM only, for measuring one change without the whole grid.

Times inference (forward under ``torch.inference_mode``) and training (forward + backward of
a fixed random upstream gradient on the output) for a single-layer, unidirectional fp32 LSTM
with input size = hidden size over hidden x batch x steps. Contestants run interleaved in one
process (round robin per repetition, after a warm-up), so load changes hit all of them alike;
each cell repeats until its time budget is spent (at least ``--min-reps`` times) and reports
medians. Cells too slow for the tutorial loop leave it out; in big cells the backend ``auto``
picks is not timed a second time (it is marked "=auto"); the single largest cell (T=1000,
B=256, H=1024: minutes per repetition, > 10 GB) runs only with ``--full``. Ratios are
ours / nn.LSTM (below 1 is faster), each the median over rounds of the two times measured in
the same round (:func:`paired_ratios`); the summary has their geometric mean and maximum per
backend. Each cell also gets a roofline: the machine's own limits are measured first (peak
GEMM GFLOP/s and copy bandwidth, :func:`probe_machine`), and for nn.LSTM and auto the table
gives the achieved GFLOP/s, whether the cell is compute- or memory-bound, and the share of
the limit reached (:func:`roofline`). Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lstmkit  # noqa: E402
from lstmkit.backends import native  # noqa: E402

HIDDEN, BATCH, STEPS = (16, 64, 256, 1024), (1, 16, 256), (4, 100, 1000)
OURS = ("auto", "fused", "native")
# Cells whose work T*B*H^2 is above these are skipped (the tutorial loop), or trimmed to
# nn.LSTM + auto + the other backend; the largest cell alone would take > 10 minutes.
TUTORIAL_MAX_WORK = 3e9
MAX_WORK = 1e11
ALIAS_WORK = 1e9


class TutorialLSTM(nn.Module):
    """The classic from-scratch LSTM: four nn.Linear gates on concat(x, h), a loop over time."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        n = input_size + hidden_size
        self.input_gate = nn.Linear(n, hidden_size)
        self.forget_gate = nn.Linear(n, hidden_size)
        self.cell_gate = nn.Linear(n, hidden_size)
        self.output_gate = nn.Linear(n, hidden_size)

    def forward(self, x):
        """x (T, B, I) -> (out (T, B, H), (h (B, H), c (B, H)))."""
        h = x.new_zeros(x.size(1), self.hidden_size)
        c = x.new_zeros(x.size(1), self.hidden_size)
        outs = []
        for t in range(x.size(0)):
            z = torch.cat([x[t], h], dim=1)
            i = torch.sigmoid(self.input_gate(z))
            f = torch.sigmoid(self.forget_gate(z))
            g = torch.tanh(self.cell_gate(z))
            o = torch.sigmoid(self.output_gate(z))
            c = f * c + i * g
            h = o * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs), (h, c)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _models(H: int, names: list[str], dtype=torch.float32) -> dict[str, nn.Module]:
    ref = nn.LSTM(H, H).to(dtype)
    models: dict[str, nn.Module] = {}
    for name in names:
        if name == "nn.LSTM":
            models[name] = ref
        elif name == "tutorial":
            models[name] = TutorialLSTM(H, H).to(dtype)
        else:
            m = lstmkit.LSTM(H, H, backend=name).to(dtype)
            m.load_state_dict(ref.state_dict())
            models[name] = m
    return models


def _step(model: nn.Module, x, gout, mode: str) -> float:
    """Seconds for one forward (infer) or forward + backward (train)."""
    if mode == "infer":
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(x)
            return time.perf_counter() - t0
    for p in model.parameters():
        p.grad = None
    t0 = time.perf_counter()
    out = model(x)[0]
    out.backward(gout)
    return time.perf_counter() - t0


def time_round_robin(models, x, gout, mode, budget_s, min_reps, max_reps, warm=None):
    """Seconds of each repetition of each model ({name: [s, ...]}), the models interleaved
    round robin (in a new random order each round) after one warm-up step each (on
    ``warm`` = (x, gout) if given: first-call costs, allocator, oneDNN primitives, extension
    load), until ``budget_s`` is spent and at
    least ``min_reps`` rounds ran; the garbage collector is off meanwhile, since a collection
    inside one contestant's timing would be charged to it."""
    times: dict[str, list[float]] = {n: [] for n in models}
    shuffle = random.Random(0)
    gc.collect()
    gc.disable()
    try:
        wx, wg = warm or (x, gout)
        for m in models.values():
            _step(m, wx, wg, mode)
        start = time.perf_counter()
        for rep in range(max_reps):
            if rep >= min_reps and time.perf_counter() - start > budget_s:
                break
            # A new order each round: a contestant right after another one pays for what that
            # one left behind (measured here: 5-10 us after nn.LSTM at H=16, the same model
            # timed twice differed that much by position), and rotating a fixed order would
            # keep the same neighbours.
            order = list(models.items())
            shuffle.shuffle(order)
            for n, m in order:
                times[n].append(_step(m, x, gout, mode))
    finally:
        gc.enable()
    return times


def bench_cell(
    H, B, T, mode, names, budget_s=2.0, min_reps=3, max_reps=200, seed=0, dtype=torch.float32
) -> dict:
    """Median seconds per contestant for one (H, B, T, mode) cell, interleaved round robin.

    In big cells (T*B*H^2 > ALIAS_WORK, seconds per repetition) the backend ``auto`` picks is
    not timed twice: ``auto`` only dispatches to it, so it gets auto's time, marked "aliased".
    """
    torch.manual_seed(seed)
    models = _models(H, names, dtype)
    x = torch.randn(T, B, H).to(dtype)
    gout = torch.randn(T, B, H).to(dtype)
    big = T * B * H * H > ALIAS_WORK
    aliased = {}
    if big and "auto" in models:
        pick = _choice(models["auto"], x, mode)[0]
        if pick in models:
            aliased[pick] = "auto"
    timed = {n: models[n] for n in names if n not in aliased}
    # A few warm-up steps suffice in big cells; a full repetition would cost seconds.
    warm = (x[:4], gout[:4]) if big else None
    times = time_round_robin(timed, x, gout, mode, budget_s, min_reps, max_reps, warm)
    cell = {"H": H, "B": B, "T": T, "mode": mode}
    cell["median_s"] = {n: statistics.median(v) for n, v in times.items()}
    cell["reps"] = {n: len(v) for n, v in times.items()}
    for n, same in aliased.items():
        cell["median_s"][n], cell["reps"][n] = cell["median_s"][same], cell["reps"][same]
    if aliased:
        cell["aliased"] = aliased
    if "auto" in models:
        cell["auto"] = list(_choice(models["auto"], x, mode))
    if "nn.LSTM" in times:
        cell["ratio"] = paired_ratios(times)
        for n, same in aliased.items():
            cell["ratio"][n] = cell["ratio"][same]
    return cell


def _choice(model, x, mode: str) -> tuple[str, str]:
    """What ``auto`` runs for this cell: asked as the cell runs (inference under
    inference_mode, where bfloat16 goes to another backend than training)."""
    with torch.inference_mode() if mode == "infer" else contextlib.nullcontext():
        return model.backend_choice(x)


def paired_ratios(times: dict[str, list[float]]) -> dict[str, float]:
    """Per contestant, the median over rounds of its time / nn.LSTM's time in the same round.
    Each round runs every contestant once, back to back, so a change in the machine's speed
    between rounds (other tenants, clocks) cancels in the round's ratio; the ratio of the two
    medians would not cancel it (seen here: one cell's medians 175 / 145 ms in one run and
    60 / 93 ms in the next)."""
    base = times["nn.LSTM"]
    return {
        n: statistics.median(a / b for a, b in zip(v, base, strict=True))
        for n, v in times.items()
        if n != "nn.LSTM"
    }


def contestants(H, B, T, with_tutorial=True) -> tuple[list[str], dict[str, str]]:
    """Who runs in a cell, and why anyone is left out."""
    names, skipped = ["nn.LSTM", *OURS], {}
    work = T * B * H * H
    if with_tutorial and work <= TUTORIAL_MAX_WORK:
        names.append("tutorial")
    elif with_tutorial:
        skipped["tutorial"] = f"too slow: T*B*H^2 = {work:.1e} > {TUTORIAL_MAX_WORK:.0e}"
    return names, skipped


def summarize(cells: list[dict]) -> dict:
    """Per mode and backend: geometric mean and max of ratio to nn.LSTM; tutorial speed-ups."""
    out: dict = {}
    for mode in ("infer", "train"):
        rows = [c for c in cells if c["mode"] == mode and "ratio" in c]
        out[mode] = {}
        for n in OURS:
            rs = [c["ratio"][n] for c in rows if n in c["ratio"]]
            if rs:
                geo = math.exp(sum(math.log(r) for r in rs) / len(rs))
                out[mode][n] = {"geomean_ratio": geo, "max_ratio": max(rs), "cells": len(rs)}
        tut = [
            {"H": c["H"], "B": c["B"], "T": c["T"], "speedup": c["median_s"]["tutorial"] / t}
            for c in rows
            if "tutorial" in c["median_s"]
            for t in [c["median_s"]["auto"]]
        ]
        out[mode]["auto_vs_tutorial"] = tut
    return out


def parse_cells(spec: str) -> list[tuple[str, int, int, int]]:
    """ "infer:1024:1:100,both:16:256:1000" -> [(mode, H, B, T), ...]."""
    cells = []
    for item in spec.split(","):
        mode, H, B, T = item.split(":")
        if mode not in ("infer", "train", "both"):
            raise ValueError(f"cell mode must be infer, train or both, got {mode!r}")
        cells.append((mode, int(H), int(B), int(T)))
    return cells


def run_cells(
    cells, backends, budget_s=2.0, min_reps=5, log=print, dtype=torch.float32
) -> list[dict]:
    """Time only the given (mode, H, B, T) cells: nn.LSTM and ``backends``, interleaved (all
    in ``dtype``)."""
    out = []
    for mode, H, B, T in cells:
        for m in ("infer", "train") if mode == "both" else (mode,):
            names = ["nn.LSTM", *backends]
            cell = bench_cell(H, B, T, m, names, budget_s, min_reps, dtype=dtype)
            ratios = " ".join(f"{n}/nn={r:.2f}" for n, r in cell.get("ratio", {}).items())
            log(_line(cell) + "  " + ratios)
            out.append(cell)
    return out


def run(grid, modes=("infer", "train"), budget_s=2.0, min_reps=3, log=print) -> dict:
    """Benchmark every (H, B, T) in ``grid`` for each mode; the JSON-ready result."""
    cells = []
    t0 = time.perf_counter()
    limits = probe_machine()
    peak, bw = limits["peak_gflops"], limits["bandwidth_gbs"]
    cache = limits["cache_gbs"]
    blas = limits["blas_gflops"]
    log(
        f"machine: {peak:.0f} GFLOP/s peak FMA, {blas:.0f} GFLOP/s BLAS GEMM, "
        f"{bw:.1f} GB/s copy, {cache:.0f} GB/s cache"
    )
    for H, B, T in grid:
        if T * B * H * H > MAX_WORK:
            log(f"skip H={H} B={B} T={T}: T*B*H^2 above {MAX_WORK:.0e} (minutes per repetition)")
            cells.append({"H": H, "B": B, "T": T, "mode": "both", "skipped": "too large"})
            continue
        names, skipped = contestants(H, B, T)
        for mode in modes:
            cell = bench_cell(H, B, T, mode, names, budget_s=budget_s, min_reps=min_reps)
            if skipped:
                cell["skipped"] = skipped
            cell["roofline"] = {
                n: roofline(H, B, T, mode, cell["median_s"][n], limits) for n in ("nn.LSTM", "auto")
            }
            cells.append(cell)
            log(_line(cell) + f"  [{time.perf_counter() - t0:.0f}s]")
    return {
        "machine": {
            "cpu": cpu_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "mkldnn_enabled": torch._C._get_mkldnn_enabled(),
            "python": platform.python_version(),
            **limits,
        },
        "settings": {"budget_s": budget_s, "min_reps": min_reps, "dtype": "float32"},
        "cells": cells,
        "summary": summarize(cells),
        "total_s": time.perf_counter() - t0,
    }


def _cache_bytes() -> int:
    """The last-level cache's size (Linux sysfs), or 8 MB where it cannot be read."""
    for level in (3, 2):
        try:
            raw = Path(f"/sys/devices/system/cpu/cpu0/cache/index{level}/size").read_text()
            return int(raw.strip().rstrip("K")) * 1024
        except (OSError, ValueError):
            continue
    return 8 << 20


def probe_machine(seconds: float = 0.5) -> dict:
    """This machine's limits at torch's thread count: peak fp32 GFLOP/s (independent FMA
    chains in registers on every thread, the native extension's ``fma_peak``; where it is
    not built, the best of a large GEMM), the large GEMM's GFLOP/s as torch's BLAS runs it,
    memory bandwidth in GB/s (copying 256 MB, read + write), and the bandwidth of the
    last-level cache (copying a quarter of it over and over)."""

    def best(fn, reps_min=3):
        fn()
        times, start = [], time.perf_counter()
        while len(times) < reps_min or time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    blas_gflops = 2 * n**3 / best(lambda: torch.mm(a, b)) / 1e9
    gflops = blas_gflops
    if native.available():  # the BLAS may not use the widest vectors (MKL on AMD: AVX2)
        ext, threads = native.load(), torch.get_num_threads()
        gflops = max(ext.fma_peak(threads, 5_000_000) for _ in range(3))
    src = torch.ones(64 << 20)
    dst = torch.empty_like(src)
    gbs = 2 * src.numel() * 4 / best(lambda: dst.copy_(src)) / 1e9
    cache = _cache_bytes()
    small, small_dst = torch.ones(cache // 32), torch.empty(cache // 32)  # 1/8 of it each

    def copies():
        for _ in range(16):
            small_dst.copy_(small)

    cache_gbs = 16 * 2 * small.numel() * 4 / best(copies) / 1e9
    return {
        "peak_gflops": gflops,
        "blas_gflops": blas_gflops,
        "bandwidth_gbs": gbs,
        "cache_bytes": cache,
        "cache_gbs": cache_gbs,
    }


def roofline(H: int, B: int, T: int, mode: str, seconds: float, limits: dict) -> dict:
    """What one cell asks of the machine and how close ``seconds`` comes to its limit.

    Work: the GEMM flops, 2·B·4H·(I + H) per step forward (I = H here), three times that to
    train (forward, the gradients of the inputs and states, and of the weights). Traffic per
    step, a lower bound: weight_hh read once (every step re-reads it: from the last-level
    cache at its bandwidth when it fits there, else from memory), and from memory the gates
    written and read back and h and c (4 bytes each; all twice to train). The bound is the
    larger of work / peak and traffic time; "of limit" is bound / time.
    """
    G = 4 * H
    passes = 2 if mode == "train" else 1
    flops = 2 * B * G * (2 * H) * T * (3 if mode == "train" else 1)
    weight_bytes = G * H * 4 * T * passes
    act_bytes = (2 * B * G + 4 * B * H) * 4 * T * passes
    fits = limits.get("cache_bytes", 0) >= G * H * 4
    weight_bw = limits["cache_gbs"] if fits else limits["bandwidth_gbs"]
    compute_s = flops / (limits["peak_gflops"] * 1e9)
    memory_s = weight_bytes / (weight_bw * 1e9) + act_bytes / (limits["bandwidth_gbs"] * 1e9)
    return {
        "gflops": flops / seconds / 1e9,
        "gbs": (weight_bytes + act_bytes) / seconds / 1e9,
        "bound": "compute" if compute_s >= memory_s else "memory",
        "of_limit": max(compute_s, memory_s) / seconds,
    }


def _line(c: dict) -> str:
    ms = " ".join(f"{n}={t * 1e3:.3g}ms" for n, t in c["median_s"].items())
    return f"{c['mode']:5s} H={c['H']:4d} B={c['B']:3d} T={c['T']:4d}  {ms}"


def markdown(result: dict) -> str:
    """The result as a markdown table (times in ms, ratios ours / nn.LSTM) plus a summary."""
    m = result["machine"]
    lines = [
        f"CPU: {m['cpu']}, torch threads: {m['threads']}, torch {m['torch']}"
        + (
            f"; measured limits: {m['peak_gflops']:.0f} GFLOP/s (FMA peak; torch's BLAS "
            f"GEMM {m.get('blas_gflops', 0):.0f}), "
            f"{m['bandwidth_gbs']:.1f} GB/s (memory copy), "
            f"{m.get('cache_gbs', 0):.0f} GB/s (last-level cache copy)"
            if "peak_gflops" in m
            else ""
        ),
        "",
        "| mode | H | B | T | nn.LSTM ms | auto (pick) ms | fused ms | native ms | tutorial ms "
        "| auto/nn | fused/nn | native/nn | bound | nn.LSTM of limit | auto of limit "
        "| auto GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        if "median_s" not in c:
            lines.append(
                f"| {c['mode']} | {c['H']} | {c['B']} | {c['T']} | skipped: "
                f"{c.get('skipped')} |||||||||"
            )
            continue
        t, r = c["median_s"], c.get("ratio", {})
        pick = c.get("auto", ["?"])[0]
        tut = f"{t['tutorial'] * 1e3:.3g}" if "tutorial" in t else "-"
        al = c.get("aliased", {})
        ms = {n: f"{t[n] * 1e3:.3g}" + (" (=auto)" if n in al else "") for n in OURS}
        lines.append(
            f"| {c['mode']} | {c['H']} | {c['B']} | {c['T']} | {t['nn.LSTM'] * 1e3:.3g} "
            f"| {ms['auto']} ({pick}) | {ms['fused']} | {ms['native']} "
            f"| {tut} | {r['auto']:.2f} | {r['fused']:.2f} | {r['native']:.2f} |" + _roof_cols(c)
        )
    lines += [
        "",
        "| mode | backend | geomean ours/nn.LSTM | max | cells |",
        "|---|---|---|---|---|",
    ]
    for mode in ("infer", "train"):
        for n in OURS:
            s = result["summary"].get(mode, {}).get(n)
            if s:
                lines.append(
                    f"| {mode} | {n} | {s['geomean_ratio']:.3f} | {s['max_ratio']:.2f} "
                    f"| {s['cells']} |"
                )
    for mode in ("infer", "train"):
        for s in result["summary"].get(mode, {}).get("auto_vs_tutorial", []):
            if s["B"] == 1 and s["T"] == 1000 and s["H"] == 64:
                lines.append(
                    f"\nauto vs tutorial loop, {mode}, H=64 B=1 T=1000: {s['speedup']:.1f}x faster"
                )
    return "\n".join(lines)


def _roof_cols(c: dict) -> str:
    rl = c.get("roofline")
    if not rl:
        return " - | - | - | - |"
    nn_, au = rl["nn.LSTM"], rl["auto"]
    return f" {au['bound']} | {nn_['of_limit']:.0%} | {au['of_limit']:.0%} | {au['gflops']:.1f} |"


def quick_grid() -> list[tuple[int, int, int]]:
    """The --quick subset: small enough for a smoke test of the whole script."""
    return [(H, B, T) for H in (16, 64) for B in (1, 16) for T in (4, 100)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny grid, for smoke tests")
    p.add_argument("--out", default="bench/results_cpu.json", help="where to write the JSON")
    p.add_argument("--budget", type=float, default=None, help="seconds per cell and mode")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--full", action="store_true", help="also the largest cell (many minutes)")
    p.add_argument("--cells", default=None, help="only these cells: mode:H:B:T,... (no JSON)")
    p.add_argument("--backends", default="native", help="with --cells: ours to time, a,b,...")
    p.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="with --cells"
    )
    p.add_argument(
        "--variants", action="store_true", help="the variants instead (bench/bench_variants.py)"
    )
    args = p.parse_args(argv)
    if args.variants:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_variants import main as variants_main

        extra = ["--quick"] if args.quick else []
        if args.threads:
            extra += ["--threads", str(args.threads)]
        return variants_main(
            extra + ([] if args.budget is None else ["--budget", str(args.budget)])
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cells:
        budget = 2.0 if args.budget is None else args.budget
        dtype = getattr(torch, args.dtype)
        cells = parse_cells(args.cells)
        run_cells(cells, args.backends.split(","), budget, max(args.min_reps, 5), dtype=dtype)
        return 0
    global MAX_WORK
    if args.full:
        MAX_WORK = math.inf
    if args.quick:
        grid = quick_grid()
        budget = 0.2 if args.budget is None else args.budget
    else:
        grid = [(H, B, T) for H in HIDDEN for B in BATCH for T in STEPS]
        budget = 1.5 if args.budget is None else args.budget
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    result = run(grid, budget_s=budget, min_reps=args.min_reps, log=log)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
