"""Whatever goes wrong inside a command, main() prints one line and returns an exit code;
LSTMKIT_DEBUG=1 lets the error through with its traceback."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

import lstmkit.cli
from lstmkit.cli import main
from lstmkit.errors import ConfigError, TrainingError


def _raise(exc):
    def command(args):
        raise exc

    return command


@pytest.mark.parametrize(
    "exc, code, line",
    [
        (
            ConfigError("model.x must be > 0, got 0"),
            2,
            "lstmkit: error: model.x must be > 0, got 0",
        ),
        (ConfigError("two\nlines"), 2, "lstmkit: error: two lines"),
        (TrainingError("loss became nan"), 1, "lstmkit: error: loss became nan"),
        (KeyboardInterrupt(), 130, "lstmkit: interrupted"),
        (
            KeyboardInterrupt("interrupted at epoch 3; resume with --resume"),
            130,
            "lstmkit: interrupted at epoch 3; resume with --resume",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "runs/x/model.safetensors"),
            1,
            "lstmkit: error: No space left on device: runs/x/model.safetensors",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/ro/a", None, "/ro/b"),
            1,
            "lstmkit: error: Permission denied: /ro/a -> /ro/b",
        ),
        (
            OSError(errno.EROFS, "Read-only file system"),
            1,
            "lstmkit: error: Read-only file system: (no path given by the system)",
        ),
        (RecursionError("maximum recursion depth exceeded"), 1, "recursion limit reached"),
        (MemoryError(), 1, "lstmkit: error: out of memory"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 4 TB\nmore"),
            1,
            "lstmkit: error: out of memory (the input or the model is too large): Default",
        ),
        (
            TypeError("unsupported operand\nsecond line"),
            1,
            "internal error: TypeError: unsupported",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_every_error_is_one_line(monkeypatch, capsys, exc, code, line):
    monkeypatch.delenv("LSTMKIT_DEBUG", raising=False)
    monkeypatch.setattr(lstmkit.cli, "cmd_plot", _raise(exc))
    assert main(["plot"]) == code
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(line) or line in err, err


def test_a_closed_stdout_ends_quietly(monkeypatch, capsys):
    monkeypatch.setattr(lstmkit.cli, "cmd_plot", _raise(BrokenPipeError(errno.EPIPE, "pipe")))
    assert main(["plot"]) == 1
    assert capsys.readouterr().err == ""


def test_debug_lets_the_traceback_through(monkeypatch):
    monkeypatch.setenv("LSTMKIT_DEBUG", "1")
    monkeypatch.setattr(lstmkit.cli, "cmd_plot", _raise(TypeError("a bug")))
    with pytest.raises(TypeError, match="a bug"):
        main(["plot"])


def test_ctrl_c_in_a_real_process_is_one_line_exit_130(tmp_path):
    """A real SIGINT while predict --stream waits on stdin: exit 130, one line, no traceback
    (sent once the first prediction is out, so that the command itself is running)."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--hidden-size", "4"]) == 0
    p = subprocess.Popen(
        [sys.executable, "-m", "lstmkit", "predict", "--stream", "--run", str(run)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "LSTMKIT_DEBUG"},
    )
    p.stdin.write("5\n")
    p.stdin.flush()
    first = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert float(first) == pytest.approx(float(first))  # a prediction came out
    assert p.returncode == 130, err
    assert out == "" and err == "lstmkit: interrupted\n"
