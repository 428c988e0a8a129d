"""The CPU benchmark's core on one tiny cell: it runs every contestant and writes valid JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_cpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_one_tiny_cell_gives_the_documented_json(bench, tmp_path):
    result = bench.run([(8, 2, 3)], budget_s=0.0, min_reps=1, log=lambda s: None)
    result = json.loads(json.dumps(result))  # must survive a JSON round trip
    assert set(result) >= {"machine", "settings", "cells", "summary"}
    assert result["machine"]["threads"] >= 1 and result["machine"]["cpu"]
    cells = result["cells"]
    assert [c["mode"] for c in cells] == ["infer", "train"]
    for c in cells:
        assert (c["H"], c["B"], c["T"]) == (8, 2, 3)
        assert set(c["median_s"]) == {"nn.LSTM", "tutorial", "auto", "fused", "native"}
        assert all(t > 0 for t in c["median_s"].values())
        assert all(n >= 1 for n in c["reps"].values())
        assert set(c["ratio"]) == {"tutorial", "auto", "fused", "native"}
        assert c["auto"][0] in ("native", "fused")
    for mode in ("infer", "train"):
        s = result["summary"][mode]
        assert s["auto"]["cells"] == 1 and s["auto"]["geomean_ratio"] > 0
        assert s["auto_vs_tutorial"][0]["speedup"] > 0
    table = bench.markdown(result)
    assert "| infer | 8 | 2 | 3 |" in table and "geomean" in table
    assert result["machine"]["peak_gflops"] > 0 and result["machine"]["bandwidth_gbs"] > 0
    for c in cells:  # the roofline: achieved rates and the share of the machine's limit
        for who in ("nn.LSTM", "auto"):
            rl = c["roofline"][who]
            assert rl["gflops"] > 0 and rl["gbs"] > 0 and rl["of_limit"] > 0
            assert rl["bound"] in ("compute", "memory")
    assert "of limit" in table


def test_cli_quick_writes_json(bench, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    # --quick with a tiny grid patched in, so the test stays fast
    monkeypatch.setattr(bench, "quick_grid", lambda: [(8, 1, 2)])
    assert bench.main(["--quick", "--out", str(out), "--budget", "0", "--min-reps", "1"]) == 0
    data = json.loads(out.read_text())
    assert len(data["cells"]) == 2
    assert "| mode |" in capsys.readouterr().out


def test_big_cells_skip_the_tutorial_loop(bench):
    names, skipped = bench.contestants(1024, 256, 1000)
    assert "tutorial" not in names and "tutorial" in skipped
    names, skipped = bench.contestants(16, 1, 100)
    assert "tutorial" in names and not skipped


def test_variants_benchmark_on_tiny_cells(tmp_path):
    """bench_cpu.py --variants: every variant timed against nn.LSTM and the reference loop,
    through auto (which runs the native kernels for every variant)."""
    spec = importlib.util.spec_from_file_location(
        "bench_variants", BENCH.with_name("bench_variants.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    names = ["layer_norm", "zoneout", "layer_norm+recurrent_dropout"]
    result = json.loads(json.dumps(mod.run([(8, 2, 3)], names, budget_s=0.0, log=lambda s: None)))
    assert [(c["variant"], c["mode"]) for c in result["cells"]] == [
        (n, m) for n in names for m in ("train", "infer")
    ]
    for c in result["cells"]:
        assert set(c["median_s"]) == {"nn.LSTM", "auto", "reference"}
        assert c["auto_pick"] == "native" and c["auto_vs_nn"] > 0 and c["reference_vs_auto"] > 0
    assert set(result["summary"]) == set(names)
    assert "| layer_norm |" in mod.markdown(result)


@pytest.mark.slow
def test_variants_quality_quick_run_writes_its_tables(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "variants_quality", BENCH.with_name("variants_quality.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 100)
    out = tmp_path / "q.json"
    assert mod.main(["--quick", "--seeds", "0", "1", "--text", str(text), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["text"]) == 4 * 2 and len(result["adding"]) == 2 * 3 * 2
    assert {r["variant"] for r in result["text"]} == set(mod.TEXT_VARIANTS)
    assert all(r["val_bpc"] > 0 and r["seconds"] > 0 for r in result["text"])
    assert all(r["test_mse"] >= 0 for r in result["adding"])
    printed = capsys.readouterr().out
    assert "| zoneout 0.5,0.05 |" in printed and "| 40 | chrono (t_max = T) |" in printed


def test_ratios_pair_the_contestants_round_by_round(bench):
    # the machine's speed changes between rounds (x1, x3, x2) and auto hits one hiccup:
    # paired 0.5, 0.5, 1.25 -> 0.5, where the ratio of the medians (3 / 4) says 0.75
    times = {"nn.LSTM": [2.0, 6.0, 4.0], "auto": [1.0, 3.0, 5.0]}
    assert bench.paired_ratios(times) == {"auto": 0.5}
    times = {"nn.LSTM": [1.0, 2.0, 3.0], "native": [3.0, 2.0, 1.0]}
    assert bench.paired_ratios(times) == {"native": 1.0}  # ratios 3, 1, 1/3


def test_auto_is_asked_as_the_cell_runs(bench):
    """A big cell times auto once and gives its time to the backend auto picks, so the pick
    must be asked in the cell's own mode: bfloat16 inference and training go to different
    backends (inference to native's bfloat16 tiles where the CPU has them)."""
    import torch

    import lstmkit
    from lstmkit.backends import native

    m = lstmkit.LSTM(1024, 1024).to(torch.bfloat16)
    x = torch.randn(2, 16, 1024).bfloat16()
    infer, train = bench._choice(m, x, "infer")[0], bench._choice(m, x, "train")[0]
    assert train == "fused"  # B*H^2 = 2^24 at hidden 1024: oneDNN's bfloat16 GEMMs to train
    assert infer == ("native" if native.has_bf16_tiles() else "fused")
