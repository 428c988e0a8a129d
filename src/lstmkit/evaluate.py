"""Evaluate a trained run on its test split, beside its task's naive baselines.

The data are rebuilt from the run's saved config and seed, so the split is the one it
trained on; for a file task (csv, text) the task checks that the file has not changed.
Every row of the report is scored by the same function on the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from lstmkit import data as tasks
from lstmkit import metrics
from lstmkit.checkpoint import Run


@dataclass
class Report:
    task: str
    description: str  # what the rows score, in words
    steps: int  # scored steps (or characters, or sequences for last-step tasks)
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> metric -> value

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "description": self.description,
            "steps": self.steps,
            "rows": self.rows,
        }

    def table(self) -> str:
        """The rows as a small fixed-width table, model first."""
        names = list(self.rows)
        cols = list(self.rows[names[0]])
        w0 = max(len(n) for n in [*names, "baseline"]) + 2
        lines = [f"{self.task}: {self.description} ({self.steps} steps scored)"]
        lines.append("".ljust(w0) + "".join(c.rjust(14) for c in cols))
        for n in names:
            lines.append(n.ljust(w0) + "".join(f"{self.rows[n][c]:14.5g}" for c in cols))
        return "\n".join(lines)


@torch.no_grad()
def one_step(run: Run, td: tasks.TaskData, batch_size: int = 512) -> Tensor:
    """The model's prediction at every step of ``td.test`` from the true inputs before it,
    in data units: (N, T, O) values or logits."""
    run.model.eval()
    out = []
    for i in range(0, len(td.test), batch_size):
        x = td.test.x[i : i + batch_size]
        xs, _ = run.scaler.encode(x) if td.series_scaling else (x, None)
        pred = run.model(xs)
        out.append(run.scaler.decode(pred, x) if td.series_scaling else pred)
    return torch.cat(out)


def series_baselines(td: tasks.TaskData, cfg) -> dict[str, Tensor]:
    """One-step naive predictions of a series split: the last value x_t, and with a period
    p > 1 the value a season before the target, x_{t+1-p} (NaN where unknown)."""
    x = td.test.x
    out = {"last value": x.clone()}
    p = cfg.period
    if p > 1:
        seasonal = torch.full_like(x, float("nan"))
        seasonal[:, p - 1 :] = x[:, : x.size(1) - p + 1]
        out[f"seasonal naive ({p})"] = seasonal
    return out


def _default_score(td: tasks.TaskData):
    if td.kind == "classification":
        return metrics.classes
    return metrics.series if td.series_scaling else metrics.mse


def evaluate(run: Run) -> Report:
    """Score ``run`` and its task's baselines on the test split; see the module docstring."""
    cfg = tasks.resolve(run.config)  # a saved config is resolved; older runs may lack fields
    module = tasks.module(cfg.data.task)
    td = tasks.make(cfg.data, cfg.train.seed)
    check = getattr(module, "check_meta", None)
    if check is not None:
        check(run.task.get("meta", {}), td.meta)
    predict = getattr(module, "test_predictions", one_step)
    score = getattr(module, "score", None) or _default_score(td)
    default_baselines = series_baselines if td.series_scaling else (lambda td, cfg: {})
    preds = {"model": predict(run, td)}
    preds.update(getattr(module, "baselines", default_baselines)(td, cfg.data))
    mask = td.test.mask.clone()
    if td.kind == "regression":  # score every row on the steps all of them predict
        for p in preds.values():
            mask &= torch.isfinite(p).all(-1)
    rows = {name: score(p, td.test.y, mask) for name, p in preds.items()}
    return Report(cfg.data.task, _describe(cfg, td), int(mask.sum()), rows)


def _describe(cfg, td: tasks.TaskData) -> str:
    if cfg.data.task == "csv":
        m = td.meta
        return (
            f"{m['test_size']}-step forecast of the held-out test values from "
            f"{m['test_start']} (column {m['column']!r})"
        )
    if cfg.data.task == "text":
        return "validation text, next character at every step"
    if td.tokens or not bool(td.test.mask.all()):
        return f"test split ({len(td.test)} sequences), masked steps"
    return f"test split ({len(td.test)} sequences), one step ahead at every step"
