"""Many series in one long-format CSV (``--id-column``): one global model for all of them.

Each series (the rows sharing an id, in file order) is read on its own: its dates checked,
its gaps filled, ``rows`` applied. Each is divided by its own scale, the mean absolute value
of its training part: positive, so the log scalings still apply, and series at levels of 10
and 10,000 look alike to the model (per-series scaling; the run's scaler then works on these
relative values). Each is split in time like a single series (its last ``test_size`` values
the test, the ``test_size`` before them the validation) and every series' training windows
are pooled into one training set; validation scores the H-step forecasts from every
series' validation origins. The scales are saved in the run (task meta ``series_scale``) and
undone on every forecast (predict, backtest), whose metrics are per series and averaged.
"""

from __future__ import annotations

import dataclasses

import torch

from lstmkit.config import RunConfig
from lstmkit.data import Split, TaskData
from lstmkit.data import covariates as cov
from lstmkit.data.csvread import Series, load, series_ids
from lstmkit.errors import DataError


def read_all(cfg: RunConfig, raw: bytes, name: str, sp: cov.Spec, date_column: str):
    """[(id, Series)] of every series of the file, each cut to csv.rows."""
    c = cfg.csv
    out = []
    for key in series_ids(raw, name, c.id_column):
        where = f"{name} (series {key!r})"
        only = (c.id_column, key)
        s = load(raw, where, c.column, date_column, c.fill, sp.columns, sp.future, only)
        out.append((key, cut(s, c.rows) if c.rows else s))
    return out


def cut(s: Series, rows: int) -> Series:
    """``s`` holding only its first ``rows`` values (covariates alike)."""
    return dataclasses.replace(
        s,
        values=s.values[:rows],
        dates=s.dates[:rows],
        covariates={k: v[:rows] for k, v in s.covariates.items()},
    )


def scale_of(values: list[float], n_train: int) -> float:
    """The series' scale: the mean absolute value of its first ``n_train`` values."""
    part = values[: max(n_train, 1)]
    f = sum(abs(v) for v in part) / len(part)
    return f if f > 0 else 1.0


def normalized(s: Series, f: float) -> Series:
    return dataclasses.replace(s, values=[v / f for v in s.values])


def make(cfg: RunConfig, sp: cov.Spec, raw: bytes, name: str) -> TaskData:
    """The pooled splits of every series (module docstring)."""
    from lstmkit.data import csv

    everything = read_all(cfg, raw, name, sp, csv._date_column(cfg.csv))
    parts, scales = [], {}
    for key, s in everything:
        n = len(s.values)
        f = scale_of(s.values, csv._fit_part(n, cfg.csv.test_size))
        scales[key] = f
        parts.append(csv.series_parts(cfg, sp, normalized(s, f), n, f"{name} (series {key!r})"))
    lengths = {p["test"].x.size(1) for p in parts}
    if len(lengths) != 1:  # cannot happen: every test sequence is L + S - 1 long
        raise DataError("series test parts differ in length")
    fv = _pool_fv([p["fv"] for p in parts])
    first_key, first = everything[0]
    meta = csv._meta(cfg, raw, first, len(first.values), fv["scale"])
    meta.update(
        id_column=cfg.csv.id_column,
        series_scale=scales,
        values={k: len(s.values) for k, s in everything},
    )
    fit = first.values[: parts[0]["n_train"]]
    meta["inferred"] = csv._inferred(cfg, first, fit)
    meta["inferred"]["series"] = len(everything)
    return TaskData(
        _pool([p["train"] for p in parts]),
        _pool([p["val"] for p in parts]),
        _pool([p["test"] for p in parts]),
        sp.input_size,
        sp.steps,
        default_scaling="seasonal" if cfg.data.period > 1 else "diff",
        forecast_val=fv,
        meta=meta,
    )


def _pool(splits: list[Split]) -> Split:
    return Split(*(torch.cat([getattr(s, k) for s in splits]) for k in ("x", "y", "mask")))


def _pool_fv(fvs: list[dict]) -> dict:
    """The series' validation forecasts as one set, their calibration origins ("calib") too:
    every series is in relative units (divided by its own scale), so their errors pool."""
    out = _pool_origins(fvs, ("context", "target"))
    out["scale"] = sum(f["scale"] for f in fvs) / len(fvs)  # relative units: comparable
    if all("calib" in f for f in fvs):
        calib = [f["calib"] for f in fvs]
        out["calib"] = _pool_origins(calib, ("context", "target", "local_scale"))
    return out


def _pool_origins(parts: list[dict], keys: tuple[str, ...]) -> dict:
    out = {k: torch.cat([p[k] for p in parts]) for k in keys}
    if "known" in parts[0]:
        out["known"] = torch.cat([p["known"] for p in parts])
    out["direct"] = parts[0]["direct"]
    return out


def infer_choices(cfg: RunConfig, raw: bytes, name: str, sp: cov.Spec, date_column: str):
    """(fit parts, frequency) of every series, for :func:`lstmkit.data.csv.infer`."""
    from lstmkit.data import csv

    everything = read_all(cfg, raw, name, sp, date_column)
    S = csv.DEFAULTS["csv.test_size"] if cfg.csv.test_size is None else cfg.csv.test_size
    fits = [s.values[: max(csv._fit_part(len(s.values), S), 2)] for _, s in everything]
    freq = everything[0][1].freq
    return fits, freq


def describe_ids(meta: dict) -> str:
    ids = list(meta.get("series_scale", {}))
    more = f" ... ({len(ids)} in all)" if len(ids) > 5 else ""
    return ", ".join(ids[:5]) + more
