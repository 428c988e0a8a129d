"""The tasks' targets, end to end with their default settings (slow: minutes on a CPU)."""

import json
from pathlib import Path

import pytest

from lstmkit.cli import main

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _evaluate(run, capsys) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["rows"]


def test_airline_forecast_beats_seasonal_naive(tmp_path, capsys):
    run = tmp_path / "air"
    assert main(["train", "--task", "csv", "--out", str(run)]) == 0
    rows = _evaluate(run, capsys)
    model, naive = rows["model"]["mae"], rows["seasonal naive (12)"]["mae"]
    assert naive == pytest.approx(71.25)
    assert model < naive, f"model MAE {model:.1f} is not below seasonal naive {naive:.1f}"


def test_adding_problem_length_100_solved(tmp_path, capsys):
    run = tmp_path / "add"
    assert main(["train", "--task", "adding", "--length", "100", "--out", str(run)]) == 0
    rows = _evaluate(run, capsys)
    assert rows["constant 1.0"]["mse"] == pytest.approx(1 / 6, abs=0.02)
    assert rows["model"]["mse"] < 0.01, rows


def test_text_bits_per_char_below_unigram(tmp_path, capsys):
    if not (SHARED / "tinyshakespeare.txt").is_file():
        pytest.skip(f"{SHARED}/tinyshakespeare.txt is absent (test data, not shipped)")
    text = tmp_path / "shakespeare.txt"
    text.write_text((SHARED / "tinyshakespeare.txt").read_text()[:200_000])
    run = tmp_path / "text"
    flags = ["--task", "text", "--text", str(text), "--num-train", "4096", "--epochs", "2"]
    assert main(["train", *flags, "--out", str(run)]) == 0
    rows = _evaluate(run, capsys)
    model, unigram = rows["model"]["bits_per_char"], rows["unigram"]["bits_per_char"]
    assert model < unigram - 1.0, f"model {model:.2f} bits/char vs unigram {unigram:.2f}"
    assert main(["generate", "--run", str(run), "--prompt", "ROMEO:", "--chars", "80"]) == 0
    assert len(capsys.readouterr().out) > 80
