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
        ["argument --task: invalid choice: 'nope' (choose from 'counting'"],
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
        ["--lr must be a finite number, got 'nan'"],
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
        ["--horizon must be an integer in 1..100000, got '0'"],
    ),
    (
        "predict-horizon-text",
        lambda t, g: ["predict", "--run", str(g), "--horizon", "x", "5"],
        ["--horizon must be an integer, got 'x'"],
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


def _file(tmp, name="afile.txt"):
    (tmp / name).write_text("the user's file\n")
    return str(tmp / name)


def _dir(tmp, name="adir"):
    (tmp / name).mkdir()
    (tmp / name / "keep.txt").write_text("the user's file\n")
    return str(tmp / name)


HUGE = str(10**30)
P = ["predict", "--run"]
# The classes of issue 13, at the command line's edge: huge, negative, NaN/inf, empty,
# unicode, bounds, missing folders, a file where a directory belongs and the reverse.
CASES += (
    [
        (
            f"huge-int-{flag}",
            lambda t, g, flag=flag: ["train", "--out", str(t / "n"), flag, HUGE],
            [f"{flag} must be an integer in", HUGE],
        )
        for flag in ("--hidden-size", "--seed", "--epochs", "--num-train", "--length")
    ]
    + [
        (
            f"{cmd}-huge-{flag}",
            lambda t, g, c=cmd, f=flag: [c, f, HUGE],
            [f"{flag} must be an integer in"],
        )
        for cmd, flag in (
            ("predict", "--horizon"),
            ("generate", "--chars"),
            ("generate", "--seed"),
            ("backtest", "--windows"),
            ("backtest", "--step"),
        )
    ]
    + [
        (
            "predict-horizon-over-bound",
            lambda t, g: [*P, str(g), "--horizon", "100001", "5"],
            ["--horizon must be an integer in 1..100000, got '100001'"],
        ),
        (
            "predict-horizon-negative",
            lambda t, g: [*P, str(g), "--horizon", "-3", "5"],
            ["--horizon must be an integer in 1..100000, got '-3'"],
        ),
        (
            "flag-int-unicode-digits",
            lambda t, g: ["train", "--epochs", "٣"],
            ["--epochs must be an integer, got '٣'"],
        ),
        (
            "flag-int-underscore",
            lambda t, g: ["train", "--epochs", "1_0"],
            ["--epochs must be an integer"],
        ),
        (
            "flag-float-inf",
            lambda t, g: ["train", "--clip", "inf"],
            ["--clip must be a finite number, got 'inf'"],
        ),
        (
            "flag-float-overflow",
            lambda t, g: ["train", "--lr", "1e400"],
            ["--lr must be a finite number, got '1e400'"],
        ),
        (
            "flag-choice",
            lambda t, g: ["train", "--optimizer", "sgd"],
            ["--optimizer", "invalid choice: 'sgd'"],
        ),
        (
            "flag-bool",
            lambda t, g: ["train", "--layer-norm", "maybe"],
            ["--layer-norm must be true or false"],
        ),
        (
            "flag-nul",
            lambda t, g: ["train", "--column", "a\x00b"],
            ["--column must not contain a NUL"],
        ),
        (
            "flag-long-value-cut",
            lambda t, g: ["train", "--epochs", "x" * 10000],
            ["--epochs must be an integer, got 'xxxx", "...'"],
        ),
        (
            "config-empty",
            lambda t, g: ["train", "--config", ""],
            ["--config must be a path, got ''"],
        ),
        (
            "predict-csv-empty",
            lambda t, g: [*P, str(g), "--csv", " "],
            ["--csv must be a path, got ' '"],
        ),
        ("run-empty", lambda t, g: ["evaluate", "--run", ""], ["--run must be a path, got ''"]),
        (
            "train-out-empty",
            lambda t, g: ["train", "--out", "", *SMALL],
            ["--out must be a path, got ''"],
        ),
        *[
            (
                f"generate-temperature-{v}",
                lambda t, g, v=v: ["generate", "--temperature", v],
                ["--temperature must be a number in [0.001, 1000]", repr(v)],
            )
            for v in ("1e-320", "inf", "nan", "0", "-1", "1e9")
        ],
        (
            "generate-seed-negative",
            lambda t, g: ["generate", "--seed", "-1"],
            ["--seed must be an integer in 0.."],
        ),
        (
            "backtest-windows-zero",
            lambda t, g: ["backtest", "--windows", "0"],
            ["--windows must be an integer in 1..1000, got '0'"],
        ),
        (
            "backtest-step-zero",
            lambda t, g: ["backtest", "--step", "0"],
            ["--step must be an integer in 1..1000000, got '0'"],
        ),
        *[
            (
                f"{cmd}-level-{v}",
                lambda t, g, c=cmd, v=v: [c, "--level", v],
                ["--level must be between 0 and 100 (exclusive)", repr(v)],
            )
            for cmd in ("predict", "backtest")
            for v in ("0", "100", "nan", "-5")
        ],
        (
            "predict-unicode-digits",
            lambda t, g: [*P, str(g), "٣", "٤"],
            ["values must be numbers, got '٣'"],
        ),
        (
            "predict-underscore",
            lambda t, g: [*P, str(g), "1_000"],
            ["values must be numbers, got '1_000'"],
        ),
        ("predict-empty-value", lambda t, g: [*P, str(g), ""], ["values must be numbers, got ''"]),
        (
            "predict-beyond-float32",
            lambda t, g: [*P, str(g), "5", "1e39"],
            ["within float32's range", "got 1e+39"],
        ),
        (
            "predict-negative-exponent-value",
            lambda t, g: [*P, str(g), "-1e3", "5"],
            ["unrecognized arguments: -1e3", "put -- before"],
        ),
        (
            "predict-out-missing-parent",
            lambda t, g: [*P, str(g), "--horizon", "2", "--out", str(t / "no" / "d"), "5"],
            ["folder", "does not exist"],
        ),
        (
            "predict-out-legacy-missing-parent",
            lambda t, g: [*P, str(g), "--horizon", "2", "--out", str(t / "no" / "f.csv"), "5"],
            ["folder", "does not exist"],
        ),
        (
            "predict-out-is-a-file",
            lambda t, g: [*P, str(g), "--out", _file(t), "5"],
            ["is a file; --out takes a directory", "DIR/forecast.csv"],
        ),
        (
            "predict-out-empty",
            lambda t, g: [*P, str(g), "--out", "", "5"],
            ["--out must be a path, got ''"],
        ),
        (
            "predict-csv-is-a-dir",
            lambda t, g: [*P, str(g), "--csv", _dir(t), "5"],
            ["--csv takes a run of the csv task"],
        ),
        (
            "predict-run-is-a-file",
            lambda t, g: [*P, _file(t), "5"],
            ["run directory", "does not exist"],
        ),
        (
            "predict-onnx-is-a-dir",
            lambda t, g: ["predict", "--onnx", _dir(t), "5"],
            ["ONNX file", "does not exist"],
        ),
        (
            "inspect-out-missing-parent",
            lambda t, g: ["inspect", "--run", str(g), "--out", str(t / "no" / "d"), "1"],
            ["--out", "folder", "does not exist"],
        ),
        (
            "inspect-out-is-a-file",
            lambda t, g: ["inspect", "--run", str(g), "--out", _file(t), "1"],
            ["is a file; --out takes a directory", "DIR/gates.png"],
        ),
        (
            "inspect-png-is-a-dir",
            lambda t, g: ["inspect", "--run", str(g), "--png", _dir(t, "d.png"), "1"],
            ["--png", "is a directory; expected a file"],
        ),
        (
            "inspect-png-not-png",
            lambda t, g: ["inspect", "--run", str(g), "--png", str(t / "g.xyz"), "1"],
            ["--png must name a .png file, got"],
        ),
        (
            "inspect-out-and-png",
            lambda t, g: [
                "inspect",
                "--run",
                str(g),
                "--out",
                str(t),
                "--png",
                str(t / "g.png"),
                "1",
            ],
            ["give --out DIR or --png FILE, not both"],
        ),
        (
            "inspect-new-dir-bad-values",
            lambda t, g: ["inspect", "--run", str(g), "--out", str(t / "new"), "1", "nan"],
            ["values must be finite numbers, got nan"],
        ),
        (
            "export-out-is-a-file",
            lambda t, g: ["export", "--run", str(g), "--out", _file(t)],
            ["is a file; --out takes a directory", "DIR/model.onnx"],
        ),
        (
            "export-onnx-is-a-dir",
            lambda t, g: ["export", "--run", str(g), "--onnx", _dir(t)],
            ["--onnx", "is a directory; expected a file"],
        ),
        (
            "export-out-missing-parent",
            lambda t, g: ["export", "--run", str(g), "--out", str(t / "no" / "d")],
            ["folder", "does not exist"],
        ),
        (
            "export-out-and-onnx",
            lambda t, g: ["export", "--run", str(g), "--out", str(t), "--onnx", "m.onnx"],
            ["give --out DIR or --onnx FILE, not both"],
        ),
        (
            "evaluate-run-is-a-file",
            lambda t, g: ["evaluate", "--run", _file(t)],
            ["run directory", "does not exist"],
        ),
        (
            "plot-run-is-a-dir-of-other-things",
            lambda t, g: ["plot", "--run", _dir(t)],
            ["is incomplete"],
        ),
    ]
)


def _hostile(tmp, good, name, data: bytes, argv):
    """A copy of the good run with file ``name`` replaced by ``data``; the command on it."""
    run = _copy_run(good, tmp / "hostile")
    (run / name).write_bytes(data)
    return [argv[0], "--run", str(run), *argv[1:]]


LEVEL = ["predict", "--level", "80", "--horizon", "2", "5", "6"]
INTERVALS = "intervals.json"
CASES += [
    (f"hostile-{name}-{i}", lambda t, g, n=name, d=data, a=argv: _hostile(t, g, n, d, a), expected)
    for i, (name, data, argv, expected) in enumerate(
        [
            ("metrics.csv", b"epoch,train_loss\n1,0.5\n", ["plot"], ["no column val_loss"]),
            ("metrics.csv", b"\xff\xfe\x00", ["plot"], ["metrics.csv is corrupted"]),
            ("metrics.csv", b"epoch,train_loss,val_loss\n1,inf,1\n", ["plot"], ["must be finite"]),
            ("metrics.csv", b"epoch,train_loss,val_loss\n1,x,1\n", ["plot"], ["is corrupted"]),
            (INTERVALS, b"{bad", LEVEL, ["intervals.json is corrupted: expected JSON"]),
            (INTERVALS, b"[1, 2]", LEVEL, ["intervals.json is corrupted: expected JSON"]),
            (INTERVALS, b"\xff\xfe", LEVEL, ["intervals.json is corrupted: expected JSON"]),
            (INTERVALS, b'{"scaled_residuals": "abc"}', LEVEL, ["must be finite numbers >= 0"]),
            (INTERVALS, b'{"scaled_residuals": [NaN, 1]}', LEVEL, ["must be finite numbers >= 0"]),
            (INTERVALS, b'{"scaled_residuals": [-1, 1]}', LEVEL, ["must be finite numbers >= 0"]),
            (INTERVALS, b'{"scaled_residuals": [1e308]}', LEVEL, ["beyond float32's range"]),
            (INTERVALS, b'{"scaled_residuals": []}', LEVEL, ["holds no residuals"]),
        ]
    )
]


def _snapshot(root):
    """Every file and folder under ``root`` (a failed command must create neither)."""
    return {p: p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


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


@pytest.mark.parametrize(
    "line, expected",
    [("1e39", "within float32's range"), ("nan", "finite numbers, got nan"), ("٣", "got '٣'")],
)
def test_stream_bad_line_is_one_line_after_the_good_ones(
    good_run, capsys, monkeypatch, line, expected
):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"5\n{line}\n6\n"))
    assert main(["predict", "--stream", "--run", str(good_run)]) == 2
    out, err = capsys.readouterr()
    assert len(out.split()) == 1  # the prediction for 5, then the stop
    assert err.count("\n") == 1 and expected in err, err
