"""Covariates of a csv series, and the step inputs they make.

Three kinds of extra input, each one column per name (date features: two):

- ``features`` (past covariates): known only up to each step, like the series itself. The
  input at step t holds their values at t.
- ``future_features``: known in advance (a price list, a holiday flag). The input at step t
  holds their values at the step(s) it predicts; ``predict`` reads them for the horizon from
  the context file's rows after the last target value (rows whose target cell is blank).
- ``date_features``: the position of the predicted step in a calendar cycle, from the date
  column (future dates follow from the frequency), as sin and cos so December is next to
  January.

How past covariates enter a multi-step forecast: a recursive forecast feeds each prediction
back as the next input, and would need the covariates' values at every step of the horizon,
which nobody knows. Feeding them lagged by H would make every step's input H steps stale,
and forecasting them with the model would need a second model. So a run with past
covariates uses the direct strategy (``strategy`` auto picks it; recursive is refused): the
input at the origin holds everything known there (the series and covariates up to the
origin, the known-in-advance values for all H steps ahead), and the head outputs the H
values at once (y (N, T, H)).

Step inputs, one row per step t (:func:`step_rows`): ``[v_t, past_t, K_{t+1}, ..., K_{t+S}]``
with K the known-in-advance columns (future features, then date features) and S the steps
one input predicts (1 recursive, H direct). Scaling (:mod:`lstmkit.scaling`) standardises
every column after the first with the training part's mean and std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import torch
from torch import Tensor

from lstmkit import timeseries as ts
from lstmkit.errors import ConfigError, DataError


def _cycle_dayofyear(d: datetime) -> float:
    return (d.timetuple().tm_yday - 1) / 365.25


# name -> the position of a date in its cycle, in [0, 1)
DATE_FEATURES = {
    "month": lambda d: (d.month - 1) / 12,
    "quarter": lambda d: (d.month - 1) // 3 / 4,
    "weekofyear": lambda d: (d.isocalendar()[1] - 1) / 53,
    "dayofyear": _cycle_dayofyear,
    "dayofmonth": lambda d: (d.day - 1) / 31,
    "dayofweek": lambda d: d.weekday() / 7,
    "hour": lambda d: d.hour / 24,
    "minute": lambda d: d.minute / 60,
}


def names(text: str) -> list[str]:
    """The names of a comma-separated option ("" = none), stripped."""
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


@dataclass(frozen=True)
class Spec:
    """Which covariates a csv run reads, and how many steps one input predicts."""

    past: tuple[str, ...] = ()
    future: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    steps: int = 1  # S: 1 recursive, H direct

    @property
    def columns(self) -> tuple[str, ...]:
        """The file's columns read besides the series."""
        return self.past + self.future

    @property
    def known_width(self) -> int:
        return len(self.future) + 2 * len(self.dates)

    @property
    def input_size(self) -> int:
        return 1 + len(self.past) + self.steps * self.known_width

    @property
    def any(self) -> bool:
        return bool(self.past or self.future or self.dates)


def spec(c, direct: bool, horizon: int, date_column: str) -> Spec:
    """The :class:`Spec` of [csv] options ``c`` (checked: names known, no column twice, date
    features only with a date column, ``date_column``)."""
    past, future, dates = names(c.features), names(c.future_features), names(c.date_features)
    bad = [d for d in dates if d not in DATE_FEATURES]
    if bad:
        raise ConfigError(
            f"csv.date_features: unknown name {bad[0]!r}; expected some of "
            f"{', '.join(DATE_FEATURES)}"
        )
    seen: set[str] = set()
    for name in [*past, *future]:
        if name in seen or name == c.column or name == date_column:
            raise ConfigError(
                f"covariate column {name!r} is given twice (or is the series' value or date "
                "column); list each column once"
            )
        seen.add(name)
    if dates and not date_column:
        raise ConfigError("csv.date_features need the dates: pass --date-column as well")
    return Spec(tuple(past), tuple(future), tuple(dates), horizon if direct else 1)


