"""A series from a CSV file (with covariates, or many series); forecast its next values.

``--csv FILE --column NAME`` (optional ``--date-column``, checked to increase); without
``--csv`` the packaged airline passengers series (monthly, 1949–1960) is used. The split is
in time order: the last ``test_size`` values are the test, the ``test_size`` before them the
validation, the rest the training series (``test_size`` 0: all of it trains, and the last
``horizon`` values validate in-sample). Period, window length, horizon and scaling left
unset are learned from the data (:func:`infer`, :mod:`lstmkit.timeseries`); blank cells and
missing timestamps are errors unless ``fill`` says how to fill them. Covariates
(``features``, ``future_features``, ``date_features``) add input columns and choose the
strategy (:mod:`lstmkit.data.covariates`); ``id_column`` reads many series
(:mod:`lstmkit.data.panel`). S below is the steps one input predicts: 1 (recursive) or H
(direct), C the input columns (1 without covariates).

- train: every window of ``length`` consecutive training steps whose S targets lie in the
  training part, x (N, L, C) (views of one tensor), y (N, L, S): at step t the S values
  after t; all steps counted (``num_train`` does not apply);
- val: one window per validation value, predicting from the L steps before it (only the
  last step counted), and ``forecast_val``: every validation value as the origin of an
  H-step forecast (recursive or direct), scored up to the end of the part (what training
  selects on), and ``forecast_val["calib"]``: the latest CALIBRATION_ORIGINS values of the
  training and validation parts as origins of H-step forecasts, with each window's local
  scale (what prediction intervals are calibrated on, :func:`lstmkit.forecast.calibrate`);
- test: one sequence x (1, L + S - 1, 1), S = test_size, whose last S targets are the test
  values; :mod:`lstmkit.evaluate` forecasts them from the first L values.

The run remembers the file's path, column, length and SHA-256 (task meta) and refuses to
evaluate if the file changed.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import torch

from lstmkit import timeseries as ts
from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData, all_steps
from lstmkit.data import covariates as cov
from lstmkit.data.csvread import (  # noqa: F401 (read, parse, read_series: the public API)
    BUILTIN,
    FILL_HINT,
    Series,
    _source,
    load,
    parse,
    read,
    read_series,
)
from lstmkit.errors import ConfigError, DataError

BUILTIN_DATES = "month"
AVERAGE_BEST = 3  # checkpoints a recursive run averages (README: forecasting, acceptance)
EPOCH_WINDOWS = 16384  # training windows per epoch of a long series (DEFAULTS below)
DEFAULTS = {  # period, length, horizon and scaling are learned from the data (infer)
    "csv.test_size": 24,
    "model.hidden_size": 32,
    "train.epochs": 60,
    "train.batch_size": 16,
    "train.lr": 0.005,
    # A long series' overlapping windows repeat each other: an epoch samples this many
    # (fresh each epoch), so 60 epochs of a million rows take minutes, not hours; a series
    # with fewer windows sees all of them every epoch.
    "train.epoch_windows": EPOCH_WINDOWS,
}


def _date_column(c) -> str:
    """The date column of [csv] options ``c``: the packaged series has one."""
    return c.date_column or ("" if c.file else BUILTIN_DATES)


def _fit_part(n: int, test_size: int) -> int:
    """Values before the validation part: what data-driven choices may look at."""
    return n - 2 * test_size if test_size else n


def infer(cfg: RunConfig) -> None:
    """Fill data.period, data.length, csv.horizon, data.scaling (when None or "auto") and
    csv.average_best (by strategy) from the series: the frequency's season checked against
    the autocorrelation, windows of two seasons (at least 24 values), the test size as
    horizon, and the scaling whose reference forecast does best on the training part
    (:mod:`lstmkit.timeseries`)."""
    d, c = cfg.data, cfg.csv
    past = cov.names(c.features)
    if c.strategy == "auto":  # past covariates have no known future: see data.covariates
        c.strategy = "direct" if past else "recursive"
    elif c.strategy == "recursive" and past:
        raise ConfigError(
            f"csv.features ({', '.join(past)}) are known only up to the forecast origin; a "
            "recursive forecast would need them at every step ahead: use --strategy direct "
            "(the default with --features), or pass them as --future-features if their "
            "future is known"
        )
    sp = cov.spec(c, False, 1, _date_column(c))  # names checked before anything is written
    if c.average_best is None:  # measured: it helped recursive runs, not direct ones
        c.average_best = AVERAGE_BEST if c.strategy == "recursive" else 1
    if None not in (d.period, d.length, c.horizon) and d.scaling != "auto":
        return
    S = DEFAULTS["csv.test_size"] if c.test_size is None else c.test_size
    if c.id_column:  # many series: each choice is the one most series make
        from lstmkit.data import panel

        raw, name = _source(c.file)
        fits, freq = panel.infer_choices(cfg, raw, name, sp, _date_column(c))
    else:
        s = read(c.file, c.column, _date_column(c), c.fill, sp.columns, sp.future)
        values = s.values[: c.rows] if c.rows else s.values
        fits, freq = [values[: max(_fit_part(len(values), S), 2)]], s.freq
    if d.period is None:
        d.period = _vote(fits, lambda f: ts.choose_period(f, freq)[0])
    p = d.period
    if c.horizon is None:
        c.horizon = S if S else (p if p > 1 else 8)
    if d.length is None:
        d.length = max(min(max(24, 2 * p), min(map(len, fits)) // 2), p + 2)
    if d.scaling == "auto":
        d.scaling = _vote(fits, lambda f: ts.choose_scaling(f, p, c.horizon, d.length)[0])


def _vote(fits: list[list[float]], pick):
    """The choice ``pick(values)`` makes for most series (ties: the first's)."""
    return Counter(pick(f) for f in fits).most_common(1)[0][0]


def _inferred(cfg: RunConfig, series: Series, fit: list[float]) -> dict:
    """What was learned from the data, and why, for config.json and the train output."""
    f, d = series.freq, cfg.data
    period, why_p = ts.choose_period(fit, f)
    scaling, why_s = ts.choose_scaling(fit, d.period, cfg.csv.horizon, d.length)
    out = {
        "frequency": f.name if f else "no dates",
        "missing_timestamps": f.missing if f else 0,
        "irregular_spacings": f.irregular if f else 0,
        "filled": series.notes,
        "period": d.period,
        "period_reason": why_p if period == d.period else "set by --period",
        "scaling": d.scaling,
        "scaling_reason": why_s if scaling == d.scaling else "set by --scaling",
    }
    return out


def describe(meta: dict) -> str:
    """One line: what a run learned about its series."""
    i = meta.get("inferred")
    if not i:
        return ""
    dates = i["frequency"]
    if i["missing_timestamps"] or i["irregular_spacings"]:
        dates += (
            f" ({i['missing_timestamps']} missing timestamps, "
            f"{i['irregular_spacings']} irregular spacings)"
        )
    filled = f"; {i['filled']}" if i["filled"] else ""
    if i.get("series"):
        dates += f", {i['series']} series (period and scaling: most series' choice)"
    return (
        f"series: {dates}{filled}; period {i['period']} ({i['period_reason']}); scaling "
        f"{i['scaling']} ({i['scaling_reason']}); horizon {meta['horizon']}"
    )


def spec(cfg: RunConfig) -> cov.Spec:
    """The covariates and strategy of a resolved config."""
    c = cfg.csv
    return cov.spec(c, c.strategy == "direct", c.horizon, _date_column(c))


def read_run(cfg: RunConfig, raw: bytes | None = None, name: str = "") -> Series:
    """The series of a resolved config's [csv] options, with its covariate columns."""
    c, sp = cfg.csv, spec(cfg)
    if raw is None:
        raw, name = _source(c.file)
    return load(raw, name, c.column, _date_column(c), c.fill, sp.columns, sp.future)


def make(cfg: RunConfig, seed: int) -> TaskData:
    c = cfg.csv
    raw, name = _source(c.file)
    sp = spec(cfg)
    if c.id_column:
        from lstmkit.data import panel

        return panel.make(cfg, sp, raw, name)
    series = read_run(cfg, raw, name)
    values = series.values
    if c.rows:
        values = values[: c.rows]
    n = len(values)
    parts = series_parts(cfg, sp, series, n, name)
    default = "seasonal" if cfg.data.period > 1 else "diff"
    meta = _meta(cfg, raw, series, n, parts["fv"]["scale"])
    meta["inferred"] = _inferred(cfg, series, values[: parts["n_train"]])
    return TaskData(
        parts["train"],
        parts["val"],
        parts["test"],
        sp.input_size,
        sp.steps,
        default_scaling=default,
        forecast_val=parts["fv"],
        meta=meta,
    )


def series_parts(cfg: RunConfig, sp: cov.Spec, series: Series, n: int, name: str) -> dict:
    """The splits of the first ``n`` values of one series (module docstring): train, val,
    test (Split), fv (forecast_val) and n_train."""
    c, column = cfg.csv, series.column
    L, S, H = cfg.data.length, c.test_size, c.horizon
    n_train = _fit_part(n, S)
    V = S if S else H  # validation values (in-sample, the last H, when nothing is held out)
    if S and H > S:
        raise ConfigError(f"csv.horizon must be <= csv.test_size ({S}), got {H}")
    if n_train < L + sp.steps or n < L + H:
        raise DataError(
            f"CSV file {name} has {n} values in column {column!r}; data.length {L} and "
            f"csv.test_size {S} need at least {L + sp.steps + 2 * S} (one training window of "
            f"{L + sp.steps}, then {S} for validation and {S} for test)"
        )
    frame = cov.frame(series, sp, n, H)
    X = cov.step_rows(frame, sp.steps, extra=H)  # (n + H, C): a view without covariates
    v = frame.values
    vpad = torch.cat([v, v.new_full((H,), math.nan)])
    Y = vpad.unfold(0, sp.steps, 1)[1 : n + 1]  # row t: the S values after t
    m = n_train - sp.steps  # the last training input row predicts up to n_train - 1
    xw = X[:m].unfold(0, L, 1).transpose(1, 2)  # (m - L + 1, L, C) views, no copies
    train = Split(xw, Y[:m].unfold(0, L, 1).transpose(1, 2), all_steps(xw))
    v0 = n_train if S else n - V
    origins = range(v0, v0 + V)
    vx = torch.stack([X[o - L : o] for o in origins])
    val_mask = torch.zeros(V, L, dtype=torch.bool)
    val_mask[:, -1] = True
    val = Split(vx, torch.stack([Y[o - L : o] for o in origins]), val_mask)
    seq = v[n - S - L :]
    test_mask = torch.zeros(1, L + S - 1, dtype=torch.bool)
    test_mask[:, L - 1 :] = True
    test = Split(seq[None, :-1, None], seq[None, 1:, None], test_mask)
    # every validation value is an origin; each forecasts H steps, scored (and its residuals
    # calibrating prediction intervals) only up to the end of the validation part
    fv = _forecast_val(cfg, sp, X, v, origins, v0 + V, n_train)
    return {"train": train, "val": val, "test": test, "fv": fv, "n_train": n_train}


def _forecast_val(cfg, sp: cov.Spec, X, v, origins, end: int, n_train: int) -> dict:
    """H-step forecasts from every origin, scored up to ``end`` (TaskData.forecast_val):
    contexts (N, L, C), for a recursive run with covariates the input rows of the steps it
    feeds its forecasts into (N, H - 1, C), targets (N, H), the MASE scale."""
    L, H = cfg.data.length, cfg.csv.horizon
    p = cfg.data.period if cfg.data.period < n_train else 1
    scale = (v[p:n_train] - v[: n_train - p]).abs().mean().item()
    nan = torch.full((H,), math.nan)
    out = {
        "context": torch.stack([X[o - L : o] for o in origins]),
        "target": torch.stack([torch.cat([v[o:end], nan])[:H] for o in origins]),
        "scale": scale if scale > 0 else 1.0,
        "direct": sp.steps > 1 or cfg.csv.strategy == "direct",
    }
    if sp.any and not out["direct"]:
        out["known"] = torch.stack([X[o : o + H - 1] for o in origins])
    out["calib"] = _calibration_origins(cfg, X, v, end, out)
    return out


CALIBRATION_ORIGINS = 300  # the latest origins only: enough residuals per step, bounded cost


def _calibration_origins(cfg, X, v, end: int, fv: dict) -> dict:
    """Rolling origins over the training and validation parts (the latest
    CALIBRATION_ORIGINS, one step apart), for prediction intervals by step ahead: contexts,
    targets (NaN past ``end``), each context's local scale (:func:`local_scale`)."""
    L, H = cfg.data.length, cfg.csv.horizon
    origins = list(range(max(L, end - CALIBRATION_ORIGINS), end))
    nan = torch.full((H,), math.nan)
    out = {
        "context": torch.stack([X[o - L : o] for o in origins]),
        "target": torch.stack([torch.cat([v[o:end], nan])[:H] for o in origins]),
        "direct": fv["direct"],
    }
    if "known" in fv:
        out["known"] = torch.stack([X[o : o + H - 1] for o in origins])
    out["local_scale"] = local_scale(out["context"][..., 0], fv["scale"])
    return out


def local_scale(windows: torch.Tensor, fallback: float) -> torch.Tensor:
    """(N,) the mean absolute step of each window (N, L) of series values: the size of the
    series' moves around a forecast origin, which its errors grow with (``fallback`` where a
    window is constant)."""
    s = windows.double().diff(dim=1).abs().mean(dim=1)
    return torch.where(s > 0, s, torch.full_like(s, fallback))


def _meta(cfg: RunConfig, raw: bytes, series: Series, n: int, scale: float) -> dict:
    c, S, freq, dates = cfg.csv, cfg.csv.test_size, series.freq, series.dates
    return {
        "csv": c.file,
        "column": series.column,
        "date_column": _date_column(c),
        "values": n,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "period": cfg.data.period,
        "test_size": S,
        "horizon": c.horizon,
        "strategy": c.strategy,
        "test_start": (dates[n - S] if S else None) if dates else n - S,
        "last_date": dates[n - 1] if dates else None,
        "step_s": freq.step_s if freq else None,
        "mase_scale": scale,
    }


class Csv(BaseTask):
    name = section = "csv"
    defaults = DEFAULTS
    forecast_test = True  # evaluate forecasts the test values from the L values before them

    def infer(self, cfg: RunConfig) -> None:
        infer(cfg)

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        return make(cfg, seed)

    def check_source(self, cfg: RunConfig, saved: dict) -> None:
        """DataError unless the file is the one the run was trained on, checked before it
        is parsed (a run directory may name any file: nothing of it is echoed)."""
        raw, _ = _source(cfg.csv.file)
        if hashlib.sha256(raw).hexdigest() != saved.get("sha256"):
            raise DataError("the run's CSV file changed since training (its SHA-256 differs)")

    def baselines(self, td: TaskData, cfg: RunConfig) -> dict[str, torch.Tensor]:
        """Forecasts of the test values from the L values before them: the last value, and
        the last season repeated (period > 1)."""
        S, L, p = td.meta["test_size"], cfg.data.length, cfg.data.period
        ctx = td.test.x[0, :L, 0]
        h = torch.arange(S)
        out = {"last value": place(td, ctx[-1].expand(S))}
        if p > 1:
            out[f"seasonal naive ({p})"] = place(td, ctx[-p + h % p])
        return out

    def describe(self, td: TaskData) -> str:
        m = td.meta
        return (
            f"{m['test_size']}-step forecast of the held-out test values from "
            f"{m['test_start']} (column {m['column']!r})"
        )


def place(td: TaskData, forecast: torch.Tensor) -> torch.Tensor:
    """A (1, T, 1) prediction tensor holding ``forecast`` (S,) at the test steps."""
    if td.test.mask.size(0) > 1:  # evaluate forecasts one series
        raise DataError(
            f"this run holds {td.test.mask.size(0)} series (--id-column); score each and "
            "all of them with `lstmkit backtest --run DIR`"
        )
    pred = torch.full_like(td.test.y, float("nan"))
    pred[td.test.mask] = forecast.to(pred.dtype)[:, None]
    return pred


TASK = Csv()
