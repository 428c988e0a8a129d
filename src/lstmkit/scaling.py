"""Scalers: fitted on the training split only, saved with the run, undone on output.

All work on univariate series, x (N, T, 1) and y (N, T, 1):

- ``none``: values as they are (covariates too).
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

Inputs may carry covariate columns after the series (x (N, T, 1 + K), see
:mod:`lstmkit.data.covariates`): each is standardised with its training mean and std, and
only column 0 is the series. Targets may hold H values per step (y (N, T, H), the direct
strategy: y[:, t, h] is the value h + 1 steps after t); each is encoded against the
reference forecast the scaling makes for it from x up to t (seasonal: the value k seasons
back, k = ceil((h + 1) / p), plus k mean seasonal steps), so a zero output is that forecast.
"""

from __future__ import annotations

import math

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
        self.columns: list[tuple[float, float]] = []  # covariates' (center, scale)

    def fit(self, x: Tensor, allow_log: bool = True) -> Scaler:
        """Fit on the training inputs x (N, T, 1); ``allow_log=False`` keeps a seasonal
        scaler additive (the ``drift`` scaling: a constant mean step). Covariate columns
        (x (N, T, 1 + K)) are standardised whatever the kind."""
        if self.kind == "none":  # token and multi-input tasks too: nothing to learn
            return self
        if x.size(-1) > 1:
            self._fit_columns(x[..., 1:])
            x = x[..., :1]
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

    def _fit_columns(self, cov: Tensor) -> None:
        flat = cov.reshape(-1, cov.size(-1)).double()
        mean, std = flat.mean(0), flat.std(0) if flat.size(0) > 1 else torch.ones(cov.size(-1))
        self.columns = [
            (float(m), float(s) if float(s) > 1e-8 else 1.0)
            for m, s in zip(mean.tolist(), std.tolist(), strict=True)
        ]

    def _covariates(self, cov: Tensor) -> Tensor:
        if cov.size(-1) != len(self.columns):
            raise DataError(
                f"this run's scaler has {len(self.columns)} covariate column(s), the input "
                f"{cov.size(-1)}"
            )
        c = torch.tensor([c for c, _ in self.columns], dtype=cov.dtype, device=cov.device)
        s = torch.tensor([s for _, s in self.columns], dtype=cov.dtype, device=cov.device)
        return (cov - c) / s

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

    def _seasons(self, H: int) -> Tensor:
        """(H,) k_h = ceil((h + 1) / p): the seasons between a target h + 1 steps ahead
        and the last value of its season that the input holds."""
        return torch.arange(H) // self.period + 1

    def _reference(self, lv: Tensor, H: int = 1) -> Tensor:
        """(N, T, H): L_{t+1+h-p k_h} for every step t of lv (N, T, 1) and h < H; NaN where
        it lies before the window (H = 1: L_{t+1-p})."""
        T, cols = lv.size(1), []
        for h, k in enumerate(self._seasons(H).tolist()):
            shift = self.period * k - 1 - h
            if shift == 0:
                cols.append(lv)
                continue
            pad = torch.full_like(lv[:, : min(shift, T)], float("nan"))
            cols.append(torch.cat([pad, lv[:, : T - shift]], dim=1)[:, :T])
        return torch.cat(cols, dim=-1)

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
        """Scaled (x, y); y may be None. x (N, T, 1 + K), y (N, T', H)."""
        if self.kind == "none":  # as they are: tokens, several inputs, covariates alike
            return x, y
        zx, zy = self._encode_series(x[..., :1], y)
        if x.size(-1) > 1:
            zx = torch.cat([zx, self._covariates(x[..., 1:])], dim=-1)
        return zx, zy

    def _encode_series(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if self.kind == "none":
            return x, y
        if self.kind == "seasonal":
            lx = self._level(x)
            zin = torch.zeros_like(x)
            zin[:, self.period :] = (self._seasonal(lx) - self.center) / self.scale
            if y is None:
                return zin, None
            H = y.size(-1)
            ref = self._reference(lx, H)[:, : y.size(1)]
            k = self._seasons(H).to(y.dtype)
            zy = (self._level(y) - ref - k * self.center) / self.scale
            return zin, torch.nan_to_num(zy, nan=0.0)  # undefined steps are masked out
        if self.kind == "diff":
            steps = torch.cat([torch.zeros_like(x[:, :1]), x.diff(dim=1)], dim=1) / self.scale
            return steps, None if y is None else (y - x[:, : y.size(1)]) / self.scale
        a = self._anchor(x)
        return (x - a) / self.scale, None if y is None else (y - a) / self.scale

    def decode(self, pred: Tensor, x: Tensor) -> Tensor:
        """Predictions (N, T', H) in the data's units, given the raw inputs x they came from."""
        if self.kind == "none":
            return pred
        x = x[..., :1]
        if self.kind == "seasonal":
            H = pred.size(-1)
            ref = self._reference(self._level(x), H)[:, -pred.size(1) :]
            k = self._seasons(H).to(pred.dtype)
            lv = pred * self.scale + k * self.center + ref
            return lv.exp() if self.log else lv
        if self.kind == "diff":
            return pred * self.scale + x[:, -pred.size(1) :]
        return pred * self.scale + self._anchor(x)

    def to_dict(self) -> dict:
        d = {"kind": self.kind, "center": self.center, "scale": self.scale}
        if self.kind == "seasonal":
            d.update(period=self.period, log=self.log)
        if self.columns:
            d["columns"] = [list(c) for c in self.columns]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scaler:
        try:
            s = cls(d["kind"], d["center"], d["scale"], d.get("period", 1), d.get("log", False))
            cols = [(float(c), float(v)) for c, v in d.get("columns", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise RunDirError(f"scaler.json must hold kind, center and scale, got {d!r}") from e
        if not all(math.isfinite(c) and math.isfinite(v) and v > 0 for c, v in cols):
            raise RunDirError("scaler.json: covariate centers must be finite, scales > 0")
        s.columns = cols
        return s
