"""The training progress bar: on a terminal it shows the step count, the loss and the rate;
when stderr is not a terminal nothing but the result is written."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from lstmkit.cli import main

FLAGS = ["--epochs", "2", "--hidden-size", "4", "--length", "4", "--num-train", "32"]
FLAGS += ["--num-val", "8", "--num-test", "4", "--batch-size", "8", "--lr", "0.01"]


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *FLAGS]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("trained counting: 2 epochs")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pty")
def test_bar_on_a_terminal_shows_step_loss_and_rate(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 120 columns
    cmd = [sys.executable, "-m", "lstmkit", "train", "--out", str(tmp_path / "run"), *FLAGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    bar = b"".join(chunks).decode(errors="replace")
    assert re.search(r"\b8/8\b", bar), bar  # 32 windows / 8 per step × 2 epochs
    assert "loss=" in bar and "epoch=2" in bar, bar
    assert re.search(r"(step/s|s/step)", bar), bar
    assert b"trained counting" in stdout and b"\r" not in stdout  # the bar stays off stdout
