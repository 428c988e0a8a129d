"""Tasks: one module each, behind one small interface.

A task module defines ``make(cfg: DataConfig, seed: int) -> TaskData``. Every split is
batch-first: x (N, T, I) float (or (N, T) int64 tokens), y (N, T, O) float (or (N, T) int64
classes), mask (N, T) bool: the steps the loss and metrics count.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lstmkit.errors import ConfigError


@dataclass
class Split:
    x: Tensor
    y: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.x.size(0)


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    input_size: int  # features per step, or vocabulary size for token input
    output_size: int  # values per step, or classes
    kind: str = "regression"  # regression | classification
    tokens: bool = False  # x holds token ids (an embedding goes in front of the LSTM)
    series_scaling: bool = True  # a univariate series the offset/standard scalers apply to
    default_scaling: str = "standard"
    meta: dict = field(default_factory=dict)  # what predict/evaluate need (saved with the run)


TASKS = ("counting",)


def make(cfg, seed: int) -> TaskData:
    """The data of task ``cfg.task``, drawn with ``seed``."""
    if cfg.task not in TASKS:
        raise ConfigError(f"data.task must be one of {', '.join(TASKS)}; got {cfg.task!r}")
    module = importlib.import_module(f"lstmkit.data.{cfg.task}")
    return module.make(cfg, seed)


def all_steps(x: Tensor) -> Tensor:
    """A mask that counts every step of (N, T, ...) data."""
    return torch.ones(x.shape[:2], dtype=torch.bool)
