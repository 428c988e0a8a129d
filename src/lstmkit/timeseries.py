"""The shape of a univariate series, learned from the data: dates and their frequency, gaps
and how to fill them, the season (from the frequency, checked against the autocorrelation),
and the scaling whose zero-signal forecast fits the series best.

Nothing here is tuned to one series: every choice is a rule applied to the data in hand,
and every choice is reported (:func:`describe`) and saved with the run.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from lstmkit.errors import DataError

DAY = 86400.0
# name, typical spacing in days, the season it suggests (1: none)
FREQUENCIES = (
    ("yearly", 365.25, 1),
    ("quarterly", 91.3, 4),
    ("monthly", 30.44, 12),
    ("weekly", 7.0, 52),
    ("daily", 1.0, 7),
)
MONTHS = {"monthly": 1, "quarterly": 3, "yearly": 12}
FILLS = ("none", "ffill", "interpolate", "drop")
MISSING = {"", "na", "n/a", "nan", "null", "none", "-", "?"}


def parse_date(raw: str, where: str) -> datetime:
    """An ISO date or date-time; also 1949-01 (a month), 1871 (a year) and 1959Q1."""
    text = raw.strip()
    q = re.fullmatch(r"(\d{4})-?[Qq]([1-4])", text)
    if q:
        return datetime(int(q.group(1)), 3 * int(q.group(2)) - 2, 1)
    for candidate in (text, text + "-01", text + "-01-01"):
        try:
            d = datetime.fromisoformat(candidate)
        except ValueError:
            continue
        return d.replace(tzinfo=None)  # time zones are kept in the text, not compared
    raise DataError(f"{where}: expected an ISO date such as 1949-01 or 1949-01-31, got {raw!r}")


def _months(a: datetime, b: datetime) -> int:
    return (b.year - a.year) * 12 + b.month - a.month


def add_steps(d: datetime, freq: str, step_s: float, k: int) -> datetime:
    """The date ``k`` steps of frequency ``freq`` after ``d``."""
    if freq in MONTHS:
        m = d.month - 1 + k * MONTHS[freq]
        y, m = d.year + m // 12, m % 12 + 1
        last = calendar.monthrange(d.year, d.month)[1] == d.day  # month-end dates stay so
        day = calendar.monthrange(y, m)[1] if last else min(d.day, calendar.monthrange(y, m)[1])
        return d.replace(year=y, month=m, day=day)
    return d + timedelta(seconds=step_s * k)


def format_like(d: datetime, sample: str) -> str:
    """``d`` written as the column writes its dates (``sample``: one of them)."""
    s = sample.strip()
    if re.fullmatch(r"\d{4}", s):
        return f"{d.year:04d}"
    if re.fullmatch(r"\d{4}-?[Qq][1-4]", s):
        return f"{d.year:04d}{'-' if '-' in s else ''}Q{(d.month - 1) // 3 + 1}"
    if re.fullmatch(r"\d{4}-\d{2}", s):
        return f"{d.year:04d}-{d.month:02d}"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        return d.date().isoformat()
    return d.isoformat(sep=" " if " " in s else "T")


@dataclass
class Frequency:
    name: str  # yearly | quarterly | monthly | weekly | daily | sub-daily (N s) | unknown
    step_s: float  # seconds per step (calendar steps: their typical length)
    season: int  # the season the frequency suggests (1: none)
    missing: int = 0  # timestamps absent inside the series
    irregular: int = 0  # spacings that are not a whole number of steps

    def steps_between(self, a: datetime, b: datetime) -> float:
        if self.name in MONTHS:
            exact = _months(a, b) / MONTHS[self.name]
            return exact if abs((b - add_steps(a, self.name, 0, round(exact))).days) < 4 else -1
        return (b - a).total_seconds() / self.step_s


def infer_frequency(dates: list[datetime]) -> Frequency:
    """The frequency of increasing ``dates`` from their median spacing; counts missing
    timestamps (a spacing of k > 1 whole steps) and irregular spacings."""
    if len(dates) < 2:
        return Frequency("unknown", 0.0, 1)
    gaps = np.diff([d.timestamp() for d in dates])
    med = float(np.median(gaps))
    freq = None
    for name, days, season in FREQUENCIES:
        if abs(med / DAY - days) <= 0.08 * days + 0.5 * (name != "daily"):
            freq = Frequency(name, days * DAY if name not in MONTHS else med, season)
            break
    if freq is None:
        if med < DAY:  # sub-daily: the season is one day when a day holds whole steps
            per_day = DAY / med
            season = round(per_day) if abs(per_day - round(per_day)) < 1e-6 else 1
            label = "hourly" if abs(med - 3600) < 1 else f"sub-daily ({med:g} s)"
            freq = Frequency(label, med, season)
        else:
            freq = Frequency(f"every {med / DAY:g} days", med, 1)
    for a, b in zip(dates, dates[1:], strict=False):
        k = freq.steps_between(a, b)
        if k < 0 or abs(k - round(k)) > 0.05:
            freq.irregular += 1
        elif round(k) > 1:
            freq.missing += round(k) - 1
    return freq


def acf(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Sample autocorrelation of ``x`` at lags 0..max_lag (FFT)."""
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    n = len(x)
    f = np.fft.rfft(x, 2 * n)
    r = np.fft.irfft(f * np.conj(f))[: max_lag + 1]
    return r / r[0] if r[0] > 0 else np.zeros(max_lag + 1)


