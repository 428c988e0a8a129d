"""Metrics over the masked steps of a split: regression and classification.

Shapes: pred and y (N, T, O) for values; logits (N, T, C) and classes y (N, T) int64 for
classes; mask (N, T) bool picks the steps that count.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def mse(pred: Tensor, y: Tensor, mask: Tensor) -> dict[str, float]:
    """Mean squared error over the masked steps."""
    return {"mse": (pred[mask] - y[mask]).pow(2).mean().item()}


def series(pred: Tensor, y: Tensor, mask: Tensor) -> dict[str, float]:
    """MSE, MAE and sMAPE (percent, 200 |p - y| / (|p| + |y|), 0 where both are 0)."""
    p, t = pred[mask].double(), y[mask].double()
    err = (p - t).abs()
    denom = p.abs() + t.abs()
    smape = torch.where(denom > 0, 200 * err / denom.clamp_min(1e-300), torch.zeros_like(err))
    return {
        "mse": err.pow(2).mean().item(),
        "mae": err.mean().item(),
        "smape": smape.mean().item(),
    }


def classes(logits: Tensor, y: Tensor, mask: Tensor) -> dict[str, float]:
    """Accuracy (argmax) and cross-entropy (nats) over the masked steps."""
    lg, t = logits[mask].double(), y[mask]
    return {
        "accuracy": (lg.argmax(-1) == t).double().mean().item(),
        "cross_entropy": torch.nn.functional.cross_entropy(lg, t).item(),
    }


def bits_per_char(logits: Tensor, y: Tensor, mask: Tensor) -> dict[str, float]:
    """Cross-entropy in nats and bits per character, and accuracy."""
    out = classes(logits, y, mask)
    out["bits_per_char"] = out["cross_entropy"] / math.log(2)
    return out
