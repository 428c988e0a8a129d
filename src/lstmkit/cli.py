"""The ``lstmkit`` command: parse, call the library, print. Results go to stdout, progress to
stderr, and every error to stderr as one line with a non-zero exit code."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lstmkit import __version__
from lstmkit.config import (
    SECTIONS,
    RunConfig,
    field_type,
    flag_of,
    from_dict,
    load_toml,
    rules,
)
from lstmkit.errors import DataError, LstmkitError, TrainingError

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise LstmkitError(f"{self.prog}: {message} (see --help)")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field (``--hidden-size`` for model.hidden_size), default None so
    that only the flags given override the config file and the defaults."""
    for section, cls in SECTIONS.items():
        g = p.add_argument_group(f"{section} (TOML table [{section}])")
        defaults = cls()
        for f in dataclasses.fields(cls):
            t = field_type(cls, f.name)
            is_bool = t is bool  # a switch: --layer-norm, or --layer-norm false
            metavar, help_ = HELP.get(f.name, (t.__name__.upper(), None))
            g.add_argument(
                "--" + flag_of(section, f.name),
                dest=f"{section}.{f.name}",
                type=str,
                default=None,
                nargs="?" if is_bool else None,
                const="true" if is_bool else None,
                metavar=metavar,
                help=help_ or _default_help(getattr(defaults, f.name)),
            )


def _default_help(value) -> str:
    return "default: the task's" if value is None else f"default {value!r}"


# The variant flags' metavar and help, beside the fields in lstmkit.config.ModelConfig.
HELP = {
    "dropout": ("FLOAT", "dropout between LSTM layers (needs --num-layers 2 or more; default 0)"),
    "forget_bias": ("FLOAT", "added to the forget gate's bias at initialisation (default 0)"),
    "init": ("uniform|chrono", "chrono sets the forget/input biases from t_max (default uniform)"),
    "t_max": ("STEPS", "chrono's longest dependency (default: the training window, data.length)"),
    "layer_norm": ("BOOL", "layer-normalised gates and cell (a switch; default off)"),
    "peephole": ("BOOL", "peephole connections from the cell to i, f, o (a switch; default off)"),
    "coupled": ("BOOL", "coupled input and forget gates, f = 1 - i (a switch; default off)"),
    "recurrent_dropout": ("P", "dropout on h_{t-1}, one mask per sequence (default 0)"),
    "zoneout": ("Z|Z_C,Z_H", "keep the previous c and h with these probabilities (default 0)"),
    "weight_drop": ("P", "DropConnect on the recurrent weights, per forward (default 0)"),
    "cell_clip": ("FLOAT", "clip the cell state to [-FLOAT, FLOAT] (default: no clipping)"),
}
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _parse_value(t: type, raw: str, flag: str):
    if t is bool:
        if raw.lower() not in TRUE + FALSE:
            raise LstmkitError(f"--{flag} must be true or false, got {raw!r}")
        return raw.lower() in TRUE
    try:
        return t(raw)
    except ValueError:
        kind = {int: "an integer", float: "a number"}.get(t, t.__name__)
        raise LstmkitError(f"--{flag} must be {kind}, got {raw!r}") from None


def config_from_args(args) -> RunConfig:
    cfg = load_toml(args.config) if args.config else RunConfig()
    overrides: dict[str, dict] = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            raw = getattr(args, f"{section}.{f.name}")
            if raw is not None:
                t, flag = field_type(cls, f.name), flag_of(section, f.name)
                if rules(section, f.name).get("pair") and "," in raw:  # --zoneout 0.5,0.05
                    value = [_parse_value(t, r, flag) for r in raw.split(",")]
                else:
                    value = _parse_value(t, raw, flag)
                overrides.setdefault(section, {})[f.name] = value
    return from_dict(overrides, cfg, source="command line")


