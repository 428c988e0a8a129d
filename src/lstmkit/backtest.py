"""Rolling-origin evaluation of a csv run beside naive and classical baselines.

K windows of H = csv.horizon steps end at the series' end, their origins ``step`` apart.
Each method forecasts every window from the values before its origin; MAE, RMSE, sMAPE and
MASE (scaled by the in-sample seasonal-naive error of the values before the origin) are
reported per window and on average. Without ``refit`` the run's own model forecasts every
window, and a window before the run's test part overlaps what it trained on (marked
"in-sample"); with ``refit`` a model with the run's config is trained on the values before
each origin (the last H of them as validation). ETS, Theta and ARIMA come from statsmodels
when it is installed (``pip install lstmkit[classical]``).

A run with covariates forecasts from the input rows of the series and its covariates (the
known-in-advance ones read at their true future values). A run of many series
(``--id-column``) is backtested series by series, its forecasts scaled back by each
series' scale; the table pools every series' windows and adds each series' mean MASE.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from dataclasses import dataclass, field

import numpy as np

from lstmkit import data as tasks
from lstmkit.checkpoint import Run, load_run
from lstmkit.errors import ConfigError, DataError

METRICS = ("mae", "rmse", "smape", "mase")


def score(pred, truth, history, period: int) -> dict[str, float]:
    """MAE, RMSE, sMAPE (percent) and MASE of ``pred`` against ``truth`` (H,); the MASE
    scale is the mean absolute seasonal difference of ``history`` (lag 1 without a season)."""
    p, t, h = (np.asarray(a, dtype=np.float64) for a in (pred, truth, history))
    err = np.abs(p - t)
    denom = np.abs(p) + np.abs(t)
    smape = np.where(denom > 0, 200 * err / np.where(denom > 0, denom, 1), 0.0)
    m = period if len(h) > period else 1
    scale = float(np.mean(np.abs(h[m:] - h[:-m]))) if len(h) > m else math.nan
    return {
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "smape": float(smape.mean()),
        "mase": float(err.mean() / scale) if scale > 0 else math.nan,
    }


def naive_forecasts(history, horizon: int, period: int) -> dict[str, np.ndarray]:
    """naive (last value), seasonal naive (last season; period > 1) and drift (the line
    through the first and last values)."""
    h = np.asarray(history, dtype=np.float64)
    steps = np.arange(1, horizon + 1)
    out = {"naive": np.full(horizon, h[-1])}
    if period > 1:
        out[f"seasonal naive ({period})"] = h[-period + (steps - 1) % period]
    slope = (h[-1] - h[0]) / (len(h) - 1) if len(h) > 1 else 0.0
    out["drift"] = h[-1] + slope * steps
    return out


def classical_forecasts(history, horizon: int, period: int) -> dict[str, np.ndarray]:
    """ETS (the lowest AICc among no trend / damped additive trend, with an additive or, for
    positive data, multiplicative season when period > 1), Theta and ARIMA(1,1,1) (with a
    seasonal (0,1,1) part for periods up to 12); {} without statsmodels."""
    try:
        from statsmodels.tsa.arima.model import ARIMA
        from statsmodels.tsa.forecasting.theta import ThetaModel
        from statsmodels.tsa.holtwinters import ExponentialSmoothing
    except ImportError:
        return {}
    y = np.asarray(history, dtype=np.float64)
    seasonal = period > 1 and len(y) >= 2 * period + 2
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' convergence chatter, not errors
        best = None
        seasons = [None] + (["add"] + (["mul"] if (y > 0).all() else []) if seasonal else [])
        for trend in (None, "add"):
            for season in seasons:
                try:
                    fit = ExponentialSmoothing(
                        y,
                        trend=trend,
                        damped_trend=trend is not None,
                        seasonal=season,
                        seasonal_periods=period if season else None,
                        initialization_method="estimated",
                    ).fit()
                except (ValueError, np.linalg.LinAlgError):
                    continue
                if np.isfinite(fit.aicc) and (best is None or fit.aicc < best.aicc):
                    best = fit
        if best is not None:
            out["ETS"] = np.asarray(best.forecast(horizon))
        theta = ThetaModel(y, period=period if seasonal else 1, deseasonalize=seasonal)
        out["Theta"] = np.asarray(theta.fit().forecast(horizon))
        s_order = (0, 1, 1, period) if seasonal and period <= 12 else (0, 0, 0, 0)
        try:
            arima = ARIMA(y, order=(1, 1, 1), seasonal_order=s_order).fit()
            out["ARIMA"] = np.asarray(arima.forecast(horizon))
        except (ValueError, np.linalg.LinAlgError) as e:
            warnings.warn(f"ARIMA failed on this window: {e}", stacklevel=2)
    return out


@dataclass
class Backtest:
    horizon: int
    period: int
    origins: list[int]
    in_sample: list[bool]  # the window overlaps what the run's model trained or validated on
    windows: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # method -> rows
    coverage: dict[str, float] = field(default_factory=dict)  # level -> share inside
    series: dict[str, dict[str, float]] = field(default_factory=dict)  # id -> method -> MASE

    def mean(self, method: str) -> dict[str, float]:
        rows = self.windows[method]
        return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}

    def verdicts(self) -> list[str]:
        """One line per baseline: does the LSTM beat it on mean MASE?"""
        lstm = self.mean("LSTM")["mase"]
        out = []
        for name in self.windows:
            if name == "LSTM":
                continue
            other = self.mean(name)["mase"]
            word = "beats" if lstm < other else "does NOT beat"
            out.append(f"LSTM {word} {name}: mean MASE {lstm:.3f} vs {other:.3f}")
        return out

    def to_dict(self) -> dict:
        return {
            "horizon": self.horizon,
            "period": self.period,
            "origins": self.origins,
            "in_sample": self.in_sample,
            "windows": self.windows,
            "mean": {m: self.mean(m) for m in self.windows},
            "coverage": self.coverage,
            "verdicts": self.verdicts(),
            **({"series": self.series} if self.series else {}),
        }

    def table(self) -> str:
        w0 = max(len(n) for n in self.windows) + 2
        k = len(self.origins)
        marks = sum(self.in_sample)
        lines = [
            f"backtest: {k} window(s) of {self.horizon} steps, origins {self.origins}"
            + (f" ({marks} in-sample for the run's model)" if marks else ""),
            "method".ljust(w0) + "".join(c.rjust(10) for c in METRICS) + "  MASE per window",
        ]
        for name in self.windows:
            mean = self.mean(name)
            per = " ".join(f"{r['mase']:.3f}" for r in self.windows[name])
            lines.append(name.ljust(w0) + "".join(f"{mean[c]:10.4g}" for c in METRICS) + "  " + per)
        for level, cov in self.coverage.items():
            lines.append(f"{level}% interval: {100 * cov:.1f}% of the actual values inside")
        return "\n".join(lines + self.verdicts() + self._series_lines())

    def _series_lines(self) -> list[str]:
        """Many series: the means above pool every series' windows; per series, the LSTM's
        mean MASE beside the best baseline's."""
        out = [f"{len(self.series)} series, mean MASE per series:"] if self.series else []
        for key, means in self.series.items():
            others = {m: v for m, v in means.items() if m != "LSTM"}
            best = min(others, key=others.get)
            word = "beats" if means["LSTM"] < others[best] else "does NOT beat"
            out.append(f"  {key}: LSTM {means['LSTM']:.3f} {word} {best} {others[best]:.3f}")
        return out