def date_matrix(dates: list[datetime], which: tuple[str, ...]) -> Tensor:
    """(len(dates), 2 * len(which)): sin and cos of each date's position in each cycle."""
    out = torch.empty(len(dates), 2 * len(which), dtype=torch.float32)
    for j, name in enumerate(which):
        f = DATE_FEATURES[name]
        angle = torch.tensor([2 * math.pi * f(d) for d in dates], dtype=torch.float64)
        out[:, 2 * j], out[:, 2 * j + 1] = angle.sin(), angle.cos()
    return out


@dataclass
class Frame:
    """A series and its covariates, aligned: ``values`` (n,), ``past`` (n, Kp), ``known``
    (n + m, Kk): known-in-advance columns, m rows past the series' end (the horizon)."""

    values: Tensor
    past: Tensor
    known: Tensor

    def __len__(self) -> int:
        return self.values.numel()


def frame(series, sp: Spec, n: int, horizon: int) -> Frame:
    """The :class:`Frame` of the first ``n`` values of a read series (lstmkit.data.csvread
    Series): known-in-advance rows run past ``n`` as far as the file has them (future
    features) or ``horizon`` + S steps past it (date features only: future dates follow
    from the frequency)."""
    v = torch.tensor(series.values[:n], dtype=torch.float32)
    past = torch.tensor([series.covariates[c][:n] for c in sp.past], dtype=torch.float32)
    past = past.T if sp.past else torch.empty(n, 0)
    cols = [series.covariates[c] + series.future[c] for c in sp.future]
    rows = len(cols[0]) if cols else n + horizon + sp.steps + 1
    known = torch.tensor(cols, dtype=torch.float32).T if cols else torch.empty(rows, 0)
    if sp.dates:
        known = torch.cat([known, date_matrix(_dates(series, rows), sp.dates)], dim=1)
    return Frame(v, past, known)


def _dates(series, rows: int) -> list[datetime]:
    """``rows`` dates from the series' first: its own, its future rows', then the frequency's."""
    raw = (series.dates + series.future_dates)[:rows]
    out = [ts.parse_date(d, "a date") for d in raw]
    f = series.freq
    if f is None or f.name == "unknown":
        raise DataError("date features need a regular date column; its frequency is unknown")
    last = out[-1]
    out += [ts.add_steps(last, f.name, f.step_s, k) for k in range(1, rows - len(out) + 1)]
    return out


def step_rows(frame: Frame, steps: int, extra: int = 0) -> Tensor:
    """(n + extra, C) step inputs (module docstring); rows t >= n hold NaN for the series
    and past covariates (a forecast fills the series in), and NaN wherever a known value
    lies past the frame's rows. Without covariates: a view of the values, no copy."""
    n, Kk = len(frame), frame.known.size(1)
    v = frame.values
    if frame.past.size(1) == 0 and Kk == 0:
        if extra == 0:
            return v[:, None]
        return torch.cat([v, v.new_full((extra,), math.nan)])[:, None]
    nan = math.nan
    series = torch.cat([v[:, None], frame.past], dim=1)
    series = torch.cat([series, series.new_full((extra, series.size(1)), nan)])
    if Kk == 0:
        return series
    total = n + extra + steps + 1
    known = frame.known[:total]
    known = torch.cat([known, known.new_full((total - known.size(0), Kk), nan)])
    # row t: K_{t+1} .. K_{t+S}, flattened step-major
    block = known.unfold(0, steps, 1)[1 : n + extra + 1].transpose(1, 2)
    return torch.cat([series, block.reshape(n + extra, steps * Kk)], dim=1)


def need_future(frame: Frame, spec_: Spec, horizon: int, where: str) -> None:
    """DataError unless the frame holds the known-in-advance values of ``horizon`` steps
    after its last value (future features only: dates are generated; a direct run reads
    all the steps it forecasts at once, whatever is asked)."""
    have = frame.known.size(0) - len(frame)
    if spec_.future and have < horizon:
        raise DataError(
            f"{where}: the future features {', '.join(spec_.future)} are needed for the "
            f"{horizon} steps this run forecasts, in rows after the last value (their "
            f"target cells blank); found {have} such row(s)"
        )
