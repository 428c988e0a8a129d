"""The CLI's train and predict, end to end on the counting task."""

import json
import subprocess
import sys

import pytest
import torch

from lstmkit.checkpoint import load_run
from lstmkit.cli import main
from lstmkit.data.counting import runs
from lstmkit.errors import LstmkitError
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


@pytest.mark.parametrize(
    "command",
    [
        [],
        *(
            [c]
            for c in [
                "train",
                "predict",
                "export",
                "backtest",
                "evaluate",
                "generate",
                "plot",
                "inspect",
            ]
        ),
    ],
)
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


def test_help_shows_types_choices_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in (
        "--optimizer {adam,adamw}",
        "--schedule {constant,cosine}",
        "--fill {none,ffill,interpolate,drop}",
        "--hidden-size INT",
        "--lr FLOAT",
        "--layer-norm [BOOL]",
        "default 'adam'",
        "default 1",  # num_layers
        "default off",  # a switch
        "default: the task's",
    ):
        assert shown in text, shown


def test_flags_parse_to_their_field_types():
    from lstmkit.cli import build_parser

    args = build_parser().parse_args(
        ["train", "--hidden-size", "8", "--lr", "0.5", "--layer-norm", "--peephole", "off"]
        + ["--zoneout", "0.1,0.2", "--optimizer", "adamw"]
    )
    got = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    assert got == {
        "model.hidden_size": 8,
        "train.lr": 0.5,
        "model.layer_norm": True,
        "model.peephole": False,
        "model.zoneout": [0.1, 0.2],
        "train.optimizer": "adamw",
    }
    assert type(got["model.hidden_size"]) is int and type(got["train.lr"]) is float


def test_flags_follow_the_config_sections_and_a_flag_name_in_metadata(monkeypatch):
    """A section or field added to the config gets its flag with no change to the CLI; a
    field's ``flag`` metadata renames its flag."""
    import dataclasses

    from lstmkit import config
    from lstmkit.cli import build_parser

    @dataclasses.dataclass
    class Extra:
        n_things: int = 3
        ratio: float = dataclasses.field(default=0.5, metadata={"flag": "extra_ratio"})

    monkeypatch.setattr(config, "SECTIONS", {**config.SECTIONS, "extra": Extra})
    args = build_parser().parse_args(["train", "--n-things", "7", "--extra-ratio", "0.25"])
    assert vars(args)["extra.n_things"] == 7 and vars(args)["extra.ratio"] == 0.25
    with pytest.raises(LstmkitError, match="unrecognized arguments: --ratio"):
        build_parser().parse_args(["train", "--ratio", "0.25"])


def test_resume_reports_the_runs_own_task(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--task", "sine", "--epochs", "2", "--hidden-size", "4"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    said = capsys.readouterr().out
    assert "trained sine: 2 epochs" in said and "counting" not in said