def _series(run: Run, cfg):
    """The run's series as read for ``cfg`` (resolved), with its covariate columns, cut to
    csv.rows."""
    from lstmkit.data import csv

    c, sp, meta = cfg.csv, csv.spec(cfg), run.task.meta
    s = csv.read(c.file, meta["column"], meta["date_column"], c.fill, sp.columns, sp.future)
    if c.rows:
        s.values = s.values[: c.rows]
        s.covariates = {k: v[: c.rows] for k, v in s.covariates.items()}
    return s


def _forecast(run: Run, series, origin: int, H: int, scale: float = 1.0) -> np.ndarray:
    """The run's H-step forecast from ``origin`` in the units it works in (the series
    divided by ``scale``): from the values alone, or from the input rows of the series and
    its covariates."""
    from lstmkit.data.panel import normalized
    from lstmkit.forecast import forecast
    from lstmkit.multistep import series_forecasts, uses_rows

    if scale != 1.0:
        series = normalized(series, scale)
    if uses_rows(run) or scale != 1.0:
        return series_forecasts(run, series, H, [origin])[0].numpy().astype(np.float64)
    return np.asarray(forecast(run, series.values[:origin], H))


def backtest(
    run: Run,
    windows: int = 3,
    step: int | None = None,
    refit: bool = False,
    levels: tuple[float, ...] = (),
    classical: bool = True,
) -> Backtest:
    """Rolling-origin evaluation of ``run`` (a csv run); see the module docstring."""
    cfg = tasks.resolve(run.config)
    if cfg.data.task != "csv":
        raise DataError(f"backtest takes a run of the csv task, got one of {cfg.data.task!r}")
    if isinstance(windows, bool) or windows < 1:
        raise ConfigError(f"--windows must be an integer >= 1, got {windows!r}")
    H = cfg.csv.horizon
    step = H if step is None else step
    if step < 1:
        raise ConfigError(f"--step must be an integer >= 1, got {step!r}")
    if cfg.csv.id_column:
        return _panel(run, cfg, windows, step, refit, levels, classical)
    return _one(run, cfg, _series(run, cfg), windows, step, refit, levels, classical)


