"""The CLI's train and predict, end to end on the counting task."""

import json
import subprocess
import sys

import pytest
import torch

from lstmkit.checkpoint import load_run
from lstmkit.cli import main
from lstmkit.data.counting import runs
from lstmkit.forecast import predict_steps


def _train(out, *extra):
    return main(["train", "--out", str(out), "--epochs", "15", *extra])


def test_train_then_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out) == 0
    assert "trained counting" in capsys.readouterr().out
    for name in ("model.safetensors", "config.json", "scaler.json", "metrics.csv"):
        assert (out / name).is_file()
    assert main(["predict", "--run", str(out), "5", "6", "7", "8"]) == 0
    line = capsys.readouterr().out.strip()
    values = [float(v) for v in line.split()]
    assert len(values) == 4
    torch.testing.assert_close(
        torch.tensor(values), torch.tensor([6.0, 7, 8, 9]), atol=0.05, rtol=0
    )
    assert main(["predict", "--run", str(out), "--json", "5", "6"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["predict", "--run", str(out), "--horizon", "3", "5", "6", "7", "8"]) == 0
    ahead = [float(v) for v in capsys.readouterr().out.split()]
    torch.testing.assert_close(torch.tensor(ahead), torch.tensor([9.0, 10, 11]), atol=0.1, rtol=0)


def test_config_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nhidden_size = 8\n[train]\nepochs = 2\nseed = 3\n")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--config", str(cfg), "--epochs", "3"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["model"]["hidden_size"] == 8
    assert saved["config"]["train"]["epochs"] == 3  # the flag overrides the file
    assert saved["config"]["train"]["seed"] == 3
    assert saved["format_version"] == 2 and saved["lstmkit_version"]


@pytest.mark.parametrize("command", [[], ["train"], ["predict"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: lstmkit" in capsys.readouterr().out


def test_same_seed_same_model(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, "--epochs", "3") == 0
    assert _train(b, "--epochs", "3") == 0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_scaling_none_does_not_extrapolate_but_diff_does(tmp_path):
    """The tutorial's failure, kept reproducible: without scaling the model never leaves 0..10."""
    diff, none = tmp_path / "diff", tmp_path / "none"
    assert _train(diff, "--epochs", "10") == 0
    assert _train(none, "--epochs", "10", "--scaling", "none") == 0
    far = [100.0, 101, 102, 103]
    assert abs(predict_steps(load_run(diff), far)[-1] - 104) < 0.5
    assert abs(predict_steps(load_run(none), far)[-1] - 104) > 20


@pytest.mark.slow
def test_default_run_meets_the_foundation_targets(tmp_path):
    """The README's first command: predictions within 0.05, and MSE on fresh counting runs
    (starts 0..9) at most 1e-3. (Its time is measured by bench/, not asserted here.)"""
    out = tmp_path / "counting"
    r = subprocess.run(
        [sys.executable, "-m", "lstmkit", "train", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "lstmkit", "predict", "--run", str(out), "5", "6", "7", "8"],
        capture_output=True,
        text=True,
        check=True,
    )
    got = torch.tensor([float(v) for v in r.stdout.split()])
    torch.testing.assert_close(got, torch.tensor([6.0, 7, 8, 9]), atol=0.05, rtol=0)
    run = load_run(out)
    fresh = runs(1000, 4, 0, 9, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        xs, _ = run.scaler.encode(fresh.x)
        pred = run.scaler.decode(run.model(xs), fresh.x)
    mse = torch.mean((pred - fresh.y) ** 2).item()
    assert mse <= 1e-3, mse
