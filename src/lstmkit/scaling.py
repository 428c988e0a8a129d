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
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.errors import RunDirError

KINDS = ("none", "standard", "offset", "diff")


class Scaler:
    """Fit on training data, then ``encode`` inputs/targets and ``decode`` predictions."""

    def __init__(self, kind: str = "none", center: float = 0.0, scale: float = 1.0) -> None:
        if kind not in KINDS:
            raise RunDirError(f"scaler kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind, self.center, self.scale = kind, float(center), float(scale)

    def fit(self, x: Tensor) -> Scaler:
        """Fit on the training inputs x (N, T, 1)."""
        if self.kind == "standard":
            self.center, self.scale = x.mean().item(), x.std().item()
        elif self.kind == "offset":
            self.center, self.scale = 0.0, (x - x[:, :1]).std().item()
        elif self.kind == "diff":
            self.center, self.scale = 0.0, x.diff(dim=1).abs().mean().item() if x.size(1) > 1 else 1.0
        if not self.scale > 1e-8:  # a constant training split: leave the scale alone
            self.scale = 1.0
        return self

    def _anchor(self, x: Tensor) -> Tensor:
        if self.kind == "offset":
            return x[:, :1, :1]  # each window's first value, (N, 1, 1)
        return torch.full_like(x[:, :1, :1], self.center)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Scaled (x, y); y may be None. x (N, T, 1), y (N, T', 1)."""
        if self.kind == "none":
            return x, y
        if self.kind == "diff":
            steps = torch.cat([torch.zeros_like(x[:, :1]), x.diff(dim=1)], dim=1) / self.scale
            return steps, None if y is None else (y - x[:, : y.size(1)]) / self.scale
        a = self._anchor(x)
        return (x - a) / self.scale, None if y is None else (y - a) / self.scale

    def decode(self, pred: Tensor, x: Tensor) -> Tensor:
        """Predictions (N, T', 1) in the data's units, given the raw inputs x they came from."""
        if self.kind == "none":
            return pred
        if self.kind == "diff":
            return pred * self.scale + x[:, -pred.size(1) :]
        return pred * self.scale + self._anchor(x)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        try:
            return cls(d["kind"], d["center"], d["scale"])
        except (KeyError, TypeError, ValueError) as e:
            raise RunDirError(f"scaler.json must hold kind, center and scale, got {d!r}") from e