def _season_strength(x: np.ndarray, p: int, slack: int = 0) -> tuple[float, float]:
    """(autocorrelation at lag p, its 95% one-sided bound under no season beyond lag p) of
    the first differences (a trend would make every lag look correlated). A season shows as
    a peak at its lag; a persistent series' autocorrelation decays through it instead, so
    no peak at lag p (within ``slack`` lags: 52.18 weeks a year) counts as none (0)."""
    d = np.diff(np.asarray(x, dtype=np.float64))
    r = acf(d, min(p + 2, len(d) - 1))
    bound = 1.645 * math.sqrt((1 + 2 * float(np.sum(r[1:p] ** 2))) / len(d))
    near = [q for q in range(p - slack, p + slack + 1) if 1 <= q < len(r)]
    q = max(near, key=lambda k: r[k])
    peak = all(r[q] >= r[k] for k in (q - 1, q + 1) if 1 <= k < len(r))
    return (float(r[p]) if peak else 0.0), bound


def choose_period(values, freq: Frequency | None) -> tuple[int, str]:
    """(season, why): the frequency's season when the data show it, else the strongest
    autocorrelation peak (no dates), else 1 (no season)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if freq is not None and freq.name != "unknown":
        p = freq.season
        if p <= 1:
            return 1, f"{freq.name} data: no season"
        if n < 3 * p + 1:
            return 1, f"{freq.name} data suggest {p}, but {n} values are under 3 seasons"
        r, bound = _season_strength(x, p, slack=int(freq.name == "weekly"))
        if r > bound:
            return p, f"{freq.name} data, autocorrelation {r:.2f} at lag {p} (bound {bound:.2f})"
        return 1, f"{freq.name} data suggest {p}, dropped: autocorrelation {r:.2f} <= {bound:.2f}"
    max_lag = min(n // 3, 400)
    if max_lag < 2:
        return 1, "no dates and too few values to look for a season"
    d = np.diff(x)
    r = acf(d, max_lag)
    best, best_r = 1, 0.0
    for p in range(2, max_lag + 1):
        peak = r[p] >= r[p - 1] and (p == max_lag or r[p] >= r[p + 1])
        if peak and r[p] > best_r:
            best, best_r = p, float(r[p])
    if best > 1:
        strength, bound = _season_strength(x, best)
        if strength > bound and strength > 0.2:
            return best, f"no dates: autocorrelation peak {strength:.2f} at lag {best}"
    return 1, "no dates and no significant autocorrelation peak: no season"


def fill_missing(values: list[float | None], how: str) -> tuple[list[float], list[int]]:
    """(filled values, indices kept) for ``values`` with None where a value is missing.
    Leading gaps have nothing to fill from and are dropped under every method."""
    kept = [i for i, v in enumerate(values) if v is not None]
    if not kept:
        raise DataError("the column has no values at all")
    if how == "drop":
        return [values[i] for i in kept], kept
    start = kept[0]
    out: list[float] = []
    for i in range(start, len(values)):
        v = values[i]
        if v is not None:
            out.append(v)
            continue
        if how == "ffill":
            out.append(out[-1])
            continue
        nxt = next((j for j in range(i + 1, len(values)) if values[j] is not None), None)
        prev_i = i - 1
        while values[prev_i] is None:
            prev_i -= 1
        if nxt is None:  # trailing gap: nothing to interpolate towards
            out.append(out[-1])
        else:
            w = (i - prev_i) / (nxt - prev_i)
            out.append(values[prev_i] * (1 - w) + values[nxt] * w)
    return out, list(range(start, len(values)))


def reference_forecasts(kind: str, history: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """The forecast a model reading ``kind``-scaled data makes when it outputs zero: what the
    LSTM learns corrections to. standard: the mean; diff: the last value; drift: the last
    value plus the mean step; seasonal: the last season plus the mean seasonal step (of logs,
    a growth rate, when every value is positive)."""
    h = np.asarray(history, dtype=np.float64)
    if kind == "standard":
        return np.full(horizon, h.mean())
    if kind == "diff":
        return np.full(horizon, h[-1])
    p = 1 if kind == "drift" else period
    log = kind == "seasonal" and bool((h > 0).all())
    lv = np.log(h) if log else h.copy()
    c = float(np.mean(lv[p:] - lv[:-p]))
    ext = list(lv)
    for _ in range(horizon):
        ext.append(ext[-p] + c)
    out = np.asarray(ext[len(lv) :])
    return np.exp(out) if log else out


def choose_scaling(values, period: int, horizon: int, length: int) -> tuple[str, str]:
    """(scaling, why): the scaling whose reference forecast (:func:`reference_forecasts`) has
    the lowest mean absolute error over up to 3 rolling origins, ``horizon`` steps each, at
    the end of ``values`` (the training part only). Ties keep the earlier, simpler kind."""
    x = np.asarray(values, dtype=np.float64)
    kinds = ["diff", "drift", "standard"] + (["seasonal"] if period > 1 else [])
    need = max(length, 2 * period + 1, 3)
    origins = [len(x) - horizon * k for k in (1, 2, 3) if len(x) - horizon * k >= need]
    if not origins:
        return ("seasonal" if period > 1 else "diff"), "too little training data to compare"
    errs = {}
    for kind in kinds:
        e = [
            np.abs(reference_forecasts(kind, x[:o], horizon, period) - x[o : o + horizon]).mean()
            for o in origins
        ]
        errs[kind] = float(np.mean(e))
    best = min(kinds, key=lambda k: errs[k])
    scores = ", ".join(f"{k} {v:.4g}" for k, v in errs.items())
    return best, f"reference-forecast MAE on {len(origins)} inner origins: {scores}"
