"""The forecasting acceptance check: default runs on real series of several frequencies.

For each series shipped with statsmodels (written to CSV files first) this trains the csv
task with only --csv --column --date-column --test-size (CO2 also needs --fill: its weekly
record has gaps) and scores the held-out test part with ``lstmkit backtest`` (one window by
default: the test part itself; --windows K adds earlier origins, --refit retrains for
each). Prints a markdown table (MASE, the 80% intervals' coverage of the test values, training
seconds) and writes JSON.

    python bench/forecast_acceptance.py [--windows K] [--refit] [--out results.json]
        [--flags "--strategy direct"]   (extra train flags, the same for every series)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_series(folder: Path) -> list[dict]:
    """The real series as CSV files in ``folder``: name, file, columns, test size, flags."""
    import statsmodels.api as sm

    out = []

    def save(name, header, rows, test, extra=()):
        p = folder / f"{name}.csv"
        p.write_text(",".join(header) + "\n" + "\n".join(f"{d},{v}" for d, v in rows) + "\n")
        out.append(
            {"name": name, "csv": str(p), "column": header[1], "date": header[0], "test": test}
            | {"extra": list(extra)}
        )

    nile = sm.datasets.nile.load_pandas().data
    save("nile", ("year", "volume"), zip(nile.year.astype(int), nile.volume, strict=True), 10)
    sun = sm.datasets.sunspots.load_pandas().data
    save("sunspots", ("year", "spots"), zip(sun.YEAR.astype(int), sun.SUNACTIVITY, strict=True), 20)
    macro = sm.datasets.macrodata.load_pandas().data
    q = [
        f"{int(y)}-{3 * int(k) - 2:02d}-01" for y, k in zip(macro.year, macro.quarter, strict=True)
    ]
    for col in ("realgdp", "unemp", "cpi"):
        save(f"macro_{col}", ("quarter", col), zip(q, macro[col], strict=True), 8)
    el = sm.datasets.elnino.load_pandas().data
    rows = [
        (f"{int(r.YEAR)}-{m + 1:02d}", r.iloc[m + 1]) for _, r in el.iterrows() for m in range(12)
    ]
    save("elnino", ("month", "temp"), rows, 24)
    from lstmkit.data.csv import read

    air = read("", "passengers", "month")
    save("airline", ("month", "passengers"), zip(air.dates, air.values, strict=True), 24)
    co2 = sm.datasets.co2.load_pandas().data
    rows = [
        (d.strftime("%Y-%m-%d"), "" if np.isnan(v) else v)
        for d, v in zip(co2.index, co2.co2, strict=True)
    ]
    save("co2", ("date", "co2"), rows, 52, ("--fill", "interpolate"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=1)
    ap.add_argument("--refit", action="store_true")
    ap.add_argument("--only", nargs="*", help="series names to run")
    ap.add_argument("--out", default="")
    ap.add_argument("--flags", default="", help="extra train flags for every series")
    ap.add_argument("--keep", default="", help="folder to keep the run directories in")
    args = ap.parse_args(argv)
    from lstmkit.backtest import backtest
    from lstmkit.checkpoint import load_run
    from lstmkit.cli import build_parser, config_from_args
    from lstmkit.train import train

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in write_series(Path(tmp)):
            if args.only and s["name"] not in args.only:
                continue
            flags = ["--task", "csv", "--csv", s["csv"], "--column", s["column"]]
            flags += ["--date-column", s["date"], "--test-size", str(s["test"]), *s["extra"]]
            flags += shlex.split(args.flags)
            cfg = config_from_args(build_parser().parse_args(["train", *flags]))
            t0 = time.perf_counter()
            where = Path(args.keep or tmp) / s["name"]
            train(cfg, where, progress=False, overwrite=where.exists())
            seconds = time.perf_counter() - t0
            run = load_run(where)
            bt = backtest(run, args.windows, refit=args.refit, levels=(80, 95))
            inferred = run.task.meta["inferred"]
            sn = f"seasonal naive ({run.config.data.period})"
            mean = {m: bt.mean(m)["mase"] for m in bt.windows}
            row = {
                "series": s["name"],
                "frequency": inferred["frequency"],
                "values": run.task.meta["values"],
                "test": s["test"],
                "period": run.config.data.period,
                "scaling": run.config.data.scaling,
                "train_s": round(seconds, 1),
                "mase": mean,
                "seasonal_naive": mean.get(sn, mean["naive"]),
                "coverage": bt.coverage,
                "command": "lstmkit train " + " ".join(flags),
            }
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def table(results: list[dict]) -> str:
    """The markdown table: MASE per method, 80% interval coverage, training seconds."""
    cols = ("LSTM", "seasonal naive", "ETS", "Theta", "ARIMA")
    head = "| series | freq | n | H | period | scaling | " + " | ".join(cols)
    lines = [head + " | 80% coverage | train s |", "|---" * (8 + len(cols)) + "|"]
    for r in results:
        vals = [r["mase"]["LSTM"], r["seasonal_naive"]] + [
            r["mase"].get(c, np.nan) for c in cols[2:]
        ]
        lines.append(
            f"| {r['series']} | {r['frequency']} | {r['values']} | {r['test']} | {r['period']} "
            f"| {r['scaling']} | "
            + " | ".join(f"{v:.3f}" for v in vals)
            + f" | {100 * r['coverage']['80']:.1f}% | {r['train_s']} |"
        )
    means = {c: np.mean([r["mase"].get(c, np.nan) for r in results]) for c in cols}
    means["seasonal naive"] = np.mean([r["seasonal_naive"] for r in results])
    cover = np.mean([r["coverage"]["80"] for r in results])
    seconds = sum(r["train_s"] for r in results)
    lines.append(
        "| mean | | | | | | "
        + " | ".join(f"{means[c]:.3f}" for c in cols)
        + f" | {100 * cover:.1f}% | {seconds:.1f} (sum) |"
    )
    beats = sum(r["mase"]["LSTM"] < r["seasonal_naive"] for r in results)
    inside = sum(0.7 <= r["coverage"]["80"] <= 0.9 for r in results)
    lines.append(
        f"\nLSTM beats seasonal naive on {beats} of {len(results)} series; mean MASE LSTM "
        f"{means['LSTM']:.3f} vs ETS {means['ETS']:.3f}; 80% intervals cover 70-90% of the "
        f"test values on {inside} of {len(results)} series (mean {100 * cover:.1f}%)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