def _numbers(raw: list[str]) -> list[float]:
    vals = []
    for r in raw:
        try:
            vals.append(float(r))
        except ValueError:
            raise DataError(f"values must be numbers, got {r!r}") from None
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
    _print_inferred(res.path)
    print(
        f"trained {cfg.data.task}: {res.epochs} epochs{stop}, train loss {res.train_loss:.3g}, "
        f"validation loss {res.val_loss:.3g} (best {res.best_val_loss:.3g}), "
        f"{res.seconds:.1f} s -> {res.path}"
    )
    return 0


def _print_inferred(run_dir) -> None:
    """What a csv run learned about its series (frequency, period, scaling), one line."""
    from lstmkit.checkpoint import CONFIG
    from lstmkit.data.csv import describe

    meta = json.loads((run_dir / CONFIG).read_text())["task"].get("meta", {})
    line = describe(meta) if isinstance(meta, dict) else ""
    if line:
        print(line)


def cmd_predict(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.forecast import forecast, predict_steps
    from lstmkit.multistep import uses_rows

    if args.stream:
        return _stream(args)
    if args.onnx:
        from lstmkit.export import load_onnx_run

        run = load_onnx_run(args.onnx)
    else:
        run = load_run(args.run)
    if args.id is not None and not (run.config.data.task == "csv" and run.config.csv.id_column):
        raise DataError("--id picks a series of a run of many series (--id-column); not this run")
    if uses_rows(run):  # covariates or many series: the context is a CSV file
        return _predict_rows(run, args)
    values = _numbers(args.values)
    dates = None
    if args.csv is not None or (not values and run.config.data.task == "csv"):
        values, dates = _csv_context(run, args.csv or run.config.csv.file, values)
    if (args.level or args.out) and args.horizon is None:
        args.horizon = run.config.csv.horizon or 1  # intervals and --out are for forecasts
    if args.horizon is not None:
        pred = forecast(run, values, args.horizon)
        if args.level or args.out:
            return _forecast_out(run, pred, args, dates)
    else:
        pred = predict_steps(run, values)
    # None: no prediction at that step (seasonal scaling, first period): null / "-"
    print(
        json.dumps(pred) if args.json else " ".join("-" if v is None else f"{v:.2f}" for v in pred)
    )
    return 0


def _predict_rows(run, args) -> int:
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
    scales = run.task["meta"].get("series_scale") or {"": 1.0}
    if args.id is not None and args.id not in scales:
        raise DataError(f"--id {args.id!r} is not a series of this run (ids: {', '.join(scales)})")
    horizon, rows = args.horizon or c.horizon, []
    for key in list(scales) if args.id is None else [args.id]:
        s, f = context_series(run, args.csv or c.file, key)
        fc = series_forecasts(run, s, horizon)[0]
        rows.append((key, s.dates, fc.double() * f, f, fc.tolist()))
    if not c.id_column:
        key, dates, fc, _, _ = rows[0]
        if args.level or args.out:
            return _forecast_out(run, fc.tolist(), args, dates)
        print(json.dumps(fc.tolist()) if args.json else " ".join(f"{v:.2f}" for v in fc))
        return 0
    return _panel_out(run, rows, args)


def _panel_out(run, rows, args) -> int:
    """Forecasts of many series as rows: id, date, forecast[, lo_L, hi_L ...] (printed,
    --json, or written to --out)."""
    from lstmkit.checkpoint import atomic_write
    from lstmkit.forecast import intervals

    table = {"id": [], "date": [], "forecast": []}
    for lv in args.level or []:
        table[f"lo_{lv:g}"], table[f"hi_{lv:g}"] = [], []
    for key, dates, fc, f, relative in rows:
        table["id"] += [key] * len(fc)
        table["date"] += _dates_after(run, dates, len(fc))
        table["forecast"] += fc.tolist()
        for lv in args.level or []:
            lo, hi = intervals(run, relative, lv)
            table[f"lo_{lv:g}"] += (lo * f).tolist()
            table[f"hi_{lv:g}"] += (hi * f).tolist()
    text = [",".join(table)] + [
        ",".join(str(v) if isinstance(v, str) else f"{v:.6g}" for v in row)
        for row in zip(*table.values(), strict=True)
    ]
    if args.out:
        if not Path(args.out).parent.is_dir():
            raise DataError(f"--out {args.out}: folder {Path(args.out).parent} does not exist")
        atomic_write(Path(args.out), ("\n".join(text) + "\n").encode())
        print(f"{len(table['id'])} forecasts of {len(rows)} series -> {args.out}")
    elif args.json:
        print(json.dumps(table))
    else:
        print("\n".join(text))
    return 0


def _dates_after(run, dates, k: int) -> list[str]:
    """The ``k`` dates after the context's last (steps 1..k without dates)."""
    from lstmkit import timeseries as ts

    meta = run.task.get("meta", {})
    step_s, freq = meta.get("step_s"), meta.get("inferred", {}).get("frequency")
    if not (dates and step_s):
        return [str(i) for i in range(1, k + 1)]
    last = ts.parse_date(dates[-1], "the context's last date")
    return [ts.format_like(ts.add_steps(last, freq, step_s, i), dates[-1]) for i in range(1, k + 1)]


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
            f"{run.task['output_size']} steps at once (--strategy direct): use --horizon"
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

    print(export_run(load_run(args.run), args.out, lengths=args.lengths))
    return 0


def _forecast_out(run, pred: list[float], args, dates) -> int:
    """Forecasts with their intervals (--level), printed and/or written (--out) as dated
    rows: date, forecast[, lo_L, hi_L ...]."""
    from lstmkit import timeseries as ts
    from lstmkit.checkpoint import atomic_write
    from lstmkit.forecast import intervals

    cols = {"forecast": pred}
    for lv in args.level or []:
        lo, hi = intervals(run, pred, lv)
        cols[f"lo_{lv:g}"], cols[f"hi_{lv:g}"] = lo.tolist(), hi.tolist()
    meta = run.task.get("meta", {})
    step_s, freq = meta.get("step_s"), meta.get("inferred", {}).get("frequency")
    if dates and step_s:
        last = ts.parse_date(dates[-1], "the context's last date")
        when = [
            ts.format_like(ts.add_steps(last, freq, step_s, k), dates[-1])
            for k in range(1, len(pred) + 1)
        ]
    else:  # no dates: steps after the context
        when = [str(k) for k in range(1, len(pred) + 1)]
    if args.out:
        if not Path(args.out).parent.is_dir():
            raise DataError(f"--out {args.out}: folder {Path(args.out).parent} does not exist")
        lines = ["date," + ",".join(cols)]
        lines += [
            ",".join([d] + [f"{c[i]:.6g}" for c in cols.values()]) for i, d in enumerate(when)
        ]
        atomic_write(Path(args.out), ("\n".join(lines) + "\n").encode())
    if args.json:
        print(json.dumps({"date": when, **cols}))
    elif not args.out:
        for i, d in enumerate(when):
            print(d, " ".join(f"{c[i]:.2f}" for c in cols.values()))
    else:
        print(f"{len(pred)} forecasts -> {args.out}")
    return 0


def cmd_plot(args) -> int:
    from lstmkit.plots import plot_run

    for path in plot_run(args.run):
        print(path)
    return 0


def cmd_inspect(args) -> int:
    from lstmkit.checkpoint import load_run
    from lstmkit.plots import plot_inspect

    values = _numbers(args.values)
    print(plot_inspect(load_run(args.run), values, args.out))
    return 0


def _csv_context(run, path: str, values: list[float]):
    """(values, dates) of the run's column of CSV file ``path``: the context to predict from;
    dates [] when the run has no date column."""
    from lstmkit.data.csv import read

    if run.config.data.task != "csv":
        raise DataError(f"--csv takes a run of the csv task, got one of {run.config.data.task!r}")
    if values:
        raise DataError("give the context either as values or as --csv FILE, not both")
    meta = run.task["meta"]
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


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lstmkit", description="Train and use LSTM sequence models.")
    p.add_argument("--version", action="version", version=f"lstmkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a model and write a run directory")
    t.add_argument("--out", help="run directory (default runs/TASK, e.g. runs/counting)")
    t.add_argument("--config", metavar="FILE.toml", help="config file; flags override it")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("values", nargs="*", help="the input sequence, e.g. 5 6 7 8")
    pr.add_argument("--run", default="runs/counting", help="run directory (default runs/counting)")
    pr.add_argument(
        "--horizon", type=int, help="print only the next N values, each fed back as input"
    )
    pr.add_argument("--json", action="store_true", help="print a JSON list")
    pr.add_argument(
        "--csv", metavar="FILE", help="csv runs: read the context from the run's column of FILE"
    )
    pr.add_argument("--onnx", metavar="FILE", help="predict with an exported ONNX file, not --run")
    pr.add_argument(
        "--stream", action="store_true", help="read values from stdin, one per line; print each"
    )

    pr.add_argument("--level", type=float, nargs="+", help="prediction intervals, e.g. 80 95")
    pr.add_argument("--out", metavar="FILE.csv", help="write dated rows: date, forecast[, lo, hi]")
    pr.add_argument("--id", help="the series to forecast of a many-series run (default: all)")
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="write a run's model for inference outside lstmkit")
    ex.add_argument("--run", default="runs/counting", help="run directory (default runs/counting)")
    ex.add_argument("--format", choices=["onnx"], default="onnx", help="default onnx")
    ex.add_argument("--out", metavar="FILE", help="file to write (default RUN/model.onnx)")
    ex.add_argument("--lengths", action="store_true", help="add a lengths (B,) input")
    ex.set_defaults(func=cmd_export)

    bt = sub.add_parser("backtest", help="rolling-origin evaluation beside baselines (csv runs)")
    bt.add_argument("--run", default="runs/csv", help="run directory (default runs/csv)")
    bt.add_argument("--windows", type=int, default=3, help="forecast windows (default 3)")
    bt.add_argument("--step", type=int, help="steps between origins (default the horizon)")
    bt.add_argument("--refit", action="store_true", help="train a model for every window")
    bt.add_argument("--level", type=float, nargs="+", help="report interval coverage, e.g. 80 95")
    bt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bt.set_defaults(func=cmd_backtest)

    ev = sub.add_parser("evaluate", help="score a run's test split beside naive baselines")
    ev.add_argument("--run", default="runs/counting", help="run directory (default runs/counting)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ev.set_defaults(func=cmd_evaluate)

    ge = sub.add_parser("generate", help="sample text from a run of the text task")
    ge.add_argument("--run", default="runs/text", help="run directory (default runs/text)")
    ge.add_argument("--prompt", default="\n", help="text to start from (default a newline)")
    ge.add_argument("--chars", type=int, default=200, help="characters to sample (default 200)")
    ge.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (> 0)")
    ge.add_argument("--seed", type=int, help="seed of the sampler (default: random)")
    ge.set_defaults(func=cmd_generate)

    pl = sub.add_parser("plot", help="draw loss curves (and a test forecast) into the run")
    pl.add_argument("--run", default="runs/counting", help="run directory (default runs/counting)")
    pl.set_defaults(func=cmd_plot)

    ins = sub.add_parser("inspect", help="draw the gates and states of the first LSTM layer")
    ins.add_argument("values", nargs="+", help="the input sequence, e.g. 5 6 7 8")
    ins.add_argument("--run", default="runs/counting", help="run directory (default runs/counting)")
    ins.add_argument("--out", metavar="FILE.png", help="picture to write (default RUN/gates.png)")
    ins.set_defaults(func=cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except LstmkitError as e:
        print(f"lstmkit: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingError as e:
        print(f"lstmkit: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("lstmkit: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
