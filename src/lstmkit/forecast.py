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


@torch.no_grad()
def predict_steps(run: Run, values) -> list[float]:
    """The one-step prediction after every prefix of ``values`` (the tutorial's output)."""
    x = _context(run, values)
    xs, _ = run.scaler.encode(x)
    pred = run.model(xs)
    return run.scaler.decode(pred, x).view(-1).tolist()


@torch.no_grad()
def forecast(run: Run, values, horizon: int) -> list[float]:
    """The next ``horizon`` values after ``values``, each prediction fed back as input.

    Each step reads the last ``data.length`` values (the window the model was trained on),
    as forecasting tools do with their input chunk."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise DataError(f"horizon must be an integer >= 1, got {horizon!r}")
    x = _context(run, values)
    window = run.config.data.length
    for _ in range(horizon):
        ctx = x[:, -window:]
        xs, _ = run.scaler.encode(ctx)
        nxt = run.scaler.decode(run.model(xs)[:, -1:], ctx)
        x = torch.cat([x, nxt], dim=1)
    return x[0, -horizon:, 0].tolist()
