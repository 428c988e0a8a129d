"""Scalers: fitted on the training split only, saved with the run, undone on output.

All work on univariate series, x (N, T, 1) and y (N, T, 1):

- ``none``: values as they are.
- ``standard``: (v - mean) / std with the training split's mean and std.
- ``offset``: (v - v_0) / scale, where v_0 is each window's first input value and scale the
  training split's std of those offsets. The model sees only shapes, never levels.
- ``diff``: the model reads steps (x_t - x_{t-1}, 0 at the first) / scale and predicts the
  next step (y_t - x_t) / scale, added back to x_t on output. It sees neither levels nor
  positions, so it continues outside its training range: trained on counting from 0..9, it
  counts on from 1000, and past the window length it was trained on.
- ``seasonal``: seasonal differences with period p, of logs when every training value is
  positive (``log``): the model reads (L_t - L_{t-p} - center) / scale, L = log v, and
  predicts the same for its target, added back to L_{t+1-p} on output. A multiplicative
  trend and season (airline passengers) become a roughly stationary growth rate. The first
  p steps of a window have no input (0) and are left out of the loss (:meth:`Scaler.defined`);
  one-step predictions whose reference L_{t+1-p} lies before the window are NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.errors import ConfigError, DataError, RunDirError

KINDS = ("none", "standard", "offset", "diff", "seasonal")


class Scaler:
    """Fit on training data, then ``encode`` inputs/targets and ``decode`` predictions."""

    def __init__(
        self,
        kind: str = "none",
        center: float = 0.0,
        scale: float = 1.0,
        period: int = 1,
        log: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise RunDirError(f"scaler kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise RunDirError(f"scaler period must be an integer >= 1, got {period!r}")
        self.kind, self.center, self.scale = kind, float(center), float(scale)
        self.period, self.log = period, bool(log)

    def fit(self, x: Tensor, allow_log: bool = True) -> Scaler:
        """Fit on the training inputs x (N, T, 1); ``allow_log=False`` keeps a seasonal
        scaler additive (the ``drift`` scaling: a constant mean step)."""
        if self.kind == "seasonal":
            if x.size(1) <= self.period:
                raise ConfigError(
                    f"seasonal scaling needs windows longer than the period: data.length must "
                    f"be > {self.period}, got {x.size(1)}"
                )
            self.log = allow_log and bool((x > 0).all())
            z = self._seasonal(self._level(x))
            self.center, self.scale = z.mean().item(), z.std().item()
        elif self.kind == "standard":
            self.center, self.scale = x.mean().item(), x.std().item()
        elif self.kind == "offset":
            self.center, self.scale = 0.0, (x - x[:, :1]).std().item()
        elif self.kind == "diff":
            self.center, self.scale = (
                0.0,
                x.diff(dim=1).abs().mean().item() if x.size(1) > 1 else 1.0,
            )
        if not self.scale > 1e-8:  # a constant training split: leave the scale alone
            self.scale = 1.0
        return self

    def _level(self, v: Tensor) -> Tensor:
        """log v when fitted on positive data (checked), else v."""
        if not self.log:
            return v
        if not (v > 0).all():
            bad = v[v <= 0][0].item()
            raise DataError(
                f"this seasonal scaler works on logs and needs positive values, got {bad:g}"
            )
        return v.log()

    def _seasonal(self, lv: Tensor) -> Tensor:
        """L_t - L_{t-p} for t >= p: (N, T - p, 1)."""
        return lv[:, self.period :] - lv[:, : -self.period]

    def _reference(self, lv: Tensor) -> Tensor:
        """L_{t+1-p} for every step t of (N, T, 1); NaN where it lies before the window."""
        shift = self.period - 1
        if shift == 0:
            return lv
        pad = torch.full_like(lv[:, : min(shift, lv.size(1))], float("nan"))
        return torch.cat([pad, lv[:, : lv.size(1) - shift]], dim=1)[:, : lv.size(1)]

    def defined(self, T: int) -> Tensor:
        """(T,) bool: the steps of a window whose encoded input and target are defined."""
        ok = torch.ones(T, dtype=torch.bool)
        if self.kind == "seasonal":
            ok[: self.period] = False
        return ok

    def _anchor(self, x: Tensor) -> Tensor:
        if self.kind == "offset":
            return x[:, :1, :1]  # each window's first value, (N, 1, 1)
        return torch.full_like(x[:, :1, :1], self.center)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Scaled (x, y); y may be None. x (N, T, 1), y (N, T', 1)."""
        if self.kind == "none":
            return x, y
        if self.kind == "seasonal":
            lx = self._level(x)
            zin = torch.zeros_like(x)
            zin[:, self.period :] = (self._seasonal(lx) - self.center) / self.scale
            if y is None:
                return zin, None
            ref = self._reference(lx)[:, : y.size(1)]
            zy = (self._level(y) - ref - self.center) / self.scale
            return zin, torch.nan_to_num(zy, nan=0.0)  # undefined steps are masked out
        if self.kind == "diff":
            steps = torch.cat([torch.zeros_like(x[:, :1]), x.diff(dim=1)], dim=1) / self.scale
            return steps, None if y is None else (y - x[:, : y.size(1)]) / self.scale
        a = self._anchor(x)
        return (x - a) / self.scale, None if y is None else (y - a) / self.scale

    def decode(self, pred: Tensor, x: Tensor) -> Tensor:
        """Predictions (N, T', 1) in the data's units, given the raw inputs x they came from."""
        if self.kind == "none":
            return pred
        if self.kind == "seasonal":
            ref = self._reference(self._level(x))[:, -pred.size(1) :]
            lv = pred * self.scale + self.center + ref
            return lv.exp() if self.log else lv
        if self.kind == "diff":
            return pred * self.scale + x[:, -pred.size(1) :]
        return pred * self.scale + self._anchor(x)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "center": self.center, "scale": self.scale}
        if self.kind == "seasonal":
            d.update(period=self.period, log=self.log)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        try:
            return cls(d["kind"], d["center"], d["scale"], d.get("period", 1), d.get("log", False))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunDirError(f"scaler.json must hold kind, center and scale, got {d!r}") from e
