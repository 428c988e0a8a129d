"""Any univariate series from a CSV file; predict the next value at every step.

``--csv FILE --column NAME`` (optional ``--date-column``, checked to increase); without
``--csv`` the packaged airline passengers series (monthly, 1949–1960) is used. The split is
in time order: the last ``test_size`` values are the test, the ``test_size`` before them the
validation, the rest the training series.

- train: every window of ``length`` + 1 consecutive training values, x (N, L, 1),
  y (N, L, 1) shifted by one, all steps counted (``num_train`` does not apply);
- val: one window per validation value, predicting it from the L values before it (only
  the last step counted);
- test: one sequence x (1, L + S - 1, 1), S = test_size, whose last S targets are the test
  values; :mod:`lstmkit.evaluate` forecasts them autoregressively from the first L values.

The run remembers the file's path, column, length and SHA-256 (task meta) and refuses to
evaluate if the file changed.
"""

from __future__ import annotations

import csv as _csv
import hashlib
import math
from datetime import datetime
from importlib import resources
from pathlib import Path

import torch

from lstmkit.data import Split, TaskData, all_steps
from lstmkit.errors import ConfigError, DataError

BUILTIN = "airline_passengers.csv"
BUILTIN_DATES = "month"
DEFAULTS = {
    "data.length": 24,
    "data.period": 12,
    "data.test_size": 24,
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


def _date(raw: str, where: str) -> datetime:
    text = raw.strip()
    for candidate in (text, text + "-01"):  # "1949-01" is a month
        try:
            return datetime.fromisoformat(candidate)
        except ValueError:
            pass
    raise DataError(f"{where}: expected an ISO date such as 1949-01 or 1949-01-31, got {raw!r}")


def parse(raw: bytes, name: str, column: str = "", date_column: str = ""):
    """(values, dates, column) of CSV text ``raw``: values a list of finite floats, dates a
    list of strings ([] without ``date_column``). Every way a file can be unusable raises
    DataError naming the expected and the actual."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {name} is not UTF-8 text ({e})") from None
    rows = [
        (i, r) for i, r in enumerate(_csv.reader(text.splitlines()), 1) if any(c.strip() for c in r)
    ]
    if not rows:
        raise DataError(f"CSV file {name} is empty: expected a header row and data rows")
    header = [h.strip() for h in rows[0][1]]
    body = rows[1:]
    if not body:
        raise DataError(f"CSV file {name} has a header ({', '.join(header)}) but no data rows")
    if not column:
        column = _pick_column(header, body, date_column, name)
    for want, flag in ((column, "--column"), (date_column, "--date-column")):
        if want and want not in header:
            raise DataError(
                f"CSV file {name} has no column {want!r} ({flag}); its columns are "
                f"{', '.join(repr(h) for h in header)}"
            )
    col = header.index(column)
    values, dates = [], []
    for line, row in body:
        cell = row[col].strip() if col < len(row) else ""
        where = f"CSV file {name}, line {line}, column {column!r}"
        try:
            v = float(cell)
        except ValueError:
            raise DataError(f"{where}: expected a number, got {cell!r}") from None
        if not math.isfinite(v):
            raise DataError(f"{where}: expected a finite number, got {cell!r}")
        values.append(v)
        if date_column:
            d = row[header.index(date_column)] if header.index(date_column) < len(row) else ""
            dates.append((line, d))
    _check_dates(dates, name, date_column)
    return values, [d for _, d in dates], column


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


def _check_dates(dates, name, date_column) -> None:
    prev = None
    for line, raw in dates:
        d = _date(raw, f"CSV file {name}, line {line}, column {date_column!r}")
        if prev is not None and d <= prev[0]:
            raise DataError(
                f"CSV file {name}, line {line}: dates must increase, got {raw!r} after {prev[1]!r}"
            )
        prev = (d, raw)


def read_series(path: str, column: str = "", date_column: str = "") -> list[float]:
    """The values of ``column`` in CSV file ``path`` ("" = the packaged airline series)."""
    raw, name = _source(path)
    return parse(raw, name, column, date_column)[0]


def make(cfg, seed: int) -> TaskData:
    raw, name = _source(cfg.csv)
    date_column = cfg.date_column or ("" if cfg.csv else BUILTIN_DATES)
    values, dates, column = parse(raw, name, cfg.column, date_column)
    L, S = cfg.length, cfg.test_size
    n = len(values)
    n_train = n - 2 * S
    if n_train < L + 1:
        raise DataError(
            f"CSV file {name} has {n} values in column {column!r}; data.length {L} and "
            f"data.test_size {S} need at least {L + 1 + 2 * S} (one training window of "
            f"{L + 1}, then {S} for validation and {S} for test)"
        )
    v = torch.tensor(values, dtype=torch.float32)
    train = torch.stack([v[i : i + L + 1] for i in range(n_train - L)])
    train = Split(train[:, :-1, None], train[:, 1:, None], all_steps(train[:, :-1, None]))
    val = torch.stack([v[j - L : j + 1] for j in range(n_train, n_train + S)])
    val_mask = torch.zeros(S, L, dtype=torch.bool)
    val_mask[:, -1] = True
    val = Split(val[:, :-1, None], val[:, 1:, None], val_mask)
    seq = v[n - S - L :]
    test_mask = torch.zeros(1, L + S - 1, dtype=torch.bool)
    test_mask[:, L - 1 :] = True
    test = Split(seq[None, :-1, None], seq[None, 1:, None], test_mask)
    meta = {
        "csv": cfg.csv,
        "column": column,
        "date_column": date_column,
        "values": n,
        "sha256": hashlib.sha256(raw).hexdigest(),
        "period": cfg.period,
        "test_size": S,
        "test_start": dates[n - S] if dates else n - S,
    }
    return TaskData(train, val, test, 1, 1, default_scaling="seasonal", meta=meta)


def check_meta(saved: dict, current: dict) -> None:
    """DataError unless the file is the one the run was trained on."""
    for key in ("column", "values", "sha256"):
        if saved.get(key) != current.get(key):
            where = saved.get("csv") or BUILTIN
            raise DataError(
                f"CSV file {where} changed since training: {key} was {saved.get(key)!r}, "
                f"now {current.get(key)!r}"
            )


def baselines(td: TaskData, cfg) -> dict[str, torch.Tensor]:
    """Forecasts of the test values from the L values before them: the last value, and the
    last season repeated (period ``cfg.period`` > 1)."""
    S, L = td.meta["test_size"], cfg.length
    ctx = td.test.x[0, :L, 0]
    h = torch.arange(S)
    out = {"last value": _place(td, ctx[-1].expand(S))}
    p = cfg.period
    if p > 1:
        out[f"seasonal naive ({p})"] = _place(td, ctx[-p + h % p])
    return out


def _place(td: TaskData, forecast: torch.Tensor) -> torch.Tensor:
    """A (1, T, 1) prediction tensor holding ``forecast`` (S,) at the test steps."""
    pred = torch.full_like(td.test.y, float("nan"))
    pred[td.test.mask] = forecast.to(pred.dtype)[:, None]
    return pred


def test_predictions(run, td: TaskData) -> torch.Tensor:
    """The model's autoregressive forecast of the test values from the L values before them."""
    from lstmkit.forecast import forecast

    L = run.config.data.length
    fc = forecast(run, td.test.x[0, :L, 0].tolist(), td.meta["test_size"])
    return _place(td, torch.tensor(fc))
