"""Prediction from a trained run: one step at every position, or N steps fed back."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch

from lstmkit.checkpoint import Run, write_json
from lstmkit.errors import DataError, RunDirError
from lstmkit.limits import FLOAT32_MAX, MAX_HORIZON
from lstmkit.model import zero_head
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
    """What :func:`intervals` widens forecasts by.

    With rolling origins (``fv["calib"]``; a many-series run pools every series'): for each
    step ahead h, the sorted absolute errors of the H-step forecasts from every origin over
    the training and validation parts, divided by the local scale of the origin's window,
    both for the model and for its reference forecast (the zero-output model). The model's
    own errors on data it trained on are optimistic; the reference forecast fitted nothing,
    so its errors are honest, and :func:`intervals` takes the wider of the two quantiles.
    Without (too short a series): the validation residuals divided by sqrt(h), pooled."""
    cal = fv.get("calib")
    if cal is None or not len(cal["target"]):
        return _calibrate_pooled(model, scaler, fv, window)
    reference = zero_head(copy.deepcopy(model))
    steps = {
        name: _step_residuals(m, scaler, cal, window)
        for name, m in (("model", model), ("reference", reference))
    }
    # fewer origins than steps (a very short series): keep the steps both have residuals
    # for; intervals() grows the last one's width beyond them
    pairs = zip(steps["model"], steps["reference"], strict=True)
    k = next((h for h, (a, b) in enumerate(pairs) if not (a and b)), None)
    if k == 0:
        return _calibrate_pooled(model, scaler, fv, window)
    steps = {name: z[:k] for name, z in steps.items()}
    end = float(cal["local_scale"][-1])  # the window that ends the validation part
    return {
        "method": "rolling-origin absolute errors / local scale, per step ahead; the wider "
        "of the model's and its reference forecast's quantile",
        "local_scale": round(end, 9),
        "scaled_residuals_by_step": steps,
    }


def _step_residuals(model, scaler, cal: dict, window: int) -> list[list[float]]:
    """Per step ahead, the sorted finite |forecast - target| / local scale."""
    pred = validation_forecasts(model, scaler, cal, window).double()
    z = (pred - cal["target"].double()).abs() / cal["local_scale"].double()[:, None]
    out = []
    for col in z.T:
        col = col[torch.isfinite(col)]
        out.append(sorted(round(float(v), 4) for v in col))
    return out


@torch.no_grad()
def _calibrate_pooled(model, scaler, fv: dict, window: int) -> dict:
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


def intervals(run: Run, fc, level: float, context=None):
    """(lo, hi) arrays around forecasts ``fc`` (H,) at ``level`` percent.

    A run calibrated by step ahead (see :func:`calibrate`): at step h, the split-conformal
    quantile of step h's scaled errors (the wider of the model's and the reference's, never
    narrower than at an earlier step), times the local scale of ``context`` (the values the
    forecast started from; None: the window that ended the run's validation part); past the
    calibrated steps, the last step's width grows with sqrt(h). An older run: the pooled
    quantile times sqrt(h)."""
    if not 0 < level < 100:
        raise DataError(f"--level must be between 0 and 100 (percent), got {level:g}")
    f = np.asarray(fc, dtype=np.float64)
    cal = _calibration(run)
    if "scaled_residuals_by_step" in cal:
        half = _step_widths(cal, level, len(f)) * _scale_of(run, cal, context)
    else:
        z = _residuals(run)
        half = _quantile(z, level) * np.sqrt(np.arange(1, len(f) + 1))
    lo, hi = f - half, f + half
    if not (np.abs(lo) <= FLOAT32_MAX).all() or not (np.abs(hi) <= FLOAT32_MAX).all():
        raise RunDirError(
            f"{run.path / INTERVALS} gives intervals beyond float32's range (a damaged file)"
        )
    return lo, hi


def _quantile(z: np.ndarray, level: float) -> float:
    """The split-conformal quantile of sorted scores ``z`` at ``level`` percent."""
    k = min(len(z) - 1, math.ceil((len(z) + 1) * level / 100) - 1)
    return float(z[k])


def _step_widths(cal: dict, level: float, H: int) -> np.ndarray:
    """(H,) scaled half-widths: per calibrated step the wider of the two quantiles, made
    non-decreasing in h (a few residuals per step make them jagged); beyond, sqrt growth."""
    per = [
        max(_quantile(np.asarray(m), level), _quantile(np.asarray(r), level))
        for m, r in zip(*cal["scaled_residuals_by_step"].values(), strict=True)
    ]
    w = np.maximum.accumulate(np.asarray(per))
    k = len(w)
    if k >= H:
        return w[:H]
    return np.concatenate([w, w[-1] * np.sqrt(np.arange(k + 1, H + 1) / k)])


def _scale_of(run: Run, cal: dict, context) -> float:
    """The local scale of the last data.length values of ``context`` (None: the saved one)."""
    if context is None:
        return cal["local_scale"]
    from lstmkit.data.csv import local_scale

    w = torch.as_tensor(np.asarray(context, dtype=np.float64)[-run.config.data.length :])
    if w.numel() < 2:
        return cal["local_scale"]
    return float(local_scale(w[None], cal["local_scale"])[0])


def _calibration(run: Run) -> dict:
    """intervals.json of ``run``, checked: the per-step form, or the older pooled one."""
    p = run.path / INTERVALS
    if not p.is_file():
        raise DataError(
            f"run {run.path} has no {INTERVALS} (trained before intervals, or not a csv run)"
        )
    try:
        cal = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RunDirError(f"{p} is corrupted: expected JSON with a scaled_residuals list") from None
    if not isinstance(cal, dict) or "scaled_residuals_by_step" not in cal:
        return {}
    return _checked_steps(cal, p)


def _checked_steps(cal: dict, p) -> dict:
    """RunDirError unless ``cal`` holds a finite local scale > 0 and, for the model and the
    reference, equally many non-empty lists of finite residuals >= 0."""
    bad = RunDirError(
        f"{p} is corrupted: expected a local_scale > 0 and scaled_residuals_by_step with "
        "'model' and 'reference' lists of finite residuals >= 0 per step"
    )
    steps, scale = cal.get("scaled_residuals_by_step"), cal.get("local_scale")
    ok = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    ok = ok and math.isfinite(scale) and scale > 0 and isinstance(steps, dict)
    ok = ok and set(steps) == {"model", "reference"}
    lists = list(steps.values()) if ok else []
    ok = ok and all(isinstance(v, list) and v for v in lists) and len(lists[0]) == len(lists[1])
    for per_step in lists if ok else []:
        for z in per_step:
            nums = isinstance(z, list) and z and all(_is_number(v) for v in z)
            if not nums or not all(math.isfinite(v) and v >= 0 for v in z):
                raise bad
    if not ok:
        raise bad
    return cal


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
