"""Any univariate series from a CSV file; predict the next value at every step.

``--csv FILE --column NAME`` (optional ``--date-column``, checked to increase); without
``--csv`` the packaged airline passengers series (monthly, 1949–1960) is used. The split is
in time order: the last ``test_size`` values are the test, the ``test_size`` before them the
validation, the rest the training series (``test_size`` 0: all of it trains, and the last
``horizon`` values validate in-sample). Period, window length, horizon and scaling left
unset are learned from the data (:func:`infer`, :mod:`lstmkit.timeseries`); blank cells and
missing timestamps are errors unless ``fill`` says how to fill them.

- train: every window of ``length`` + 1 consecutive training values, x (N, L, 1),
  y (N, L, 1) shifted by one, all steps counted (``num_train`` does not apply);
- val: one window per validation value, predicting it from the L values before it (only
  the last step counted), and ``forecast_val``: every validation value as the origin of an
  H-step recursive forecast, scored up to the end of the part (what training selects on);
- test: one sequence x (1, L + S - 1, 1), S = test_size, whose last S targets are the test
  values; :mod:`lstmkit.evaluate` forecasts them autoregressively from the first L values.

The run remembers the file's path, column, length and SHA-256 (task meta) and refuses to
evaluate if the file changed.
"""

from __future__ import annotations

import csv as _csv
import hashlib
import io
import itertools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from lstmkit import timeseries as ts
from lstmkit.config import RunConfig
from lstmkit.data import BaseTask, Split, TaskData, all_steps
from lstmkit.errors import ConfigError, DataError

BUILTIN = "airline_passengers.csv"
BUILTIN_DATES = "month"
DEFAULTS = {  # period, length, horizon and scaling are learned from the data (infer)
    "csv.test_size": 24,
    "model.hidden_size": 32,
    "train.epochs": 60,
    "train.batch_size": 16,
    "train.lr": 0.005,
}


def _source(path: str) -> tuple[bytes, str]:
    """The file's bytes and the name to use in messages (the packaged series for "")."""
    if not path:
        return resources.files("lstmkit.data").joinpath(BUILTIN).read_bytes(), BUILTIN
    p = Path(path)
    if not p.is_file():
        raise DataError(
            f"CSV file {p} does not exist" + (" (it is a directory)" if p.is_dir() else "")
        )
    return p.read_bytes(), str(p)


@dataclass
class Series:
    """A parsed column: values (finite floats, gaps filled), their dates as written ([]
    without a date column; filled timestamps written like the others), the frequency
    (None without dates) and what was filled, in words."""

    values: list[float]
    dates: list[str]
    column: str
    freq: ts.Frequency | None = None
    notes: str = ""


def parse(raw: bytes, name: str, column: str = "", date_column: str = "", fill: str = "none"):
    """(values, dates, column) of CSV text ``raw``; see :func:`load`."""
    s = load(raw, name, column, date_column, fill)
    return s.values, s.dates, s.column


