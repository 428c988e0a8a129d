"""Many series in one long-format CSV (--id-column): one global model, per-series scaling,
metrics per series and pooled, predict for one id or all; on real data (statsmodels' US
macroeconomic series, quarterly 1959-2009, at levels from 5 to 13,000)."""

import json
import math

import pytest
import torch

from lstmkit import data as tasks
from lstmkit.checkpoint import load_run
from lstmkit.cli import main

macrodata = pytest.importorskip("statsmodels.datasets.macrodata")

TINY = ["--epochs", "2", "--hidden-size", "4", "--backend", "fused", "--length", "8"]


def _long(tmp_path) -> str:
    """id,date,value rows of three macro series, and 'gdp_k': real GDP times 1000 (the same
    shape at another level)."""
    d = macrodata.load_pandas().data
    rows = ["id,date,value"]
    for key, col, factor in [
        ("gdp", "realgdp", 1),
        ("inv", "realinv", 1),
        ("unemp", "unemp", 1),
        ("gdp_k", "realgdp", 1000),
    ]:
        for r in d.itertuples():
            rows.append(f"{key},{int(r.year)}Q{int(r.quarter)},{getattr(r, col) * factor}")
    path = tmp_path / "long.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def panel_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("panel")
    path = _long(tmp)
    out = tmp / "run"
    flags = ["--task", "csv", "--csv", path, "--column", "value", "--date-column", "date"]
    flags += ["--id-column", "id", "--test-size", "8", *TINY]
    assert main(["train", "--out", str(out), *flags]) == 0
    return out, path


def test_one_model_with_per_series_scaling(panel_run):
    out, path = panel_run
    run = load_run(out)
    meta = run.task.meta
    assert list(meta["series_scale"]) == ["gdp", "inv", "unemp", "gdp_k"]
    d = macrodata.load_pandas().data
    n_train = len(d) - 16
    for key, col in (("gdp", "realgdp"), ("unemp", "unemp")):
        want = d[col].abs()[:n_train].mean()
        assert meta["series_scale"][key] == pytest.approx(want, rel=1e-6)
    assert meta["series_scale"]["gdp_k"] == pytest.approx(1000 * meta["series_scale"]["gdp"])
    td = tasks.make(run.config, 0)
    L = run.config.data.length
    assert len(td.train) == 4 * (n_train - 1 - L + 1)  # every series' windows, pooled
    assert td.forecast_val["context"].size(0) == 4 * 8  # every series' validation origins
    # relative values: GDP at two levels looks the same to the model
    torch.testing.assert_close(td.train.x[0], td.train.x[3 * len(td.train) // 4])


def test_predict_one_id_or_all_rows_carry_the_id(panel_run, tmp_path, capsys):
    out, _ = panel_run
    fc = tmp_path / "fc.csv"
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--out", str(fc), "--level", "80"]) == 0
    lines = fc.read_text().splitlines()
    assert lines[0] == "id,date,forecast,lo_80,hi_80" and len(lines) == 1 + 4 * 8
    assert lines[1].startswith("gdp,2009Q4,") and lines[-1].startswith("gdp_k,2011Q3,")
    rows = [line.split(",") for line in lines[1:]]
    gdp = [float(r[2]) for r in rows if r[0] == "gdp"]
    gdp_k = [float(r[2]) for r in rows if r[0] == "gdp_k"]
    for a, b in zip(gdp, gdp_k, strict=True):  # scaled back per series
        assert b == pytest.approx(1000 * a, rel=1e-4)
    assert all(float(r[3]) <= float(r[2]) <= float(r[4]) for r in rows)
    # calibrated by step ahead on every series' rolling origins, each series' widths from
    # its own recent moves: gdp_k is gdp x 1000, so are its intervals
    cal = json.loads((out / "intervals.json").read_text())
    assert len(cal["scaled_residuals_by_step"]["model"]) == 8
    width = {k: [float(r[4]) - float(r[3]) for r in rows if r[0] == k] for k in ("gdp", "gdp_k")}
    for a, b in zip(width["gdp"], width["gdp_k"], strict=True):
        assert b == pytest.approx(1000 * a, rel=1e-3)
    capsys.readouterr()
    assert main(["predict", "--run", str(out), "--id", "inv", "--horizon", "3", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["id"] == ["inv"] * 3 and one["date"] == ["2009Q4", "2010Q1", "2010Q2"]
    inv = [float(r[2]) for r in rows if r[0] == "inv"][:3]
    assert one["forecast"] == pytest.approx(inv, rel=1e-5)
    assert main(["predict", "--run", str(out), "--id", "gnp"]) == 2
    assert "--id 'gnp' is not a series of this run" in capsys.readouterr().err


def test_backtest_scores_every_series_and_pooled(panel_run, capsys, monkeypatch):
    from lstmkit import backtest as bt_module
    from lstmkit.backtest import backtest

    # the classical models take seconds a window on a shared core; backtest of one series
    # checks them (test_forecasting), here they would only repeat that
    monkeypatch.setattr(bt_module, "classical_forecasts", lambda *a: {})
    out, _ = panel_run
    capsys.readouterr()
    assert main(["backtest", "--run", str(out), "--windows", "1", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["series"]) == {"gdp", "inv", "unemp", "gdp_k"}
    assert len(rep["windows"]["LSTM"]) == 4 and "drift" in rep["windows"]
    per = [rep["series"][k]["LSTM"] for k in rep["series"]]
    assert rep["mean"]["LSTM"]["mase"] == pytest.approx(sum(per) / len(per))
    assert all(math.isfinite(v) for v in per)
    bt = backtest(load_run(out), windows=2)
    assert len(bt.windows["LSTM"]) == 4 * 2
    text = bt.table()
    assert "4 series, mean MASE per series:" in text and "  unemp: LSTM " in text
    assert main(["evaluate", "--run", str(out)]) == 2
    assert "lstmkit backtest --run DIR" in capsys.readouterr().err
