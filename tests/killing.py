"""Test helpers: run a function in a forked child that is SIGKILLed (or signalled) at a chosen
instant of its saving, from the test side: the child patches the library's write function
and kills itself there. A fork costs no interpreter start-up, so every save point of a short
run can be tried."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import torch

import lstmkit.checkpoint as ckpt
import lstmkit.rundir as rundir
from lstmkit.config import RunConfig

PHASES = ("before", "torn", "after")  # nothing written / a temporary half written / renamed


def _die(sig: int) -> None:
    os.kill(os.getpid(), sig)
    if sig == signal.SIGKILL:
        os._exit(137)  # not reached


def count_writes(fn) -> list[str]:
    """The names of the files ``fn()`` writes atomically, in order (run in this process)."""
    names: list[str] = []
    real = ckpt.atomic_write

    def recording(path, data):
        names.append(Path(path).name)
        real(path, data)

    ckpt.atomic_write = recording
    try:
        fn()
    finally:
        ckpt.atomic_write = real
    return names


def in_child(
    fn, *, write: int = 0, phase: str = "before", sig: int = signal.SIGKILL, at_exchange: str = ""
) -> tuple[int, str]:
    """Fork; the child runs ``fn()`` and sends itself ``sig`` at its ``write``-th atomic write
    (1-based, in ``phase``), or around the overwrite's exchange (``at_exchange`` "before" or
    "after"). Returns (exit status as a shell reports it, the child's stderr)."""
    err = tempfile.TemporaryFile()  # noqa: SIM115 - the child writes it, the parent reads it
    pid = os.fork()
    if pid == 0:  # the child: never returns to the test runner
        code = 70
        try:
            os.dup2(err.fileno(), 2)
            sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115 - fd 2 itself
            torch.set_num_threads(1)
            _arm(write, phase, sig, at_exchange)
            code = fn() or 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            print(f"child raised {type(e).__name__}: {e}", file=sys.stderr)
            code = 71
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    err.seek(0)
    return (128 - code if code < 0 else code), err.read().decode(errors="replace")


def _arm(write: int, phase: str, sig: int, at_exchange: str) -> None:
    real_write, real_exchange = ckpt.atomic_write, rundir.exchange
    n = {"writes": 0}

    def write_then_die(path, data):
        n["writes"] += 1
        if n["writes"] != write:
            return real_write(path, data)
        if phase == "before":
            _die(sig)
        if phase == "torn":  # a temporary half written, as a kill inside the write leaves
            Path(path).with_name(f".{Path(path).name}.killed.tmp").write_bytes(
                data[: len(data) // 2]
            )
            _die(sig)
        real_write(path, data)
        if phase == "after":
            _die(sig)

    def exchange_then_die(a, b):
        if at_exchange == "before":
            _die(sig)
        done = real_exchange(a, b)
        if at_exchange == "after":
            _die(sig)
        return done

    ckpt.atomic_write = write_then_die
    rundir.exchange = exchange_then_die


def small_config(seed: int = 0) -> RunConfig:
    """A counting run of 3 short epochs, a checkpoint at every epoch end."""
    cfg = RunConfig()
    cfg.train.device = "cpu"  # the tests fork; a forked child cannot use CUDA its parent began
    cfg.train.epochs, cfg.train.seed, cfg.train.checkpoint_every = 3, seed, 0.0
    cfg.data.num_train, cfg.data.num_val, cfg.model.hidden_size = 48, 16, 6
    return cfg