def load(
    raw: bytes, name: str, column: str = "", date_column: str = "", fill: str = "none"
) -> Series:
    """The series in column ``column`` of CSV text ``raw``. A blank or NA cell, or a
    timestamp missing between two dates, is a DataError naming the line unless ``fill`` is
    ffill, interpolate (missing timestamps are inserted) or drop. Every way a file can be
    unusable raises DataError naming the expected and the actual."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {name} is not UTF-8 text ({e})") from None
    # a generator: a long file's rows are read once, not held as lists of cells
    rows = _rows(_csv.reader(io.StringIO(text, newline=None)))
    first = next(rows, None)
    if first is None:
        raise DataError(f"CSV file {name} is empty: expected a header row and data rows")
    header = [h.strip() for h in first[1]]
    _check_header(header, name)
    second = next(rows, None)
    if second is None:
        raise DataError(f"CSV file {name} has a header ({', '.join(header)}) but no data rows")
    body = itertools.chain([second], rows)
    if not column:
        column = _pick_column(header, [second], date_column, name)
    for want, flag in ((column, "--column"), (date_column, "--date-column")):
        if want and want not in header:
            raise DataError(
                f"CSV file {name} has no column {want!r} ({flag}); its columns are "
                f"{', '.join(repr(h) for h in header)}"
            )
    col = header.index(column)
    dcol = header.index(date_column) if date_column else -1
    values: list[float | None] = []
    lines, raw_dates = [], []
    for line, row in body:
        cell = row[col].strip() if col < len(row) else ""
        where = f"CSV file {name}, line {line}, column {column!r}"
        if cell.lower() in ts.MISSING:
            if fill == "none":
                raise DataError(f"{where}: missing value {cell!r}; {FILL_HINT}")
            values.append(None)
        else:
            try:
                v = float(cell)
            except ValueError:
                raise DataError(f"{where}: expected a number, got {cell!r}") from None
            if not abs(v) <= FLOAT32_MAX:  # NaN, inf, and what float32 would make inf
                raise DataError(
                    f"{where}: expected a finite number within float32's range "
                    f"(|x| <= 3.4e38), got {cell!r}"
                )
            values.append(v)
        lines.append(line)
        if date_column:
            raw_dates.append(row[dcol] if dcol < len(row) else "")
    freq, notes = None, []
    if date_column:
        parsed = _check_dates(lines, raw_dates, name, date_column)
        freq = ts.infer_frequency(parsed)
        values, raw_dates = _fill_timestamps(values, parsed, raw_dates, lines, freq, name, fill)
    n_missing = sum(v is None for v in values)
    if n_missing:
        filled, kept = ts.fill_missing(values, fill)
        notes.append(f"{n_missing} missing value(s) {'dropped' if fill == 'drop' else fill}")
        if len(kept) < len(values) and fill != "drop":
            notes.append(f"{kept[0]} leading missing value(s) dropped")
        values = filled
        raw_dates = [raw_dates[i] for i in kept] if raw_dates else []
    if not values:
        raise DataError(f"CSV file {name}: column {column!r} holds no values")
    return Series(values, raw_dates, column, freq, "; ".join(notes))


FILL_HINT = "pass --fill ffill, interpolate or drop"
FLOAT32_MAX = 3.4028234663852886e38


def _rows(reader):
    """(line, cells) of every row after the leading blank lines: a blank line between rows
    is a row of missing values (in a one-column file, a blank cell); blank lines at the
    end are not rows."""
    blanks, started = [], False
    for line, cells in enumerate(reader, 1):
        if not any(c.strip() for c in cells):
            if started:
                blanks.append((line, [""]))
            continue
        started = True
        yield from blanks
        blanks = []
        yield line, cells


def _check_header(header: list[str], name: str) -> None:
    seen: dict[str, int] = {}
    for i, h in enumerate(header, 1):
        if h in seen:
            raise DataError(
                f"CSV file {name} has two columns named {h!r} (columns {seen[h]} and {i}); "
                "rename one"
            )
        seen[h] = i


def _fill_timestamps(values, parsed, raw_dates, lines, freq, name, fill):
    """Values and dates with a None row inserted for every missing timestamp (ffill and
    interpolate); a DataError naming the line without --fill; as they are under drop."""
    if not freq.missing or fill == "drop":
        return values, raw_dates
    out_v, out_d = [values[0]], [raw_dates[0]]
    for i in range(1, len(values)):
        k = freq.steps_between(parsed[i - 1], parsed[i])
        gap = round(k) - 1 if k >= 0 and abs(k - round(k)) <= 0.05 else 0
        if gap > 0 and fill == "none":
            raise DataError(
                f"CSV file {name}, line {lines[i]}: {gap} {freq.name} timestamp(s) missing "
                f"before {raw_dates[i]!r}; {FILL_HINT}"
            )
        for j in range(1, gap + 1):
            d = ts.add_steps(parsed[i - 1], freq.name, freq.step_s, j)
            out_v.append(None)
            out_d.append(ts.format_like(d, raw_dates[i]))
        out_v.append(values[i])
        out_d.append(raw_dates[i])
    return out_v, out_d


def _pick_column(header, body, date_column, name) -> str:
    """The one column (besides the date column) whose first value is a number."""
    first = body[0][1]
    numeric = [h for i, h in enumerate(header) if h != date_column and _is_number(first, i)]
    if len(numeric) != 1:
        raise ConfigError(
            f"CSV file {name}: pass --column, one of {', '.join(repr(h) for h in header)} "
            f"({len(numeric)} columns look numeric)"
        )
    return numeric[0]


def _is_number(row: list[str], i: int) -> bool:
    try:
        float(row[i])
    except (ValueError, IndexError):
        return False
    return True


def _check_dates(lines, raw_dates, name, date_column) -> list:
    out = []
    for line, raw in zip(lines, raw_dates, strict=True):
        d = ts.parse_date(raw, f"CSV file {name}, line {line}, column {date_column!r}")
        if out and d <= out[-1]:
            raise DataError(
                f"CSV file {name}, line {line}: dates must increase, got {raw!r} after "
                f"{raw_dates[len(out) - 1]!r}"
            )
        out.append(d)
    return out


def read_series(path: str, column: str = "", date_column: str = "", fill: str = "none"):
    """The values of ``column`` in CSV file ``path`` ("" = the packaged airline series)."""
    return read(path, column, date_column, fill).values


def read(path: str, column: str = "", date_column: str = "", fill: str = "none") -> Series:
    """The :class:`Series` of ``column`` in CSV file ``path`` ("" = the packaged series)."""
    raw, name = _source(path)
    return load(raw, name, column, date_column, fill)


def _date_column(c) -> str:
    """The date column of [csv] options ``c``: the packaged series has one."""
    return c.date_column or ("" if c.file else BUILTIN_DATES)


def _fit_part(n: int, test_size: int) -> int:
    """Values before the validation part: what data-driven choices may look at."""
    return n - 2 * test_size if test_size else n


def infer(cfg: RunConfig) -> None:
    """Fill data.period, data.length, csv.horizon and data.scaling (when None or "auto")
    from the series: the frequency's season checked against the autocorrelation, windows
    of two seasons (at least 24 values), the test size as horizon, and the scaling whose
    reference forecast does best on the training part (:mod:`lstmkit.timeseries`)."""
    d, c = cfg.data, cfg.csv
    if None not in (d.period, d.length, c.horizon) and d.scaling != "auto":
        return
    s = read(c.file, c.column, _date_column(c), c.fill)
    values = s.values[: c.rows] if c.rows else s.values
    S = DEFAULTS["csv.test_size"] if c.test_size is None else c.test_size
    fit = values[: max(_fit_part(len(values), S), 2)]
    if d.period is None:
        d.period = ts.choose_period(fit, s.freq)[0]
    p = d.period
    if c.horizon is None:
        c.horizon = S if S else (p if p > 1 else 8)
    if d.length is None:
        d.length = max(min(max(24, 2 * p), len(fit) // 2), p + 2)
    if d.scaling == "auto":
        d.scaling = ts.choose_scaling(fit, p, c.horizon, d.length)[0]


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
    return (
        f"series: {dates}{filled}; period {i['period']} ({i['period_reason']}); scaling "
        f"{i['scaling']} ({i['scaling_reason']}); horizon {meta['horizon']}"
    )


def make(cfg: RunConfig, seed: int) -> TaskData:
    c = cfg.csv
    raw, name = _source(c.file)
    date_column = _date_column(c)
    series = load(raw, name, c.column, date_column, c.fill)
    values, column = series.values, series.column
    if c.rows:
        values = values[: c.rows]
    L, S, H = cfg.data.length, c.test_size, c.horizon
    n = len(values)
    n_train = _fit_part(n, S)
    V = S if S else H  # validation values (in-sample, the last H, when nothing is held out)
    if S and H > S:
        raise ConfigError(f"csv.horizon must be <= csv.test_size ({S}), got {H}")
    if n_train < L + 1 or n < L + H:
        raise DataError(
            f"CSV file {name} has {n} values in column {column!r}; data.length {L} and "
            f"csv.test_size {S} need at least {L + 1 + 2 * S} (one training window of "
            f"{L + 1}, then {S} for validation and {S} for test)"
        )
    v = torch.tensor(values, dtype=torch.float32)
    train = v[:n_train].unfold(0, L + 1, 1)  # (n_train - L, L + 1) views, no copies
    train = Split(train[:, :-1, None], train[:, 1:, None], all_steps(train[:, :-1, None]))
    v0 = n_train if S else n - V
    val = torch.stack([v[j - L : j + 1] for j in range(v0, v0 + V)])
    val_mask = torch.zeros(V, L, dtype=torch.bool)
    val_mask[:, -1] = True
    val = Split(val[:, :-1, None], val[:, 1:, None], val_mask)
    seq = v[n - S - L :]
    test_mask = torch.zeros(1, L + S - 1, dtype=torch.bool)
    test_mask[:, L - 1 :] = True
    test = Split(seq[None, :-1, None], seq[None, 1:, None], test_mask)
    # every validation value is an origin; each forecasts H steps, scored (and its residuals
    # calibrating prediction intervals) only up to the end of the validation part
    origins = range(v0, v0 + V)
    m = cfg.data.period if cfg.data.period < n_train else 1
    scale = (v[m:n_train] - v[: n_train - m]).abs().mean().item()
    forecast_val = {
        "context": torch.stack([v[o - L : o] for o in origins])[:, :, None],
        "target": torch.stack(
            [torch.cat([v[o : v0 + V], torch.full((H,), math.nan)])[:H] for o in origins]
        ),
        "scale": scale if scale > 0 else 1.0,
    }
    freq = series.freq
    meta = {
        "csv": c.file,
        "column": column,
        "date_column": date_column,
        "values": n,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "period": cfg.data.period,
        "test_size": S,
        "horizon": H,
        "test_start": (series.dates[n - S] if S else None) if series.dates else n - S,
        "last_date": series.dates[n - 1] if series.dates else None,
        "step_s": freq.step_s if freq else None,
        "mase_scale": forecast_val["scale"],
        "inferred": _inferred(cfg, series, values[:n_train]),
    }
    default = "seasonal" if cfg.data.period > 1 else "diff"
    return TaskData(
        train, val, test, 1, 1, default_scaling=default, forecast_val=forecast_val, meta=meta
    )


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
    pred = torch.full_like(td.test.y, float("nan"))
    pred[td.test.mask] = forecast.to(pred.dtype)[:, None]
    return pred


TASK = Csv()
