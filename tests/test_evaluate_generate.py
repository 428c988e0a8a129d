"""evaluate, generate and predict --csv, end to end through the CLI on tiny runs."""

import json
import shutil

import pytest

from lstmkit.cli import main

TINY = ["--epochs", "2", "--hidden-size", "8", "--backend", "fused"]


def _train(tmp_path, name, *flags):
    out = tmp_path / name
    assert main(["train", "--out", str(out), *TINY, *flags]) == 0
    return out


def _evaluate(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "task, flags, baseline, metric",
    [
        ("counting", [], "last value", "smape"),
        ("sine", ["--length", "12", "--num-train", "32"], "last value", "mae"),
        ("adding", ["--length", "12", "--num-train", "64"], "constant 1.0", "mse"),
        ("copy", ["--length", "3", "--num-train", "64"], "uniform over 8", "cross_entropy"),
    ],
)
def test_evaluate_reports_model_beside_baseline(tmp_path, capsys, task, flags, baseline, metric):
    run = _train(tmp_path, task, "--task", task, *flags)
    rep = _evaluate(run, capsys)
    assert rep["task"] == task and rep["steps"] > 0
    assert list(rep["rows"])[0] == "model"
    (name,) = [n for n in rep["rows"] if n.startswith(baseline)]
    assert metric in rep["rows"]["model"] and metric in rep["rows"][name]
    assert main(["evaluate", "--run", str(run)]) == 0
    table = capsys.readouterr().out
    assert "model" in table and name in table


def test_csv_run_evaluates_a_forecast_and_refuses_a_changed_file(tmp_path, capsys):
    src = tmp_path / "air.csv"
    shutil.copy(_airline(), src)
    run = _train(tmp_path, "air", "--task", "csv", "--csv", str(src), "--column", "passengers")
    rep = _evaluate(run, capsys)
    assert rep["steps"] == 24 and rep["rows"]["seasonal naive (12)"]["mae"] == pytest.approx(71.25)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["data"]["length"] == 24  # the task's default, saved resolved
    assert cfg["task"]["meta"]["column"] == "passengers"
    # predict reads its context from a file's column of the run
    assert main(["predict", "--run", str(run), "--csv", str(src), "--horizon", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    # one-step predictions: the first period (12) has none under seasonal scaling; valid
    # JSON (null, not NaN) and "-" in text, a number after that
    values = [str(v) for v in range(100, 114)]
    assert main(["predict", "--run", str(run), "--json", *values]) == 0
    pred = json.loads(capsys.readouterr().out)
    assert pred[:12] == [None] * 12 and all(isinstance(v, float) for v in pred[12:])
    assert main(["predict", "--run", str(run), *values]) == 0
    words = capsys.readouterr().out.split()
    assert words[11] == "-" and float(words[12]) == pytest.approx(pred[12], abs=0.01)
    assert main(["predict", "--run", str(run), "--horizon", "2", *values[:12]]) == 2
    assert "needs at least 13 values to forecast, got 12" in capsys.readouterr().err
    src.write_text(src.read_text().replace("432", "433"))
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "changed since training (its SHA-256 differs)" in capsys.readouterr().err


def _airline():
    from importlib import resources

    return resources.files("lstmkit.data").joinpath("airline_passengers.csv")


def test_predict_csv_errors(tmp_path, capsys):
    run = _train(tmp_path, "count")
    assert main(["predict", "--run", str(run), "--csv", str(_airline())]) == 2
    assert "--csv takes a run of the csv task" in capsys.readouterr().err


@pytest.fixture
def text_run(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("the cat sat on the mat. " * 60, encoding="utf-8")
    return _train(
        tmp_path, "text", "--task", "text", "--text", str(p), "--length", "16", "--num-train", "64"
    ), p


def test_text_run_evaluates_bits_per_char_and_generates(text_run, capsys):
    run, path = text_run
    rep = _evaluate(run, capsys)
    assert "bits_per_char" in rep["rows"]["model"] and "unigram" in rep["rows"]
    assert (
        main(["generate", "--run", str(run), "--prompt", "the ", "--chars", "30", "--seed", "1"])
        == 0
    )
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first.rstrip("\n")) >= 34 - first.count("\n")
    assert (
        main(["generate", "--run", str(run), "--prompt", "the ", "--chars", "30", "--seed", "1"])
        == 0
    )
    assert capsys.readouterr().out == first  # seeded sampling repeats
    path.write_text("another text entirely " * 60)
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "changed since training" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prompt", "XYZ"], "outside the run's vocabulary"),
        (["--prompt", ""], "empty prompt"),
        (["--temperature", "0"], "temperature must be a finite number > 0"),
        (["--chars", "-1"], "chars must be an integer >= 0"),
    ],
)
def test_generate_errors(text_run, capsys, flags, message):
    run, _ = text_run
    assert main(["generate", "--run", str(run), *flags]) == 2
    assert message in capsys.readouterr().err


def test_generate_refuses_a_non_text_run(tmp_path, capsys):
    run = _train(tmp_path, "count")
    assert main(["generate", "--run", str(run)]) == 2
    assert "needs a run of the text task" in capsys.readouterr().err
