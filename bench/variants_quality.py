"""Do the LSTM variants help? Two small, equal-budget comparisons over three seeds.

    python bench/variants_quality.py [--text FILE] [--out bench/variants_quality.json]
    python bench/variants_quality.py --quick          # a smoke run of a few seconds

(a) Text (character-level language model, the first ``--chars`` characters of ``--text``):
    recurrent dropout, weight drop and zoneout against no regularisation, each for the same
    number of epochs (lstmkit has no wall-clock budget option, so the budget is equal epochs
    and the seconds are reported beside). All text runs use the ``fused`` backend, so the
    seconds compare the variants, not backends. Reported: the best validation bits per char.
(b) The adding problem at T = 200 and T = 400: ``init="chrono"`` (t_max = T) and
    ``forget_bias=1`` against torch's uniform init, for a fixed number of steps. Reported:
    the test MSE of the kept (best validation) model, and the step and seconds at which the
    validation MSE first fell below 0.01 (checked at epoch ends), if it did.

The variant settings are the papers' (Gal: recurrent dropout 0.25; Merity: weight drop 0.5;
Krueger, character level: zoneout c 0.5, h 0.05), not tuned here. Every run trains through
``lstmkit.train.train`` into a temporary directory; the script prints markdown tables and
writes everything (per-seed values, machine, load average) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lstmkit.checkpoint import load_run  # noqa: E402
from lstmkit.config import from_dict  # noqa: E402
from lstmkit.evaluate import evaluate  # noqa: E402
from lstmkit.train import train  # noqa: E402

SHARED_TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
TEXT_VARIANTS = {
    "none": {},
    "recurrent dropout 0.25": {"recurrent_dropout": 0.25},
    "weight drop 0.5": {"weight_drop": 0.5},
    "zoneout 0.5,0.05": {"zoneout": [0.5, 0.05]},
}
INITS = {
    "uniform (default)": {},
    "chrono (t_max = T)": {"init": "chrono"},
    "forget bias 1": {"forget_bias": 1.0},
}
FULL = {
    "text": {
        "model": {"hidden_size": 128, "embedding_dim": 32, "backend": "fused"},
        "data": {"length": 64, "num_train": 4096},
        "train": {"epochs": 3, "batch_size": 32, "lr": 0.005},
    },
    # adding: a smaller model than the task's default (H 64, batch 50), for ~5x more steps in
    # the same time; num_train / batch_size = 100 steps per epoch, 20 epochs at each T
    "adding": {
        "model": {"hidden_size": 32},
        "data": {"num_train": 3200, "num_val": 500, "num_test": 1000},
        "train": {"batch_size": 32, "lr": 0.01},
    },
    "adding_epochs": {200: 20, 400: 20},
    "chars": 100_000,
}
QUICK = {
    "text": {
        "model": {"hidden_size": 16, "embedding_dim": 8, "backend": "fused"},
        "data": {"length": 16, "num_train": 64},
        "train": {"epochs": 1, "batch_size": 32, "lr": 0.005},
    },
    "adding": {
        "model": {"hidden_size": 8},
        "data": {"num_train": 64, "num_val": 32, "num_test": 32},
        "train": {"batch_size": 32, "lr": 0.02},
    },
    "adding_epochs": {20: 1, 40: 1},
    "chars": 5_000,
}


def _config(base: dict, **sections) -> dict:
    names = ("model", "data", "train", "text")
    return {
        s: {**base.get(s, {}), **sections.get(s, {})} for s in names if s in base or s in sections
    }


def _train(cfg: dict, tmp: Path, name: str):
    out = tmp / name
    t0 = time.perf_counter()
    res = train(from_dict(cfg), out, progress=False)
    wall = time.perf_counter() - t0
    return out, res, wall, _read_metrics(out / "metrics.csv")


def _read_metrics(path: Path) -> list[dict]:
    lines = path.read_text().strip().splitlines()
    keys = lines[0].split(",")
    return [dict(zip(keys, map(float, line.split(",")), strict=True)) for line in lines[1:]]


def run_text(spec: dict, text: Path, seeds, tmp: Path) -> list[dict]:
    rows = []
    for name, variant in TEXT_VARIANTS.items():
        for seed in seeds:
            cfg = _config(
                spec["text"],
                model=variant,
                data={"task": "text"},
                text={"file": str(text)},
                train={"seed": seed},
            )
            _, res, wall, history = _train(cfg, tmp, f"text-{len(rows)}")
            row = {
                "variant": name,
                "seed": seed,
                "val_bpc": res.best_val_loss / math.log(2),
                "train_bpc_last_epoch": history[-1]["train_loss"] / math.log(2),
                "steps": int(history[-1]["step"]),
                "seconds": wall,
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def run_adding(spec: dict, seeds, tmp: Path) -> list[dict]:
    rows = []
    for T, epochs in spec["adding_epochs"].items():
        for name, variant in INITS.items():
            for seed in seeds:
                cfg = _config(
                    spec["adding"],
                    model=variant,
                    data={"task": "adding", "length": T},
                    train={"seed": seed, "epochs": epochs},
                )
                out, res, wall, history = _train(cfg, tmp, f"add-{len(rows)}")
                hit = next((r for r in history if r["val_loss"] < 0.01), None)
                test_mse = evaluate(load_run(out)).rows["model"]["mse"]
                row = {
                    "T": T,
                    "init": name,
                    "seed": seed,
                    "test_mse": test_mse,
                    "best_val_mse": res.best_val_loss,
                    "steps": int(history[-1]["step"]),
                    "step_below_0.01": None if hit is None else int(hit["step"]),
                    "seconds_below_0.01": None if hit is None else hit["seconds"],
                    "seconds": wall,
                }
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    return rows


def _spread(values, fmt: str = ".3f") -> str:
    """mean ± standard deviation over seeds (sample sd)."""
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:{fmt}} ± {sd:{fmt}}"


def _groups(rows, *keys):
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def text_table(rows) -> str:
    lines = [
        "| variant | val bits/char per seed | mean ± sd | train bits/char (last epoch) "
        "| steps | seconds per run (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for (name,), rs in _groups(rows, "variant").items():
        per_seed = " / ".join(f"{r['val_bpc']:.3f}" for r in rs)
        train_bpc = statistics.fmean(r["train_bpc_last_epoch"] for r in rs)
        secs = statistics.fmean(r["seconds"] for r in rs)
        lines.append(
            f"| {name} | {per_seed} | {_spread([r['val_bpc'] for r in rs])} | {train_bpc:.3f} "
            f"| {rs[0]['steps']} | {secs:.0f} |"
        )
    return "\n".join(lines)


def adding_table(rows) -> str:
    lines = [
        "| T | init | test MSE per seed | mean ± sd | val MSE < 0.01 at step (s) | steps "
        "| seconds per run (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for (T, name), rs in _groups(rows, "T", "init").items():
        per_seed = " / ".join(f"{r['test_mse']:.4f}" for r in rs)
        hits = " / ".join(
            "not reached"
            if r["step_below_0.01"] is None
            else f"{r['step_below_0.01']} ({r['seconds_below_0.01']:.0f})"
            for r in rs
        )
        secs = statistics.fmean(r["seconds"] for r in rs)
        lines.append(
            f"| {T} | {name} | {per_seed} | {_spread([r['test_mse'] for r in rs], '.4f')} | {hits} "
            f"| {rs[0]['steps']} | {secs:.0f} |"
        )
    return "\n".join(lines)


def report(result: dict) -> str:
    """The markdown tables and the machine line of a result."""
    m, load = result["machine"], result["load_average_1_5_15"]
    return "\n".join(
        [
            # results written before text_file was recorded used the default --text
            f"(a) text, first {result['text_chars']} characters of "
            f"{Path(result.get('text_file', SHARED_TEXT)).name}",
            "",
            text_table(result["text"]),
            "",
            "(b) adding problem",
            "",
            adding_table(result["adding"]),
            "",
            f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} "
            f"thread(s); load average (1 min) {load['start'][0]:.1f} at start, "
            f"{load['end'][0]:.1f} at end; {result['total_seconds'] / 60:.1f} min in all",
        ]
    )


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def warm_up(text: Path, tmp: Path) -> None:
    """One tiny untimed run of each part first: the native extension's load (or compile) and
    the first-use imports would otherwise land in the first timed run."""
    from lstmkit.backends import native

    native.available()
    quick = {**QUICK, "adding_epochs": {20: 1}}
    with open(os.devnull, "w") as devnull:
        stderr, sys.stderr = sys.stderr, devnull
        try:
            run_text(quick, text, [0], tmp / "warm")
            run_adding(quick, [0], tmp / "warm")
        finally:
            sys.stderr = stderr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", type=Path, default=SHARED_TEXT, help="text file for part (a)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--tables", type=Path, help="print the tables of a saved JSON result; no runs")
    args = p.parse_args(argv)
    if args.tables:
        print(report(json.loads(args.tables.read_text())))
        return 0
    spec = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    if not args.text.is_file():
        p.error(f"text file {args.text} does not exist (pass --text FILE)")
    with tempfile.TemporaryDirectory(prefix="variants_quality.") as tmp:
        tmp = Path(tmp)
        text = tmp / "text.txt"
        text.write_text(args.text.read_text(encoding="utf-8")[: spec["chars"]], encoding="utf-8")
        warm_up(text, tmp)
        started, load_before = time.perf_counter(), os.getloadavg()
        text_rows = run_text(spec, text, args.seeds, tmp)
        load_mid = os.getloadavg()
        adding_rows = run_adding(spec, args.seeds, tmp)
    result = {
        "command": " ".join(["python", "bench/variants_quality.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "load_average_1_5_15": {"start": load_before, "between": load_mid, "end": os.getloadavg()},
        "total_seconds": time.perf_counter() - started,
        "spec": {k: v for k, v in spec.items() if k != "adding_epochs"}
        | {"adding_epochs": {str(k): v for k, v in spec["adding_epochs"].items()}},
        "text_file": str(args.text),
        "text_chars": spec["chars"],
        "text": text_rows,
        "adding": adding_rows,
    }
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
