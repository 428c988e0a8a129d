"""Prediction from a trained run: one step at every position, or N steps fed back."""

from __future__ import annotations

import math

import torch

from lstmkit.checkpoint import Run
from lstmkit.errors import DataError


def _context(run: Run, values) -> torch.Tensor:
    """User values as x (1, T, 1) float32, checked."""
    if run.task.get("tokens") or run.task["input_size"] != 1:
        raise DataError(
            f"this run's model takes {run.task['input_size']} value(s) per step "
            f"({'tokens' if run.task.get('tokens') else 'features'}); predict takes one series"
        )
    vals = [float(v) for v in values]
    if not vals:
        raise DataError("predict needs at least one value, got none")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise DataError(f"values must be finite numbers, got {bad[0]}")
    return torch.tensor(vals, dtype=torch.float32).view(1, -1, 1)


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
    pred = run.scaler.decode(run.model(xs), x).view(-1).tolist()
    ok = run.scaler.defined(x.size(1)).tolist()
    return [v if good else None for v, good in zip(pred, ok, strict=True)]


@torch.no_grad()
def forecast(run: Run, values, horizon: int) -> list[float]:
    """The next ``horizon`` values after ``values``, each prediction fed back as input.

    Each step reads the last ``data.length`` values (the window the model was trained on),
    as forecasting tools do with their input chunk."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise DataError(f"horizon must be an integer >= 1, got {horizon!r}")
    x = _context(run, values)
    _need_defined(run, x.size(1), "forecast")
    return recursive(run.model, run.scaler, x, horizon, run.config.data.length)[0].tolist()


@torch.no_grad()
def recursive(model, scaler, x: torch.Tensor, horizon: int, window: int) -> torch.Tensor:
    """(N, horizon) forecasts after each context x (N, T, 1), each prediction fed back;
    every step reads the last ``window`` values (the window the model was trained on)."""
    for _ in range(horizon):
        ctx = x[:, -window:]
        xs, _ = scaler.encode(ctx)
        nxt = scaler.decode(model(xs)[:, -1:], ctx)
        x = torch.cat([x, nxt], dim=1)
    return x[:, -horizon:, 0]
