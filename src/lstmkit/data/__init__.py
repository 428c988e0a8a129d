"""Tasks: one module each, behind one typed interface, :class:`Task`.

A task module defines ``TASK``, an instance of a :class:`BaseTask` subclass. Its ``make(cfg,
seed)`` returns a :class:`TaskData`: every split is batch-first, x (N, T, I) float (or (N, T)
int64 tokens), y (N, T, O) float (or (N, T) int64 classes), mask (N, T) bool: the steps the
loss and metrics count. What a run must remember about its task is a :class:`TaskFacts`,
saved in config.json. :class:`BaseTask` holds the one set of defaults that training,
evaluation and plots share (scores, naive baselines); a task overrides only what differs.
Data modules never import the model or inference code.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from lstmkit import metrics
from lstmkit.config import SECTIONS, RunConfig, check_new_run, short, validate
from lstmkit.errors import ConfigError, RunDirError
from lstmkit.limits import MAX_SIZE


@dataclass
class Split:
    x: Tensor
    y: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.x.size(0)


@dataclass(frozen=True)
class TaskFacts:
    """What a run directory remembers about its task (config.json's "task")."""

    input_size: int  # features per step, or vocabulary size for token input
    output_size: int  # values per step, or classes
    kind: str = "regression"  # regression | classification
    tokens: bool = False  # x holds token ids (an embedding goes in front of the LSTM)
    meta: dict = field(default_factory=dict)  # what predict/evaluate need (the task's own)

    @property
    def is_series(self) -> bool:
        """One value in, one value out per step, regression: counting, sine, csv."""
        one = self.input_size == 1 and self.output_size == 1
        return self.kind == "regression" and not self.tokens and one

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d, source: str = "config.json") -> TaskFacts:
        """Facts read from an untrusted run directory, checked: sizes in 1..MAX_SIZE."""
        if not isinstance(d, dict):
            raise RunDirError(f"{source}: task must be a table, got {short(d)}")
        names = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - names):
            raise RunDirError(f"{source}: unknown task fact(s) {', '.join(map(short, unknown))}")
        facts = cls(**d)
        for name in ("input_size", "output_size"):
            v = getattr(facts, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise RunDirError(f"{source}: task.{name} must be in 1..{MAX_SIZE}, got {short(v)}")
        if facts.kind not in ("regression", "classification"):
            raise RunDirError(f"{source}: task.kind must be regression or classification")
        if not isinstance(facts.tokens, bool) or not isinstance(facts.meta, dict):
            raise RunDirError(f"{source}: task.tokens must be a bool and task.meta a table")
        return facts


@dataclass
class TaskData:
    train: Split
    val: Split
    test: Split
    input_size: int
    output_size: int
    kind: str = "regression"
    tokens: bool = False
    series_scaling: bool = True  # a univariate series the offset/standard scalers apply to
    default_scaling: str = "standard"
    # Multi-step validation (csv): context (N, L, 1), target (N, H) and the MASE scale; when
    # set, validation scores H-step recursive forecasts and the head starts at zero (the
    # untrained model makes the scaling's reference forecast, see lstmkit.timeseries);
    # "calib": rolling origins over training and validation that prediction intervals are
    # calibrated on (lstmkit.forecast.calibrate).
    forecast_val: dict | None = None
    meta: dict = field(default_factory=dict)

    @property
    def facts(self) -> TaskFacts:
        return TaskFacts(self.input_size, self.output_size, self.kind, self.tokens, self.meta)


class Task(Protocol):
    """What training, evaluate, plots and predict ask of a task."""

    name: str
    section: str | None  # its own config section ([csv]), or None
    defaults: Mapping[str, object]  # "section.field" -> value for fields left at None
    kind: str  # regression | classification
    series: bool  # a univariate series: the series scalers and data.period apply
    tokens: bool  # token input (an embedding in front of the LSTM)
    forecast_test: bool  # the test values are scored as one forecast, not step by step

    def infer(self, cfg: RunConfig) -> None:
        """Set fields left at None (or "auto") from the data, before the defaults apply."""

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        """The splits, drawn with ``seed``; ``cfg`` is resolved."""

    def score(self, pred: Tensor, y: Tensor, mask: Tensor) -> dict[str, float]:
        """The task's metrics of predictions ``pred`` against ``y`` on the steps in ``mask``."""

    def baselines(self, td: TaskData, cfg: RunConfig) -> dict[str, Tensor]:
        """Naive predictions for ``td.test``, shaped like the model's (data units/logits)."""

    def check_source(self, cfg: RunConfig, saved: dict) -> None:
        """Before a saved run's data are rebuilt: DataError when its file changed since
        training (``saved``: the run's task meta); nothing of the file is echoed."""

    def describe(self, td: TaskData) -> str:
        """What evaluate's rows score, in words."""


# Every task's value for a field left at None, unless its ``defaults`` say otherwise: the
# tutorial's settings for counting.
DEFAULTS: Mapping[str, object] = {
    "model.hidden_size": 32,
    "data.length": 4,
    "data.num_train": 512,
    "data.num_val": 128,
    "data.num_test": 128,
    "data.period": 1,
    "train.epochs": 60,
    "train.batch_size": 32,
    "train.lr": 0.01,
    "train.epoch_windows": 0,  # every window, every epoch
}


class BaseTask:
    """The shared defaults of :class:`Task`: a regression series scored step by step."""

    name = ""
    section: str | None = None
    defaults: Mapping[str, object] = {}
    kind = "regression"
    series = True
    tokens = False
    forecast_test = False

    def infer(self, cfg: RunConfig) -> None:
        return None

    def make(self, cfg: RunConfig, seed: int) -> TaskData:
        raise NotImplementedError  # pragma: no cover - every task defines it

    def score(self, pred: Tensor, y: Tensor, mask: Tensor) -> dict[str, float]:
        if self.kind == "classification":
            return metrics.classes(pred, y, mask)
        return (metrics.series if self.series else metrics.mse)(pred, y, mask)

    def baselines(self, td: TaskData, cfg: RunConfig) -> dict[str, Tensor]:
        return series_baselines(td.test.x, cfg.data.period) if self.series else {}

    def check_source(self, cfg: RunConfig, saved: dict) -> None:
        return None

    def describe(self, td: TaskData) -> str:
        if td.tokens or not bool(td.test.mask.all()):
            return f"test split ({len(td.test)} sequences), masked steps"
        return f"test split ({len(td.test)} sequences), one step ahead at every step"


def series_baselines(x: Tensor, period: int) -> dict[str, Tensor]:
    """One-step naive predictions for inputs ``x`` (N, T, 1): the last value x_t, and with a
    period p > 1 the value a season before the target, x_{t+1-p} (NaN where unknown)."""
    out = {"last value": x.clone()}
    if period > 1:
        seasonal = torch.full_like(x, float("nan"))
        seasonal[:, period - 1 :] = x[:, : x.size(1) - period + 1]
        out[f"seasonal naive ({period})"] = seasonal
    return out


TASKS = ("counting", "sine", "csv", "adding", "copy", "text")


def get(name: str) -> Task:
    """The task called ``name``."""
    if name not in TASKS:
        raise ConfigError(f"data.task must be one of {', '.join(TASKS)}; got {short(name)}")
    return importlib.import_module(f"lstmkit.data.{name}").TASK


def copy_config(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` whose sections can be changed without touching ``cfg``'s."""
    return RunConfig(**{s: dataclasses.replace(getattr(cfg, s)) for s in SECTIONS})


def resolve(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` with every None field set to its task's default (validated).
    A run saves this resolved config, so what it trained with is on record."""
    out = copy_config(cfg)
    task = get(cfg.data.task)
    task.infer(validate(out))
    for key, value in {**DEFAULTS, **task.defaults}.items():
        section, name = key.split(".")
        if getattr(getattr(out, section), name) is None:
            setattr(getattr(out, section), name, value)
    if out.model.init == "chrono" and out.model.t_max is None:
        out.model.t_max = float(out.data.length)  # the longest dependency a window can hold
    for section in ("csv", "text"):  # a run must find its file from any directory
        sec = getattr(out, section)
        if sec.file:
            sec.file = str(Path(sec.file).resolve())
    return validate(out)


def check_options(cfg: RunConfig) -> None:
    """Before a new run writes anything: no option its task does not read (another task's
    section, an embedding without tokens, a series scaling or period without a series)."""
    check_new_run(cfg)
    task, d = get(cfg.data.task), cfg.data
    if not task.tokens and cfg.model.embedding_dim != SECTIONS["model"]().embedding_dim:
        raise ConfigError(
            f"model.embedding_dim applies to token tasks (copy, text); task {d.task!r} "
            "feeds its values to the LSTM directly"
        )
    if not task.series and (d.scaling not in ("auto", "none") or d.period is not None):
        what = f"data.scaling {d.scaling!r}" if d.scaling not in ("auto", "none") else "data.period"
        raise ConfigError(
            f"{what} applies to series tasks (counting, sine, csv); task {d.task!r} is not one"
        )


def make(cfg: RunConfig, seed: int) -> TaskData:
    """The data of task ``cfg.data.task``, drawn with ``seed``; ``cfg`` must be resolved."""
    task = get(cfg.data.task)
    for section in ("data", task.section):
        if section is None:
            continue
        obj = getattr(cfg, section)
        unresolved = [f.name for f in dataclasses.fields(obj) if getattr(obj, f.name) is None]
        if unresolved:
            raise ConfigError(
                f"{section} config has unresolved fields {unresolved}; call "
                "lstmkit.data.resolve first"
            )
    return task.make(cfg, seed)


def all_steps(x: Tensor) -> Tensor:
    """A mask that counts every step of (N, T, ...) data."""
    return torch.ones(x.shape[:2], dtype=torch.bool)
