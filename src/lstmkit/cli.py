"""The ``lstmkit`` command: parse, call the library, print. Results go to stdout, progress to
stderr, and every error to stderr as one line with a non-zero exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys

from lstmkit import __version__
from lstmkit.cli_errors import failure
from lstmkit.cli_flags import NUMBER, add_config_flags, float_in, int_in, path_arg, shown, text
from lstmkit.cli_paths import resolve
from lstmkit.config import SECTIONS, RunConfig, flag_of, from_dict, load_toml
from lstmkit.errors import DataError, LstmkitError
from lstmkit.limits import (
    FLOAT32_MAX,
    MAX_CHARS,
    MAX_HORIZON,
    MAX_SEED,
    MAX_STEP,
    MAX_TEMPERATURE,
    MAX_WINDOWS,
    MIN_TEMPERATURE,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        # argparse says "argument --x: must be ..."; the typed flags read "--x must be ..."
        message = re.sub(r"^argument ([^:]+): must ", r"\1 must ", message)
        if re.match(r"unrecognized arguments: -[0-9.]", message):  # -1e3 reads as a flag
            message += "; put -- before values that start with a minus: -- -1e3 5"
        raise LstmkitError(f"{self.prog}: {message} (see --help)")


# The metavar and help of config flags that need more than their type and default (the
# default is added to every flag's help; a choice field shows its choices).
HELP = {
    "dropout": ("P", "dropout between LSTM layers (needs --num-layers 2 or more)"),
    "backend": ("NAME", "a backend's name, or auto: the fastest for the device and size"),
    "forget_bias": ("FLOAT", "added to the forget gate's bias at initialisation"),
    "init": ("uniform|chrono", "chrono sets the forget/input biases from t_max"),
    "t_max": ("STEPS", "chrono's longest dependency (default: the training window, data.length)"),
    "layer_norm": ("BOOL", "layer-normalised gates and cell (a switch)"),
    "peephole": ("BOOL", "peephole connections from the cell to i, f, o (a switch)"),
    "coupled": ("BOOL", "coupled input and forget gates, f = 1 - i (a switch)"),
    "recurrent_dropout": ("P", "dropout on h_{t-1}, one mask per sequence"),
    "zoneout": ("Z|Z_C,Z_H", "keep the previous c and h with these probabilities"),
    "weight_drop": ("P", "DropConnect on the recurrent weights, per forward"),
    "cell_clip": ("FLOAT", "clip the cell state to [-FLOAT, FLOAT] (default: no clipping)"),
    "csv": ("FILE", "csv task: the series file (default: the packaged airline series)"),
    "text": ("FILE", "text task: a UTF-8 text file"),
}


def config_from_args(args) -> RunConfig:
    """The run config: defaults, then ``--config``, then the flags given (already typed)."""
    cfg = load_toml(args.config) if args.config else RunConfig()
    overrides: dict[str, dict] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = getattr(args, f"{section}.{f.name}")
            if value is not None:
                overrides.setdefault(section, {})[f.name] = value
    return from_dict(overrides, cfg, source="command line")


def _numbers(raw: list[str]) -> list[float]:
    """Values given on the command line or stdin as floats: plain ASCII numbers only (no
    "1_000", no non-ASCII digits); nan and inf pass here and are refused by the check of
    the values that names them."""
    vals = []
    for r in raw:
        s = r.strip()
        if not (NUMBER.fullmatch(s) or s.lower().lstrip("+-") in ("nan", "inf", "infinity")):
            raise DataError(f"values must be numbers, got {shown(r)}")
        v = float(s)
        if math.isfinite(v) and abs(v) > FLOAT32_MAX:  # would be inf inside the model
            raise DataError(
                f"values must be within float32's range (|v| <= {FLOAT32_MAX:.4g}), got {v:g}"
            )
        vals.append(v)
    return vals


def cmd_train(args) -> int:
    from lstmkit.distributed import env_rank
    from lstmkit.train import train

    if args.resume:
        given = [k.split(".", 1) for k, v in vars(args).items() if "." in k and v is not None]
        if args.config or given:
            flag = "--config" if args.config else "--" + flag_of(*given[0])
            raise LstmkitError(
                f"--resume continues a run with its saved config; got {flag} as well "
                "(start a new run with --out, or replace it with --overwrite)"
            )
    cfg = config_from_args(args)
    out = args.out or f"runs/{cfg.data.task}"
    res = train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if env_rank() != 0:  # under torchrun, rank 0 reports for every rank
        return 0
    stop = " (stopped early)" if res.stopped_early else ""
    from lstmkit.checkpoint import CONFIG

    saved = json.loads((res.path / CONFIG).read_text())
    _print_inferred(saved)
    task = saved["config"]["data"]["task"]  # --resume: the run's own, not the flags' default
    print(
        f"trained {task}: {res.epochs} epochs{stop}, train loss {res.train_loss:.3g}, "
        f"validation loss {res.val_loss:.3g} (best {res.best_val_loss:.3g}), "
        f"{res.seconds:.1f} s -> {res.path}"
    )
    return 0


def _print_inferred(saved: dict) -> None:
    """What a csv run learned about its series (frequency, period, scaling), one line, from
    its config.json (``saved``)."""
    from lstmkit.data.csv import describe

    meta = saved["task"].get("meta", {})
    line = describe(meta) if isinstance(meta, dict) else ""
    if line:
        print(line)


def cmd_predict(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.forecast import forecast, predict_steps
    from lstmkit.multistep import uses_rows

    if args.stream:
        return _stream(args)
    target = resolve(args.out, None, "forecast.csv", None)  # checked before any work
    if args.onnx:
        from lstmkit.export import load_onnx_run

        run = load_onnx_run(args.onnx)
    else:
        run = load_run(args.run)
    if args.id is not None and not (run.config.data.task == "csv" and run.config.csv.id_column):
        raise DataError("--id picks a series of a run of many series (--id-column); not this run")
    if uses_rows(run):  # covariates or many series: the context is a CSV file
        return _predict_rows(run, args, target)
    values = _numbers(args.values)
    dates = None
    if args.csv is not None or (not values and run.config.data.task == "csv"):
        values, dates = _csv_context(run, args.csv or run.config.csv.file, values)
    if (args.level or target) and args.horizon is None:
        args.horizon = run.config.csv.horizon or 1  # intervals and --out are for forecasts
    if args.horizon is not None:
        pred = forecast(run, values, args.horizon)
        if args.level or target:
            return _forecast_out(run, pred, args, dates, target, values)
    else:
        pred = predict_steps(run, values)
    # None: no prediction at that step (seasonal scaling, first period): null / "-"
    print(
        json.dumps(pred) if args.json else " ".join("-" if v is None else f"{v:.2f}" for v in pred)
    )
    return 0


def _predict_rows(run, args, target) -> int:
    """predict for a run with covariates or many series: the context, its covariates and
    the horizon's future rows from --csv FILE (default: the run's training file); --id
    picks one series of a many-series run (default: every one)."""
    from lstmkit.multistep import context_series, series_forecasts

    if args.values:
        raise DataError(
            "this run reads covariates or many series: give the context as --csv FILE "
            "(the run's columns, and rows after the last value holding its future features)"
        )
    c = run.config.csv
    scales = run.task.meta.get("series_scale") or {"": 1.0}
    if args.id is not None and args.id not in scales:
        raise DataError(f"--id {args.id!r} is not a series of this run (ids: {', '.join(scales)})")
    horizon, rows = args.horizon or c.horizon, []
    for key in list(scales) if args.id is None else [args.id]:
        s, f = context_series(run, args.csv or c.file, key)
        fc = series_forecasts(run, s, horizon)[0]
        rows.append((key, s.dates, fc.double() * f, f, fc.tolist(), s.values))
    if not c.id_column:
        key, dates, fc, _, _, context = rows[0]
        if args.level or target:
            return _forecast_out(run, fc.tolist(), args, dates, target, context)
        print(json.dumps(fc.tolist()) if args.json else " ".join(f"{v:.2f}" for v in fc))
        return 0
    return _panel_out(run, rows, args, target)


def _panel_out(run, rows, args, target) -> int:
    """Forecasts of many series as rows: id, date, forecast[, lo_L, hi_L ...] (printed,
    --json, or written to --out)."""
    from lstmkit.checkpoint import atomic_write
    from lstmkit.forecast import intervals

    table = {"id": [], "date": [], "forecast": []}
    for lv in args.level or []:
        table[f"lo_{lv:g}"], table[f"hi_{lv:g}"] = [], []
    for key, dates, fc, f, relative, context in rows:
        table["id"] += [key] * len(fc)
        table["date"] += _forecast_dates(run, dates, len(fc))
        table["forecast"] += fc.tolist()
        for lv in args.level or []:
            lo, hi = intervals(run, relative, lv, context)  # widths from this series' scale
            table[f"lo_{lv:g}"] += (lo * f).tolist()
            table[f"hi_{lv:g}"] += (hi * f).tolist()
    text = [",".join(table)] + [
        ",".join(str(v) if isinstance(v, str) else f"{v:.6g}" for v in row)
        for row in zip(*table.values(), strict=True)
    ]
    if target:
        with target.writing() as path:
            atomic_write(path, ("\n".join(text) + "\n").encode())
        target.written()
        print(f"{len(table['id'])} forecasts of {len(rows)} series -> {target.file}")
    elif args.json:
        print(json.dumps(table))
    else:
        print("\n".join(text))
    return 0


def _stream(args) -> int:
    """predict --stream: one value per stdin line, its prediction printed at once."""
    from lstmkit.checkpoint import load_run
    from lstmkit.multistep import is_direct
    from lstmkit.streaming import Stream

    for flag, given in (("VALUES", args.values), ("--horizon", args.horizon is not None)):
        if given:
            raise LstmkitError(f"--stream reads its values from stdin; got {flag} as well")
    for flag, given in (("--csv", args.csv), ("--onnx", args.onnx)):
        if given:
            raise LstmkitError(f"--stream runs a run directory (--run); got {flag} as well")
    run = load_run(args.run)
    if is_direct(run):
        raise DataError(
            "--stream predicts one step after each value; this run forecasts "
            f"{run.task.output_size} steps at once (--strategy direct): use --horizon"
        )
    stream = Stream(run)
    for line in iter(sys.stdin.readline, ""):
        if line.strip():
            p = stream.push(_numbers([line.strip()])[0])
            print(json.dumps(p) if args.json else "-" if p is None else f"{p:.2f}", flush=True)
    return 0


def cmd_export(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.export import export_run

    target = resolve(args.out, args.onnx, "model.onnx", "--onnx")
    run = load_run(args.run)
    if target is None:
        print(export_run(run, lengths=args.lengths))
        return 0
    with target.writing() as path:
        print(export_run(run, path, lengths=args.lengths))
    target.written()
    return 0


def _forecast_out(run, pred: list[float], args, dates, target, context) -> int:
    """Forecasts with their intervals (--level, as wide as ``context``'s local scale: the
    values the forecast started from), printed and/or written (--out) as dated rows: date,
    forecast[, lo_L, hi_L ...]."""
    from lstmkit.checkpoint import atomic_write
    from lstmkit.forecast import intervals

    cols = {"forecast": pred}
    for lv in args.level or []:
        lo, hi = intervals(run, pred, lv, context)
        cols[f"lo_{lv:g}"], cols[f"hi_{lv:g}"] = lo.tolist(), hi.tolist()
    when = _forecast_dates(run, dates, len(pred))
    if target:
        lines = ["date," + ",".join(cols)]
        lines += [
            ",".join([d] + [f"{c[i]:.6g}" for c in cols.values()]) for i, d in enumerate(when)
        ]
        with target.writing() as path:
            atomic_write(path, ("\n".join(lines) + "\n").encode())
        target.written()
    if args.json:
        print(json.dumps({"date": when, **cols}))
    elif not target:
        for i, d in enumerate(when):
            print(d, " ".join(f"{c[i]:.2f}" for c in cols.values()))
    else:
        print(f"{len(pred)} forecasts -> {target.file}")
    return 0


def _forecast_dates(run, dates, n: int) -> list[str]:
    """The dates of the ``n`` steps after the context, or "1".."n" when it has none."""
    from lstmkit import timeseries as ts

    meta = run.task.meta
    step_s, freq = meta.get("step_s"), meta.get("inferred", {}).get("frequency")
    if not (dates and step_s):
        return [str(k) for k in range(1, n + 1)]
    last = ts.parse_date(dates[-1], "the context's last date")
    return [ts.format_like(ts.add_steps(last, freq, step_s, k), dates[-1]) for k in range(1, n + 1)]


def cmd_plot(args) -> int:
    from lstmkit.plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def cmd_inspect(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.plots import GATES_PNG, plot_inspect

    if args.png is not None and not args.png.lower().endswith(".png"):
        raise LstmkitError(f"--png must name a .png file, got {shown(args.png)}")
    target = resolve(args.out, args.png, GATES_PNG, "--png")
    values = _numbers(args.values)
    run = load_run(args.run)
    if target is None:
        print(plot_inspect(run, values))
        return 0
    with target.writing() as path:
        print(plot_inspect(run, values, path))
    target.written()
    return 0


def _csv_context(run, path: str, values: list[float]):
    """(values, dates) of the run's column of CSV file ``path``: the context to predict from;
    dates [] when the run has no date column."""
    from lstmkit.data.csv import read

    if run.config.data.task != "csv":
        raise DataError(f"--csv takes a run of the csv task, got one of {run.config.data.task!r}")
    if values:
        raise DataError("give the context either as values or as --csv FILE, not both")
    meta = run.task.meta
    s = read(path, meta["column"], meta.get("date_column", ""), run.config.csv.fill)
    return s.values, s.dates


def cmd_backtest(args) -> int:
    from lstmkit.backtest import backtest
    from lstmkit.checkpoint import load_run

    bt = backtest(load_run(args.run), args.windows, args.step, args.refit, tuple(args.level or ()))
    print(json.dumps(bt.to_dict(), indent=2) if args.json else bt.table())
    return 0


def cmd_evaluate(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.evaluate import evaluate

    report = evaluate(load_run(args.run))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.table())
    return 0


def cmd_generate(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.generate import generate

    run = load_run(args.run)
    text = generate(run, args.prompt, args.chars, args.temperature, args.seed)
    print(args.prompt + text)
    return 0


EPILOG = (
    "--out is always a directory; --csv, --onnx and --png are always one file of that format. "
    "Errors are one line (exit 2 for bad input, 1 when a run failed, 130 when interrupted); "
    "LSTMKIT_DEBUG=1 prints the traceback of an unexpected error instead."
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lstmkit", description="Train and use LSTM sequence models.", epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"lstmkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in (_train, _predict, _export, _backtest, _evaluate, _generate, _plot, _inspect):
        add(sub)
    return p


def _run_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--run",
        type=path_arg,
        metavar="DIR",
        default=default,
        help=f"run directory (default {default})",
    )


def _train(sub) -> None:
    t = sub.add_parser("train", help="train a model and write a run directory")
    t.add_argument("--out", type=path_arg, metavar="DIR", help="run directory (default runs/TASK)")
    t.add_argument(
        "--config", type=path_arg, metavar="FILE.toml", help="config file; flags override it"
    )
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_config_flags(t, HELP)
    t.set_defaults(func=cmd_train)


def _predict(sub) -> None:
    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("values", nargs="*", help="the input sequence, e.g. 5 6 7 8")
    _run_flag(pr, "runs/counting")
    pr.add_argument(
        "--horizon",
        type=int_in(1, MAX_HORIZON),
        metavar="N",
        help=f"print only the next N values (1..{MAX_HORIZON}), each fed back as input",
    )
    pr.add_argument("--json", action="store_true", help="print a JSON list")
    pr.add_argument(
        "--csv",
        type=path_arg,
        metavar="FILE",
        help="csv runs: a series file to read the context from (the run's column)",
    )
    pr.add_argument(
        "--onnx",
        type=path_arg,
        metavar="FILE",
        help="predict with an exported ONNX file, not --run",
    )
    pr.add_argument(
        "--stream", action="store_true", help="read values from stdin, one per line; print each"
    )
    pr.add_argument(
        "--level",
        type=float_in(0, 100, open_ends=True),
        nargs="+",
        metavar="PERCENT",
        help="prediction intervals, e.g. 80 95",
    )
    pr.add_argument(
        "--out",
        type=path_arg,
        metavar="DIR",
        help="write DIR/forecast.csv: dated rows date, forecast[, lo, hi] (an --out ending in "
        ".csv that is not a directory is still taken as the file)",
    )
    pr.add_argument(
        "--id", type=text, help="the series to forecast of a many-series run (default: all)"
    )
    pr.set_defaults(func=cmd_predict)


def _export(sub) -> None:
    ex = sub.add_parser("export", help="write a run's model for inference outside lstmkit")
    _run_flag(ex, "runs/counting")
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="default onnx")
    ex.add_argument(
        "--out", type=path_arg, metavar="DIR", help="write DIR/model.onnx (default RUN/model.onnx)"
    )
    ex.add_argument(
        "--onnx", type=path_arg, metavar="FILE", help="the ONNX file to write, instead of --out"
    )
    ex.add_argument("--lengths", action="store_true", help="add a lengths (B,) input")
    ex.set_defaults(func=cmd_export)


def _backtest(sub) -> None:
    bt = sub.add_parser("backtest", help="rolling-origin evaluation beside baselines (csv runs)")
    _run_flag(bt, "runs/csv")
    bt.add_argument(
        "--windows",
        type=int_in(1, MAX_WINDOWS),
        default=3,
        metavar="N",
        help=f"forecast windows, 1..{MAX_WINDOWS} (default 3)",
    )
    bt.add_argument(
        "--step",
        type=int_in(1, MAX_STEP),
        metavar="N",
        help="steps between origins (default the horizon)",
    )
    bt.add_argument("--refit", action="store_true", help="train a model for every window")
    bt.add_argument(
        "--level",
        type=float_in(0, 100, open_ends=True),
        nargs="+",
        metavar="PERCENT",
        help="report interval coverage, e.g. 80 95",
    )
    bt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bt.set_defaults(func=cmd_backtest)


def _evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="score a run's test split beside naive baselines")
    _run_flag(ev, "runs/counting")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=cmd_evaluate)


def _generate(sub) -> None:
    ge = sub.add_parser("generate", help="sample text from a run of the text task")
    _run_flag(ge, "runs/text")
    ge.add_argument("--prompt", default="\n", help="text to start from (default a newline)")
    ge.add_argument(
        "--chars",
        type=int_in(0, MAX_CHARS),
        default=200,
        metavar="N",
        help=f"characters to sample, 0..{MAX_CHARS} (default 200)",
    )
    ge.add_argument(
        "--temperature",
        type=float_in(MIN_TEMPERATURE, MAX_TEMPERATURE),
        default=1.0,
        metavar="T",
        help=f"softmax temperature in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (default 1)",
    )
    ge.add_argument(
        "--seed",
        type=int_in(0, MAX_SEED),
        metavar="N",
        help="seed of the sampler (default: random)",
    )
    ge.set_defaults(func=cmd_generate)


def _plot(sub) -> None:
    pl = sub.add_parser("plot", help="draw loss curves (and a test forecast) into the run")
    _run_flag(pl, "runs/counting")
    pl.set_defaults(func=cmd_plot)


def _inspect(sub) -> None:
    ins = sub.add_parser("inspect", help="draw the gates and states of the first LSTM layer")
    ins.add_argument("values", nargs="+", help="the input sequence, e.g. 5 6 7 8")
    _run_flag(ins, "runs/counting")
    ins.add_argument(
        "--out", type=path_arg, metavar="DIR", help="write DIR/gates.png (default RUN/gates.png)"
    )
    ins.add_argument(
        "--png", type=path_arg, metavar="FILE", help="the picture to write, instead of --out"
    )
    ins.set_defaults(func=cmd_inspect)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error that reaches here is one line on stderr."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except BaseException as e:  # noqa: BLE001 - the one place that turns errors into lines
        if isinstance(e, SystemExit) or os.environ.get("LSTMKIT_DEBUG") == "1":
            raise
        code, line = failure(e)
        if line:
            print(f"lstmkit: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
