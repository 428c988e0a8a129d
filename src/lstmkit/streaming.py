"""Streaming prediction: one value in, its one-step prediction out, (h, c) carried between.

Each value costs one LSTM step, whatever the length of the stream so far: the recurrent
state (h, c) of every layer is kept, and the scaler reads only the few raw values it needs
(``diff`` the previous one, ``offset`` the stream's first, ``seasonal`` the last period + 1),
through the run's own :class:`~lstmkit.scaling.Scaler`. The predictions are those of
:func:`lstmkit.forecast.predict_steps` on the whole stream so far, up to float rounding.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from lstmkit.checkpoint import Run
from lstmkit.errors import DataError


class Stream:
    """``Stream(run).push(v)`` -> the prediction of the value after ``v`` (None where
    ``predict_steps`` has none: the first ``period`` values under seasonal scaling)."""

    def __init__(self, run: Run) -> None:
        if run.task.tokens or run.task.input_size != 1:
            raise DataError(
                f"this run's model takes {run.task.input_size} value(s) per step "
                f"({'tokens' if run.task.tokens else 'features'}); streaming takes "
                "one series"
            )
        self.run = run
        sc = run.scaler
        self._seasonal = sc.kind == "seasonal"
        # raw values the scaler needs to encode the newest step and decode its prediction
        self._recent: deque[float] = deque(maxlen=sc.period + 1 if self._seasonal else 2)
        self._first: float | None = None
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None  # (h, c) of every layer
        self.steps = 0

    @torch.no_grad()
    def push(self, value) -> float | None:
        """Feed one value; return the one-step prediction after it."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise DataError(f"values must be numbers, got {value!r}") from None
        if not math.isfinite(v):
            raise DataError(f"values must be finite numbers, got {v}")
        sc = self.run.scaler
        if self._seasonal and sc.log and v <= 0:  # checked before any state changes
            raise DataError(
                f"this seasonal scaler works on logs and needs positive values, got {v:g}"
            )
        if self._first is None:
            self._first = v
        self._recent.append(v)
        ctx = list(self._recent)
        if sc.kind == "offset":  # the anchor: the stream's first value
            ctx.insert(0, self._first)
        x = torch.tensor(ctx, dtype=torch.float32).view(1, -1, 1)
        xs, _ = sc.encode(x)
        y, self.state = self.run.model(xs[:, -1:], hx=self.state, return_state=True)
        t, self.steps = self.steps, self.steps + 1
        if self._seasonal and t < sc.period:
            return None
        return sc.decode(y, x).item()
