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
from lstmkit.checkpoint import Run
from lstmkit.config import RunConfig
from lstmkit.errors import DataError


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


@torch.no_grad()
def forecast_test(run: Run, td: tasks.TaskData) -> Tensor:
    """The model's autoregressive forecast of the S masked test values of the one test
    sequence from the L values before them, placed like the targets: (1, T, 1)."""
    from lstmkit.data.csv import place
    from lstmkit.forecast import forecast
    from lstmkit.multistep import test_forecast, uses_rows

    if run.config.csv.id_column:
        raise DataError(
            "this run holds many series (--id-column); score each and all of them with "
            "`lstmkit backtest --run DIR`"
        )
    S = int(td.test.mask.sum())
    if not S:
        raise DataError(
            "this run held out no test values (--test-size 0); score it with "
            "`lstmkit backtest --run DIR`"
        )
    L = run.config.data.length
    rows = uses_rows(run)  # covariates: the run's file holds them, the values alone do not
    fc = test_forecast(run, S) if rows else forecast(run, td.test.x[0, :L, 0].tolist(), S)
    return place(td, torch.tensor(fc))


def rebuild(run: Run) -> tuple[RunConfig, tasks.Task, tasks.TaskData]:
    """The task data ``run`` trained on, rebuilt from its saved config and seed (its file
    checked first for a file task)."""
    cfg = tasks.resolve(run.config)  # a saved config is resolved; older runs may lack fields
    task = tasks.get(cfg.data.task)
    task.check_source(cfg, run.task.meta)
    return cfg, task, tasks.make(cfg, cfg.train.seed)


def test_rows(run: Run, cfg: RunConfig, task: tasks.Task, td: tasks.TaskData) -> dict:
    """{row name: predictions of td.test}: the model's, then the task's naive baselines."""
    predict = forecast_test if task.forecast_test else one_step
    return {"model": predict(run, td), **task.baselines(td, cfg)}


def evaluate(run: Run) -> Report:
    """Score ``run`` and its task's baselines on the test split; see the module docstring."""
    cfg, task, td = rebuild(run)
    preds = test_rows(run, cfg, task, td)
    mask = td.test.mask.clone()
    if td.kind == "regression":  # score every row on the steps all of them predict
        for p in preds.values():
            mask &= torch.isfinite(p).all(-1)
    rows = {name: task.score(p, td.test.y, mask) for name, p in preds.items()}
    return Report(cfg.data.task, task.describe(td), int(mask.sum()), rows)
