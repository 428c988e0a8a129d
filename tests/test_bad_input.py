"""Every bad input the issue lists, tried at the CLI: one line on stderr naming what was
expected and what arrived, exit code 2, nothing on stdout, and no file of the user's changed."""

import json
import subprocess
import sys

import pytest

from lstmkit.cli import main

SMALL = ["--epochs", "2", "--num-train", "32", "--hidden-size", "8"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


def _copy_run(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit_config(run, **changes):
    meta = json.loads((run / "config.json").read_text())
    for path, value in changes.items():
        node = meta
        *parents, leaf = path.split("__")
        for k in parents:
            node = node[k]
        node[leaf] = value
    (run / "config.json").write_text(json.dumps(meta))


def _setup_config(tmp, text):
    (tmp / "c.toml").write_text(text)
    return ["train", "--out", str(tmp / "new"), "--config", str(tmp / "c.toml")]


def _broken_run(tmp, good, how):
    run = _copy_run(good, tmp / "run")
    if how == "incomplete":
        (run / "model.safetensors").unlink()
    elif how == "truncated":
        data = (run / "model.safetensors").read_bytes()
        (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        (run / "config.json").write_bytes(b"\x00\xffnot json")
    elif how == "version":
        _edit_config(run, format_version=99)
    elif how == "shapes":
        _edit_config(run, config__model__hidden_size=16)
    elif how == "garbage-weights":
        (run / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    return ["predict", "--run", str(run), "5", "6"]


# (id, argv builder (tmp_path, good_run) -> argv, expected substrings of the one error line)
CASES = [
    (
        "unknown-task",
        lambda t, g: ["train", "--out", str(t / "n"), "--task", "nope"],
        ["data.task must be one of", "got 'nope'"],
    ),
    ("unknown-option", lambda t, g: ["train", "--bogus"], ["unrecognized arguments: --bogus"]),
    ("unknown-command", lambda t, g: ["trian"], ["invalid choice: 'trian'"]),
    (
        "flag-wrong-type",
        lambda t, g: ["train", "--hidden-size", "big"],
        ["--hidden-size must be an integer, got 'big'"],
    ),
    (
        "flag-hidden-zero",
        lambda t, g: ["train", "--out", str(t / "n"), "--hidden-size", "0"],
        ["model.hidden_size must be in [1, 1048576], got 0"],
    ),
    (
        "flag-lr-zero",
        lambda t, g: ["train", "--out", str(t / "n"), "--lr", "0"],
        ["train.lr must be > 0 and <= 1000, got 0.0"],
    ),
    (
        "flag-lr-nan",
        lambda t, g: ["train", "--out", str(t / "n"), "--lr", "nan"],
        ["train.lr must be finite, got nan"],
    ),
    (
        "flag-dropout",
        lambda t, g: ["train", "--out", str(t / "n"), "--dropout", "1.5"],
        ["model.dropout must be in [0, 1], got 1.5"],
    ),
    (
        "config-unknown-key",
        lambda t, g: _setup_config(t, "[model]\nhiden_size = 8\n"),
        ["unknown key model.hiden_size", "expected one of"],
    ),
    (
        "config-unknown-section",
        lambda t, g: _setup_config(t, "[optim]\nlr = 1\n"),
        ["unknown section [optim]"],
    ),
    (
        "config-wrong-type",
        lambda t, g: _setup_config(t, '[model]\nhidden_size = "big"\n'),
        ["model.hidden_size must be an integer, got 'big'"],
    ),
    (
        "config-hidden-zero",
        lambda t, g: _setup_config(t, "[model]\nhidden_size = 0\n"),
        ["model.hidden_size must be in [1, 1048576], got 0"],
    ),
    (
        "config-dropout",
        lambda t, g: _setup_config(t, "[model]\ndropout = -0.5\n"),
        ["model.dropout must be in [0, 1], got -0.5"],
    ),
    (
        "config-lr-negative",
        lambda t, g: _setup_config(t, "[train]\nlr = -1e-3\n"),
        ["train.lr must be > 0 and <= 1000, got -0.001"],
    ),
    (
        "config-bad-choice",
        lambda t, g: _setup_config(t, '[train]\noptimizer = "sgd"\n'),
        ["train.optimizer must be one of adam, adamw; got 'sgd'"],
    ),
    (
        "config-not-toml",
        lambda t, g: _setup_config(t, "[model\nhidden_size = \n"),
        ["is not valid TOML"],
    ),
    (
        "config-missing",
        lambda t, g: ["train", "--config", str(t / "none.toml")],
        ["config file", "does not exist"],
    ),
    (
        "predict-no-values",
        lambda t, g: ["predict", "--run", str(g)],
        ["predict needs at least one value, got none"],
    ),
    (
        "predict-non-numeric",
        lambda t, g: ["predict", "--run", str(g), "5", "six"],
        ["values must be numbers, got 'six'"],
    ),
    (
        "predict-nan",
        lambda t, g: ["predict", "--run", str(g), "5", "nan"],
        ["values must be finite numbers, got nan"],
    ),
    (
        "predict-inf",
        lambda t, g: ["predict", "--run", str(g), "inf", "5"],
        ["values must be finite numbers, got inf"],
    ),
    (
        "predict-horizon-zero",
        lambda t, g: ["predict", "--run", str(g), "--horizon", "0", "5"],
        ["horizon must be an integer >= 1, got 0"],
    ),
    (
        "predict-horizon-text",
        lambda t, g: ["predict", "--run", str(g), "--horizon", "x", "5"],
        ["--horizon", "invalid int value: 'x'"],
    ),
    (
        "run-missing",
        lambda t, g: ["predict", "--run", str(t / "nowhere"), "5"],
        ["run directory", "does not exist"],
    ),
    (
        "run-incomplete",
        lambda t, g: _broken_run(t, g, "incomplete"),
        ["is incomplete: missing model.safetensors"],
    ),
    (
        "run-truncated",
        lambda t, g: _broken_run(t, g, "truncated"),
        ["model.safetensors is truncated or corrupted"],
    ),
    (
        "run-garbage-weights",
        lambda t, g: _broken_run(t, g, "garbage-weights"),
        ["model.safetensors is truncated or corrupted"],
    ),
    (
        "run-corrupted-config",
        lambda t, g: _broken_run(t, g, "corrupted"),
        ["config.json is corrupted"],
    ),
    (
        "run-format-version",
        lambda t, g: _broken_run(t, g, "version"),
        ["has format version 99; this lstmkit reads versions 1, 2"],
    ),
    (
        "run-shapes-mismatch",
        lambda t, g: _broken_run(t, g, "shapes"),
        ["does not match its config", "weight_ih_l0 has shape (32, 1), config implies (64, 1)"],
    ),
    (
        "resume-with-flags",
        lambda t, g: ["train", "--out", str(_copy_run(g, t / "r")), "--resume", "--epochs", "9"],
        ["--resume continues a run with its saved config; got --epochs as well"],
    ),
    (
        "resume-nothing",
        lambda t, g: ["train", "--out", str(t / "nothing"), "--resume"],
        ["has no train_state.pt to resume from"],
    ),
    (
        "resume-and-overwrite",
        lambda t, g: ["train", "--out", str(_copy_run(g, t / "r")), "--resume", "--overwrite"],
        ["--resume and --overwrite exclude each other"],
    ),
    (
        "train-existing",
        lambda t, g: ["train", "--out", str(_copy_run(g, t / "r")), *SMALL],
        ["already exists", "--resume", "--overwrite"],
    ),
]


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("build, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_changed(
    build, expected, tmp_path, good_run, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = build(tmp_path, good_run)
    before, good_before = _snapshot(tmp_path), _snapshot(good_run)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lstmkit: error: ")
    for s in expected:
        assert s in lines[0]
    assert _snapshot(tmp_path) == before
    assert _snapshot(good_run) == good_before


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "lstmkit", "predict", "--run", str(tmp_path / "none"), "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
