"""Multi-step forecasts of csv runs: recursive or direct, with or without covariates.

- recursive: one step at a time, each prediction written into the series column of the next
  step's input row (the rest of that row, the known-in-advance covariates, comes from the
  data); every step reads the last ``window`` rows, held in one buffer (O(window) a step).
- direct: the head outputs H values at every step (y (N, T, H)); the forecast is the last
  context step's output, read once.

Input rows are built by :mod:`lstmkit.data.covariates` (``[v_t, past_t, K_{t+1..t+S}]``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lstmkit.errors import DataError


@torch.no_grad()
def paths(
    model,
    scaler,
    context: Tensor,
    horizon: int,
    window: int,
    known: Tensor | None = None,
    direct: bool = False,
) -> Tensor:
    """(N, horizon) forecasts after each context (N, T, C) of input rows. ``known``
    (N, >= horizon - 1, C): a recursive forecast's later input rows, whose series column
    it fills in (None: rows of the series alone)."""
    if direct:
        ctx = context[:, -window:]
        out = scaler.decode(model(scaler.encode(ctx)[0])[:, -1:], ctx)[:, 0]
        if horizon > out.size(1):
            raise DataError(
                f"this run forecasts {out.size(1)} steps at once (direct strategy); "
                f"asked for {horizon}"
            )
        return out[:, :horizon]
    N, T, C = context.shape
    rows = known[:, : horizon - 1] if known is not None else context.new_zeros(N, horizon - 1, C)
    x = torch.cat([context, rows], dim=1)
    preds = context.new_empty(N, horizon)
    for h in range(horizon):
        end = T + h
        ctx = x[:, max(0, end - window) : end]
        nxt = scaler.decode(model(scaler.encode(ctx)[0])[:, -1:], ctx)[:, 0, 0]
        preds[:, h] = nxt
        if h < horizon - 1:
            x[:, end, 0] = nxt
    return preds


def validation_forecasts(model, scaler, fv: dict, window: int, device=None) -> Tensor:
    """(N, H) forecasts of TaskData.forecast_val ``fv`` from every validation origin."""
    ctx = fv["context"] if device is None else fv["context"].to(device)
    known = fv.get("known")
    if known is not None and device is not None:
        known = known.to(device)
    H = fv["target"].size(1)
    return paths(model, scaler, ctx, H, window, known, fv.get("direct", False))


def is_direct(run) -> bool:
    return run.config.data.task == "csv" and run.config.csv.strategy == "direct"


def uses_rows(run) -> bool:
    """A csv run whose inputs hold more than its series (covariates), or of many series:
    its forecasts need the file's other columns, not values alone."""
    c = run.config.csv
    return run.config.data.task == "csv" and (run.task.input_size > 1 or bool(c.id_column))


def series_forecasts(run, series, horizon: int, origins: list[int] | None = None) -> Tensor:
    """(len(origins), horizon) forecasts of csv run ``run`` from origins in a read series
    (lstmkit.data.csvread.Series with the run's covariate columns); origins None: the end."""
    from lstmkit.data import covariates as cov
    from lstmkit.data import csv

    cfg = run.config
    sp = csv.spec(cfg)
    n = len(series.values)
    origins = [n] if origins is None else origins
    L = cfg.data.length
    if min(origins) < L:
        raise DataError(
            f"this run reads {L} steps of context (data.length); the first origin has "
            f"{min(origins)} before it"
        )
    frame = cov.frame(series, sp, n, horizon)
    if max(origins) == n:
        cov.need_future(frame, sp, max(horizon, sp.steps), "the context CSV")
    X = cov.step_rows(frame, sp.steps, extra=horizon)
    ctx = torch.stack([X[o - L : o] for o in origins])
    known = torch.stack([X[o : o + horizon - 1] for o in origins])
    return paths(run.model, run.scaler, ctx, horizon, L, known, direct=sp.steps > 1)


def context_series(run, path: str, key: str = ""):
    """(series, scale): csv run ``run``'s series ``key`` ("" for a one-series run) in CSV file
    ``path`` with its covariate columns, divided by its scale (a many-series run's
    per-series scale; 1 otherwise)."""
    from lstmkit.data import csv
    from lstmkit.data.panel import normalized

    c, meta = run.config.csv, run.task.meta
    sp = csv.spec(run.config)
    only = (c.id_column, key) if c.id_column else None
    raw, name = csv._source(path)
    cols = (meta["column"], meta["date_column"], c.fill, sp.columns, sp.future, only)
    s = csv.load(raw, name, *cols)
    f = float(meta.get("series_scale", {}).get(key, 1.0))
    return (normalized(s, f) if f != 1.0 else s), f


def test_forecast(run, horizon: int) -> list[float]:
    """The forecast of the held-out test part of a one-series csv run with covariates,
    from the run's own file: what ``lstmkit.evaluate.forecast_test`` needs for such runs
    (it passes values alone, which do not carry the covariates)."""
    s, _ = context_series(run, run.config.csv.file)
    n = run.config.csv.rows or len(s.values)
    return series_forecasts(run, s, horizon, [min(n, len(s.values)) - horizon])[0].tolist()
