"""The one-call GPU script (bench/gpu_session.sh) runs end to end on this CPU machine, so a
GPU session spends its scarce minutes measuring, not debugging the scripts.

Without CUDA the script runs its smoke form: the compile report for an H100, gpu_check.py
with tiny sizes in Triton's interpreter, and gpu_integration.py through the CPU backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_session_script_smoke_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(["bash", str(ROOT / "bench/gpu_session.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "no CUDA device: a smoke run on the CPU" in log

    report = (tmp_path / "compile_report.md").read_text()
    rows = [r for r in report.splitlines() if r.startswith("| fp32 |")]
    assert len(rows) == 2  # hidden 64 and 256 at batch 16, each compiled for sm_90

    md = (tmp_path / "gpu_results.md").read_text()
    assert "correctness: ALL PASS" in md
    assert "| default | 16 | 3 | 3 |" in md  # torch's default flags, with the tutorial loop
    res = json.loads((tmp_path / "gpu_results.json").read_text())
    assert all(r["passed"] for r in res["correctness"])
    assert {r["mode"] for r in res["timings"]} == {"fp32", "default"}
    assert all(r["triton_fwd_ms"] > 0 and r["cudnn_fb_ms"] > 0 for r in res["timings"])

    integ = (tmp_path / "gpu_integration.txt").read_text()
    assert integ.count("-> PASS") >= 4 and "FAIL" not in integ
