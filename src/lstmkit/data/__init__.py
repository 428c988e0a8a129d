"""Tasks: one module each, behind one small interface.

A task module defines ``make(cfg: DataConfig, seed: int) -> TaskData``. Every split is
batch-first: x (N, T, I) float (or (N, T) int64 tokens), y (N, T, O) float (or (N, T) int64
classes), mask (N, T) bool: the steps the loss and metrics count.

A module may also define (each optional; :mod:`lstmkit.evaluate` falls back by ``kind``):

- ``DEFAULTS``: ``{"section.field": value}`` for the config fields left at None, over
  :data:`DEFAULTS` here (see :func:`resolve`);
- ``infer(cfg: RunConfig)``: set fields left at None (or "auto") from the data, before the
  defaults apply (the csv task learns period, window length, horizon and scaling);
- ``score(pred, y, mask) -> dict[str, float]``: its metrics (default :mod:`lstmkit.metrics`);
- ``baselines(td, cfg) -> dict[str, Tensor]``: naive predictions for ``td.test``, shaped like
  the model's output (values in data units, or logits);
- ``test_predictions(run, td) -> Tensor``: the model's predictions for ``td.test`` in data
  units (default: one step ahead at every step, see :func:`lstmkit.evaluate.one_step`);
- ``check_meta(saved, current)``: raise DataError when the data changed since training.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lstmkit.config import SECTIONS, RunConfig, validate
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
    # Multi-step validation (csv): context (N, L, 1), target (N, H) and the MASE scale; when
    # set, validation scores H-step recursive forecasts and the head starts at zero (the
    # untrained model makes the scaling's reference forecast, see lstmkit.timeseries).
    forecast_val: dict | None = None
    meta: dict = field(default_factory=dict)  # what predict/evaluate need (saved with the run)


TASKS = ("counting", "sine", "csv", "adding", "copy", "text")

# Every task's value for a field left at None, unless its module's DEFAULTS say otherwise:
# the tutorial's settings for counting.
DEFAULTS = {
    "model.hidden_size": 32,
    "data.length": 4,
    "data.num_train": 512,
    "data.num_val": 128,
    "data.num_test": 128,
    "data.period": 1,
    "data.test_size": 24,
    "data.horizon": 1,
    "train.epochs": 60,
    "train.batch_size": 32,
    "train.lr": 0.01,
}


def module(task: str):
    """The module of task ``task``."""
    if task not in TASKS:
        raise ConfigError(f"data.task must be one of {', '.join(TASKS)}; got {task!r}")
    return importlib.import_module(f"lstmkit.data.{task}")


def resolve(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` with every None field set to its task's default (validated).
    A run saves this resolved config, so what it trained with is on record."""
    out = RunConfig(**{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})
    infer = getattr(module(cfg.data.task), "infer", None)
    if infer is not None:
        infer(validate(out))
    defaults = {**DEFAULTS, **getattr(module(cfg.data.task), "DEFAULTS", {})}
    for key, value in defaults.items():
        section, name = key.split(".")
        if getattr(getattr(out, section), name) is None:
            setattr(getattr(out, section), name, value)
    if out.model.init == "chrono" and out.model.t_max is None:
        out.model.t_max = float(out.data.length)  # the longest dependency a window can hold
    for name in ("csv", "text"):  # a run must find its file from any directory
        if getattr(out.data, name):
            setattr(out.data, name, str(Path(getattr(out.data, name)).resolve()))
    return validate(out)


def make(cfg, seed: int) -> TaskData:
    """The data of task ``cfg.task``, drawn with ``seed``; ``cfg`` must be resolved."""
    unresolved = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) is None]
    if unresolved:
        raise ConfigError(
            f"data config has unresolved fields {unresolved}; call lstmkit.data.resolve first"
        )
    return module(cfg.task).make(cfg, seed)


def all_steps(x: Tensor) -> Tensor:
    """A mask that counts every step of (N, T, ...) data."""
    return torch.ones(x.shape[:2], dtype=torch.bool)
