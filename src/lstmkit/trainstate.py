"""What a checkpoint holds and ``train --resume`` restores: one dataclass, checked on load.

The file (``train_state.pt``) is a plain dict of tensors, numbers and strings written with
``torch.save`` and read with ``weights_only=True``, so a pickle payload is refused. Its layout
is the one lstmkit has always written (``best`` a nested dict), so older runs still resume.
It is also the run directory's commit point: ``model.safetensors`` and ``metrics.csv`` are
derived from it, and a resume rewrites them from it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lstmkit.errors import RunDirError

# Above these a state is not one lstmkit wrote (an epoch count past any config's bound).
MAX_COUNT = 10**12
HISTORY_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "lr", "seconds")


@dataclass
class TrainState:
    """Everything a run needs to continue exactly where its last checkpoint was taken."""

    model: dict[str, Tensor]  # the model's state_dict (on the CPU)
    optimizer: dict  # the optimizer's state_dict
    scheduler: dict  # the LR scheduler's state_dict
    rng: Tensor  # torch's CPU generator state (dropout masks to come)
    best_weights: dict[str, Tensor]  # the weights of the best validation score so far
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict] = field(default_factory=list)  # one row per epoch: HISTORY_COLUMNS
    best_val: float = math.inf
    best_epoch: int = -1  # -1: none yet; 0: the untrained model (a reference forecast)
    seconds: float = 0.0  # training time so far
    stopped: bool = False  # ended before its last epoch (patience, --max-time): nothing to add

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "rng": self.rng,
            "history": self.history,
            "best": {"val": self.best_val, "epoch": self.best_epoch, "model": self.best_weights},
            "seconds": self.seconds,
            "stopped": self.stopped,
        }

    @classmethod
    def from_dict(cls, d, where: str) -> TrainState:
        """A state from its file's dict; anything missing, mistyped or absurd is a
        RunDirError naming ``where`` and the field."""
        bad = _Bad(where)
        if not isinstance(d, dict):
            raise bad(f"expected a dict, got {type(d).__name__}")
        best = d.get("best")
        if not isinstance(best, dict):
            raise bad("'best' is missing or not a dict")
        st = cls(
            model=_weights(d.get("model"), bad, "model"),
            optimizer=_typed(d.get("optimizer"), dict, bad, "optimizer"),
            scheduler=_typed(d.get("scheduler"), dict, bad, "scheduler"),
            rng=_typed(d.get("rng"), Tensor, bad, "rng"),
            best_weights=_weights(best.get("model"), bad, "best.model"),
            epoch=_count(d.get("epoch"), bad, "epoch"),
            step=_count(d.get("step"), bad, "step"),
            history=_history(d.get("history"), bad),
            best_val=_number(best.get("val"), bad, "best.val"),
            best_epoch=_count(best.get("epoch"), bad, "best.epoch", low=-1),
            seconds=_number(d.get("seconds"), bad, "seconds"),
            stopped=_typed(d.get("stopped", False), bool, bad, "stopped"),  # absent before 0.x
        )
        if len(st.history) != st.epoch:
            raise bad(f"history has {len(st.history)} rows for {st.epoch} epochs")
        if st.best_epoch > st.epoch:
            raise bad(f"best.epoch {st.best_epoch} is after epoch {st.epoch}")
        if st.rng.dtype != torch.uint8:
            raise bad(f"rng must be a uint8 tensor, got {st.rng.dtype}")
        return st

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        return buf.getvalue()


class _Bad:
    def __init__(self, where: str) -> None:
        self.where = where

    def __call__(self, why: str) -> RunDirError:
        return RunDirError(f"{self.where} is not a valid training state: {why}")


def _typed(v, t: type, bad: _Bad, name: str):
    if not isinstance(v, t):
        raise bad(f"{name!r} must be a {t.__name__}, got {type(v).__name__}")
    return v


def _count(v, bad: _Bad, name: str, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= MAX_COUNT:
        raise bad(f"{name!r} must be an integer in [{low}, {MAX_COUNT}], got {v!r}")
    return v


def _number(v, bad: _Bad, name: str) -> float:
    # inf is allowed: best.val before any validation, or a forecast that diverged
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
        raise bad(f"{name!r} must be a number >= 0, got {v!r}")
    return float(v)


def _weights(v, bad: _Bad, name: str) -> dict[str, Tensor]:
    v = _typed(v, dict, bad, name)
    for k, t in v.items():
        if not isinstance(k, str) or not isinstance(t, Tensor) or not t.is_floating_point():
            raise bad(f"{name!r} must map names to floating tensors; {k!r} does not")
        if not torch.isfinite(t).all():
            raise bad(f"{name} tensor {k!r} holds NaN or Inf")
    return v


def _history(v, bad: _Bad) -> list[dict]:
    v = _typed(v, list, bad, "history")
    for i, row in enumerate(v):
        ok = isinstance(row, dict) and all(
            isinstance(row.get(c), (int, float)) and not isinstance(row.get(c), bool)
            for c in HISTORY_COLUMNS
        )
        if not ok:
            raise bad(f"history row {i} must hold the numbers {', '.join(HISTORY_COLUMNS)}")
    return v


def check_fits(st: TrainState, model, opt, epochs: int, steps_per_epoch: int, where: str) -> None:
    """Raise RunDirError unless ``st`` can continue ``model`` with optimizer ``opt`` for a
    run of ``epochs`` epochs: the same parameter names and shapes, and counts in range."""
    bad = _Bad(where)
    if st.epoch > epochs:
        raise bad(f"epoch {st.epoch} is past the run's {epochs} epochs")
    if st.step > st.epoch * steps_per_epoch:
        raise bad(f"step {st.step} is past {st.epoch} epochs of {steps_per_epoch} steps")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, weights in (("model", st.model), ("best.model", st.best_weights)):
        got = {k: tuple(v.shape) for k, v in weights.items()}
        if got != expected:
            diff = sorted(set(got.items()) ^ set(expected.items()))[:3]
            raise bad(f"{name!r} does not fit the model its config builds (differs in {diff})")
    if st.scheduler.get("last_epoch") != st.step:
        raise bad(f"scheduler is at step {st.scheduler.get('last_epoch')!r}, state at {st.step}")
    params = list(model.parameters())
    groups = st.optimizer.get("param_groups")
    ok = isinstance(groups, list) and len(groups) == len(opt.param_groups)
    ok = ok and all(isinstance(g, dict) and len(g.get("params", ())) == len(params) for g in groups)
    if not ok:
        raise bad(f"optimizer does not hold one group of the model's {len(params)} parameters")
    states = st.optimizer.get("state")
    if not isinstance(states, dict):
        raise bad("optimizer 'state' must be a dict")
    for i, s in states.items():
        if not isinstance(i, int) or not 0 <= i < len(params) or not isinstance(s, dict):
            raise bad(f"optimizer state {i!r} names no parameter")
        for k, t in s.items():
            if isinstance(t, Tensor) and t.dim() > 0 and t.shape != params[i].shape:
                raise bad(
                    f"optimizer {k} of parameter {i} has shape {tuple(t.shape)}, the parameter "
                    f"{tuple(params[i].shape)}"
                )