def _one(run, cfg, series, windows, step, refit, levels, classical, scale=1.0) -> Backtest:
    """The backtest of one series (``scale``: its per-series scale in a many-series run)."""
    from lstmkit.forecast import intervals

    H, p, L = cfg.csv.horizon, cfg.data.period, cfg.data.length
    values = series.values
    n = len(values)
    origins = [n - H - (windows - 1 - k) * step for k in range(windows)]
    need = max(L, p) + 1 + (H if refit else 0)  # a refit validates on the H before
    if origins[0] < need:
        raise DataError(
            f"{windows} windows of {H} steps, {step} apart, leave {origins[0]} values before "
            f"the first origin; it needs at least {need} (the series has {n} values)"
        )
    held_out = n - cfg.csv.test_size
    bt = Backtest(H, p, origins, [o < held_out and not refit for o in origins])
    widths = {lv: [] for lv in levels}
    for o in origins:
        history, truth = values[:o], values[o : o + H]
        with tempfile.TemporaryDirectory(prefix="lstmkit-backtest-") as tmp:
            model_run = _refit(cfg, o, tmp) if refit else run
            fc = _forecast(model_run, series, o, H, scale)
            preds = {"LSTM": fc * scale}
            ctx = np.asarray(history, dtype=np.float64) / scale  # the forecast's own units
            bands = {lv: [b * scale for b in intervals(model_run, fc, lv, ctx)] for lv in levels}
        preds.update(naive_forecasts(history, H, p))
        if classical:
            preds.update(classical_forecasts(history, H, p))
        for name, pred in preds.items():
            bt.windows.setdefault(name, []).append(score(pred, truth, history, p))
        t = np.asarray(truth)
        for lv, (lo, hi) in bands.items():
            widths[lv].append(((t >= lo) & (t <= hi)).mean())
    bt.coverage = {f"{lv:g}": float(np.mean(c)) for lv, c in widths.items()}
    return bt


def _panel(run, cfg, windows, step, refit, levels, classical) -> Backtest:
    """Every series of a many-series run, its windows pooled; per-series means kept."""
    from lstmkit.data import csv, panel

    if refit:
        raise ConfigError("--refit retrains a single-series run; this run has many (--id-column)")
    raw, name = csv._source(cfg.csv.file)
    everything = panel.read_all(cfg, raw, name, csv.spec(cfg), run.task.meta["date_column"])
    scales = run.task.meta.get("series_scale", {})
    parts = {}
    for key, s in everything:
        if key not in scales:
            raise DataError(f"series {key!r} is not one this run was trained on")
        parts[key] = _one(run, cfg, s, windows, step, False, levels, classical, scales[key])
    first = next(iter(parts.values()))
    bt = Backtest(first.horizon, first.period, first.origins, first.in_sample)
    for part in parts.values():
        for method, rows in part.windows.items():
            bt.windows.setdefault(method, []).extend(rows)
    bt.coverage = {
        lv: float(np.mean([p.coverage[lv] for p in parts.values()])) for lv in first.coverage
    }
    bt.series = {k: {m: p.mean(m)["mase"] for m in p.windows} for k, p in parts.items()}
    return bt


def _refit(cfg, origin: int, tmp: str) -> Run:
    """A model with the run's resolved config ``cfg`` trained in ``tmp`` on the values before
    ``origin`` (the last H of them validate)."""
    from lstmkit.train import train

    H = cfg.csv.horizon
    part = dataclasses.replace(cfg.csv, rows=origin + H, test_size=H)
    train(dataclasses.replace(cfg, csv=part), tmp + "/run", progress=False)
    return load_run(tmp + "/run")
