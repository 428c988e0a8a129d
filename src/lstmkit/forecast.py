"""Prediction from a trained run: one step at every position, or N steps fed back."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from lstmkit.checkpoint import Run, write_json
from lstmkit.errors import DataError, RunDirError
from lstmkit.limits import FLOAT32_MAX, MAX_HORIZON
from lstmkit.multistep import is_direct, paths, validation_forecasts

INTERVALS = "intervals.json"


def _context(run: Run, values) -> torch.Tensor:
    """User values as x (1, T, 1) float32, checked."""
    if run.task.tokens or run.task.input_size != 1:
        raise DataError(
            f"this run's model takes {run.task.input_size} value(s) per step "
            f"({'tokens' if run.task.tokens else 'features'}); predict takes one series"
        )
    vals = [float(v) for v in values]
    if not vals:
        raise DataError("predict needs at least one value, got none")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise DataError(f"values must be finite numbers, got {bad[0]}")
    x = torch.tensor(vals, dtype=torch.float32).view(1, -1, 1)
    if not bool(torch.isfinite(x).all()):  # finite as a double, beyond float32's range
        big = vals[int((~torch.isfinite(x.view(-1))).nonzero()[0])]
        raise DataError(
            f"values must be within float32's range (|v| <= {FLOAT32_MAX:.4g}), got {big:g}"
        )
    return x


def _need_defined(run: Run, n: int, what: str) -> None:
    """Seasonal scaling reads a value one period back: with no step past the first period
    there is nothing the model was trained to predict from."""
    if not bool(run.scaler.defined(n).any()):
        p = run.scaler.period
        raise DataError(
            f"this run's seasonal scaling (period {p}) needs at least {p + 1} values to "
            f"{what}, got {n}"
        )


@torch.no_grad()
def predict_steps(run: Run, values) -> list[float | None]:
    """The one-step prediction after every prefix of ``values`` (the tutorial's output).

    None where the run's scaling has no prediction: under seasonal scaling the first
    ``period`` steps, whose inputs would need values from before the first one (training
    masks those steps out too)."""
    x = _context(run, values)
    _need_defined(run, x.size(1), "predict")
    xs, _ = run.scaler.encode(x)
    pred = run.scaler.decode(run.model(xs)[..., :1], x).view(-1).tolist()  # direct: 1 ahead
    ok = run.scaler.defined(x.size(1)).tolist()
    return [v if good else None for v, good in zip(pred, ok, strict=True)]


@torch.no_grad()
def forecast(run: Run, values, horizon: int) -> list[float]:
    """The next ``horizon`` values after ``values``, each prediction fed back as input.

    Each step reads the last ``data.length`` values (the window the model was trained on),
    as forecasting tools do with their input chunk."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= MAX_HORIZON:
        raise DataError(f"horizon must be an integer in 1..{MAX_HORIZON}, got {horizon!r}")
    x = _context(run, values)
    _need_defined(run, x.size(1), "forecast")
    if is_direct(run):  # H steps at once from the last window
        window = run.config.data.length
        return paths(run.model, run.scaler, x, horizon, window, direct=True)[0].tolist()
    fc = recursive(run.model, run.scaler, x, horizon, run.config.data.length)[0]
    bad = (~torch.isfinite(fc)).nonzero()
    if bad.numel():
        raise DataError(
            f"the forecast leaves the range of numbers at step {int(bad[0]) + 1} of {horizon} "
            "(the model's values grow without bound); ask for a shorter --horizon"
        )
    return fc.tolist()


@torch.no_grad()
def recursive(model, scaler, x: torch.Tensor, horizon: int, window: int) -> torch.Tensor:
    """(N, horizon) forecasts after each context x (N, T, 1), each prediction fed back;
    every step reads the last ``window`` values (the window the model was trained on).

    Only that window is kept from step to step, so each step costs O(window) whatever the
    horizon and the context's length. A forecast that leaves the finite numbers (a model
    that grows without bound over a long horizon) is NaN from that step on."""
    ctx = x[:, -window:]
    out = []
    for k in range(horizon):
        xs, _ = scaler.encode(ctx)
        nxt = scaler.decode(model(xs)[:, -1:], ctx)  # (N, 1, 1)
        out.append(nxt)
        if not bool(torch.isfinite(nxt).all()):  # fed back, it would poison the scaler
            out.append(torch.full_like(nxt, math.nan).expand(-1, horizon - k - 1, -1))
            break
        ctx = torch.cat([ctx[:, 1 - window :] if window > 1 else ctx[:, :0], nxt], dim=1)
    return torch.cat(out, dim=1)[:, :, 0]


@torch.no_grad()
def calibrate(model, scaler, fv: dict, window: int) -> dict:
    """Residuals of the model's recursive forecasts from every validation origin, each
    divided by sqrt(h) (h: steps ahead), sorted: what :func:`intervals` widens by."""
    target = fv["target"]
    pred = validation_forecasts(model, scaler, fv, window)
    h = torch.arange(1, target.size(1) + 1, dtype=torch.float64).sqrt()
    z = ((pred.double() - target.double()).abs() / h)[torch.isfinite(target)]
    return {
        "method": "absolute H-step validation residuals / sqrt(h), pooled over h",
        "scaled_residuals": sorted(round(float(v), 6) for v in z if math.isfinite(v)),
    }


def save_calibration(path, calibration: dict) -> None:
    write_json(path / INTERVALS, calibration)


def intervals(run: Run, fc, level: float):
    """(lo, hi) arrays around forecasts ``fc`` (H,) at ``level`` percent: the conformal
    quantile of the run's scaled validation residuals, times sqrt(h)."""
    if not 0 < level < 100:
        raise DataError(f"--level must be between 0 and 100 (percent), got {level:g}")
    z = _residuals(run)
    k = min(len(z) - 1, math.ceil((len(z) + 1) * level / 100) - 1)  # split-conformal rank
    half = z[k] * np.sqrt(np.arange(1, len(fc) + 1))
    f = np.asarray(fc, dtype=np.float64)
    lo, hi = f - half, f + half
    if not (np.abs(lo) <= FLOAT32_MAX).all() or not (np.abs(hi) <= FLOAT32_MAX).all():
        raise RunDirError(
            f"{run.path / INTERVALS} gives intervals beyond float32's range (a damaged file)"
        )
    return lo, hi


def _residuals(run: Run) -> np.ndarray:
    """The run's sorted scaled residuals, checked: a list of finite numbers >= 0."""
    p = run.path / INTERVALS
    if not p.is_file():
        raise DataError(
            f"run {run.path} has no {INTERVALS} (trained before intervals, or not a csv run)"
        )
    try:
        z = json.loads(p.read_text(encoding="utf-8"))["scaled_residuals"]
        ok = isinstance(z, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in z
        )
        z = np.asarray(z if ok else [math.nan], dtype=np.float64)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise RunDirError(f"{p} is corrupted: expected JSON with a scaled_residuals list") from None
    if not len(z):
        raise DataError(f"{p} holds no residuals to calibrate intervals with")
    if not (np.isfinite(z).all() and (z >= 0).all()):
        raise RunDirError(f"{p} is corrupted: scaled_residuals must be finite numbers >= 0")
    return np.sort(z)
