"""The LSTM variants from the command line: flags, config.json round trip, runs written before
the variants existed, bad values, and `inspect` tracing the variant's own gates."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import lstmkit
from lstmkit.checkpoint import load_run
from lstmkit.cli import build_parser, config_from_args, main
from lstmkit.config import ModelConfig, from_dict, to_dict
from lstmkit.errors import ConfigError
from lstmkit.inspect_gates import layer_extras, trace_layer, trace_run

SMALL = ["--epochs", "1", "--num-train", "32", "--num-val", "16", "--num-test", "8"]
VARIANT_KEYS = [
    "forget_bias",
    "init",
    "t_max",
    "layer_norm",
    "peephole",
    "coupled",
    "recurrent_dropout",
    "zoneout",
    "weight_drop",
    "cell_clip",
]


def _cfg(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_switches_and_values_parse():
    m = _cfg("--layer-norm", "--peephole", "--coupled", "false", "--zoneout", "0.1,0.2").model
    assert (m.layer_norm, m.peephole, m.coupled) == (True, True, False)
    assert m.zoneout == [0.1, 0.2]
    assert m.variant()["zoneout"] == (0.1, 0.2)
    m = _cfg("--zoneout", "0.25", "--weight-drop", "0.5", "--cell-clip", "3").model
    assert (m.zoneout, m.weight_drop, m.cell_clip) == (0.25, 0.5, 3.0)
    m = _cfg("--init", "chrono").model
    assert (m.init, m.t_max) == ("chrono", None)  # the task's window fills t_max at training
    assert _cfg().model == ModelConfig()  # no flag: every variant off


def test_config_round_trip_through_json():
    cfg = _cfg(
        "--init", "chrono", "--t-max", "50", "--layer-norm", "--zoneout", "0.1,0.05",
        "--recurrent-dropout", "0.2", "--weight-drop", "0.3", "--cell-clip", "2.5",
    )  # fmt: skip
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert again.model.variant() == cfg.model.variant()


def test_toml_config_sets_variants(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[model]\npeephole = true\nzoneout = [0.1, 0.3]\nforget_bias = 1\n")
    m = _cfg("--config", str(f)).model
    assert (m.peephole, m.zoneout, m.forget_bias) == (True, [0.1, 0.3], 1.0)


def test_help_names_the_variant_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--layer-norm [BOOL]", "--init uniform|chrono", "--zoneout Z|Z_C,Z_H"):
        assert flag in text
    assert "default: the training window, data.length" in text


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--zoneout", "1.5"], "model.zoneout must be a number in [0, 1), got 1.5"),
        (["--zoneout", "0.1,0.2,0.3"], "model.zoneout must be one number or two"),
        (["--recurrent-dropout", "-1"], "model.recurrent_dropout must be a number in [0, 1)"),
        (["--weight-drop", "1"], "model.weight_drop must be a number in [0, 1), got 1.0"),
        (["--init", "chrono", "--forget-bias", "1"], "both set the forget bias; use one"),
        (["--init", "chrono", "--length", "2"], "needs t_max, a number > 2, got 2.0"),
        (["--t-max", "10"], "t_max is used only with init='chrono'"),
        (
            ["--init", "orthogonal"],
            "argument --init: invalid choice: 'orthogonal' (choose from 'uniform', 'chrono')",
        ),
        (["--cell-clip", "0"], "model.cell_clip must be a positive number"),
        (["--layer-norm", "maybe"], "--layer-norm must be true or false, got 'maybe'"),
        (["--dropout", "0.3"], "model.dropout acts between LSTM layers"),
    ],
)
def test_bad_values_one_line_exit_2_no_run_dir(argv, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("lstmkit: error: ")
    assert message in err, err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_dropout_with_two_layers_is_accepted():
    assert _cfg("--dropout", "0.3", "--num-layers", "2").model.dropout == 0.3


@pytest.mark.slow
def test_variant_run_end_to_end(tmp_path, capsys):
    """Train with several variants; every command reloads them from config.json."""
    out = tmp_path / "run"
    flags = ["--hidden-size", "8", "--length", "6", "--layer-norm", "--peephole"]
    flags += ["--zoneout", "0.1,0.05", "--recurrent-dropout", "0.1", "--weight-drop", "0.2"]
    flags += ["--init", "chrono", "--cell-clip", "4"]
    assert main(["train", "--out", str(out), *SMALL, *flags]) == 0
    saved = json.loads((out / "config.json").read_text())["config"]["model"]
    assert saved["t_max"] == 6.0  # chrono's default: the training window
    assert (saved["layer_norm"], saved["peephole"], saved["zoneout"]) == (True, True, [0.1, 0.05])
    run = load_run(out)
    v = run.model.lstm.variant
    assert (v.layer_norm, v.peephole, v.zoneout_c, v.zoneout_h, v.weight_drop) == (
        True, True, 0.1, 0.05, 0.2,
    )  # fmt: skip
    assert {"lstm.weight_ln_ih_l0", "lstm.weight_ln_c_l0", "lstm.weight_peephole_l0"} <= set(
        run.model.state_dict()
    )
    capsys.readouterr()
    for argv in (
        ["predict", "--run", str(out), "1", "2", "3"],
        ["evaluate", "--run", str(out)],
        ["inspect", "--run", str(out), "1", "2", "3"],
        ["plot", "--run", str(out)],
    ):
        assert main(argv) == 0, argv
    assert (out / "gates.png").is_file()
    # resume reads the variant back from config.json and continues the same run
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert load_run(out).model.lstm.variant == v


def test_coupled_text_run_generates(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "run"
    flags = ["--task", "text", "--text", str(text), "--length", "16", "--hidden-size", "16"]
    flags += ["--coupled", "--forget-bias", "1", "--embedding-dim", "8", "--zoneout", "0.1"]
    assert main(["train", "--out", str(out), *SMALL, *flags]) == 0
    run = load_run(out)
    assert run.model.lstm.variant.coupled and run.model.lstm.variant.forget_bias == 1.0
    capsys.readouterr()
    argv = ["generate", "--run", str(out), "--prompt", "the", "--chars", "20", "--seed", "1"]
    assert main(argv) == 0
    assert len(capsys.readouterr().out) >= 23


def _strip_variant_keys(run_dir):
    """Rewrite config.json as lstmkit wrote it before the variants: no variant keys."""
    meta = json.loads((run_dir / "config.json").read_text())
    for k in VARIANT_KEYS:
        del meta["config"]["model"][k]
    (run_dir / "config.json").write_text(json.dumps(meta))
    return meta


def test_runs_written_before_the_variants_still_load(tmp_path, capsys):
    out = tmp_path / "old"
    assert main(["train", "--out", str(out), *SMALL, "--hidden-size", "8"]) == 0
    assert main(["predict", "--run", str(out), "3", "4", "5"]) == 0
    capsys.readouterr()
    before = load_run(out)
    meta = _strip_variant_keys(out)
    assert not set(VARIANT_KEYS) & set(meta["config"]["model"])
    run = load_run(out)
    assert dataclasses.asdict(run.config.model) == dataclasses.asdict(before.config.model)
    assert run.model.lstm.variant.is_plain() and run.model.lstm.variant.init == "uniform"
    x = torch.randn(2, 5, 1)
    torch.testing.assert_close(run.model(x), before.model(x))
    assert main(["predict", "--run", str(out), "3", "4", "5"]) == 0
    assert main(["evaluate", "--run", str(out)]) == 0
    assert main(["train", "--out", str(out), "--resume"]) == 0


def test_saved_dropout_with_one_layer_still_loads(tmp_path, capsys):
    """The one-layer dropout refusal is for new runs: a run saved with it (trained before the
    rule, when it only warned) loads."""
    out = tmp_path / "old"
    assert main(["train", "--out", str(out), *SMALL, "--hidden-size", "8"]) == 0
    meta = _strip_variant_keys(out)
    meta["config"]["model"]["dropout"] = 0.3
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="dropout acts between LSTM layers"):
        run = load_run(out)
    assert run.config.model.dropout == 0.3
    with pytest.raises(ConfigError, match="model.dropout acts between LSTM layers"):
        from lstmkit.train import train

        train(run.config, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()


VARIANTS = [
    {"layer_norm": True, "peephole": True},
    {"peephole": True, "coupled": True, "cell_clip": 0.3},
    {"layer_norm": True, "zoneout": (0.3, 0.2), "recurrent_dropout": 0.4, "weight_drop": 0.3},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=["ln-peephole", "cifg-clip", "ln-zoneout"])
def test_trace_is_the_variant_layer(variant):
    """trace_layer with the layer's variant tensors gives the layer's own output, in eval."""
    torch.manual_seed(0)
    T, I, H = 7, 3, 5
    layer = lstmkit.LSTM(I, H, backend="reference", dtype=torch.float64, **variant).eval()
    with torch.no_grad():  # move the layer-norm gains and shifts off their initial 1 and 0
        for name, p in layer.named_parameters():
            if "_ln_" in name or "peephole" in name:
                p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(T, I, dtype=torch.float64) * 2
    w = [getattr(layer, f"{n}_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    tr = trace_layer(x, *w, extras=layer_extras(layer, T))
    with torch.no_grad():
        out, _ = layer(x)
        cells = [layer(x[: t + 1])[1][1][0] for t in range(T)]
    torch.testing.assert_close(tr.hidden, out)
    torch.testing.assert_close(tr.cell, torch.stack(cells))
    if variant.get("coupled"):
        torch.testing.assert_close(tr.forget_gate, 1 - tr.input_gate)
    if variant.get("cell_clip"):
        assert tr.cell.abs().max() <= variant["cell_clip"] + 1e-12
    plain = trace_layer(x, *w)  # the plain cell's trace is a different one
    assert (plain.hidden - tr.hidden).abs().max() > 1e-3


def test_inspect_of_a_layer_norm_peephole_run_traces_the_model(tmp_path):
    out = tmp_path / "run"
    flags = ["--hidden-size", "6", "--layer-norm", "--peephole", "--zoneout", "0.2"]
    assert main(["train", "--out", str(out), *SMALL, "--epochs", "3", *flags]) == 0
    run = load_run(out)
    values = [2.0, 3.0, 4.0, 5.0, 6.0]
    tr = trace_run(run, values)
    xs, _ = run.scaler.encode(torch.tensor(values).view(1, -1, 1))
    with torch.no_grad():
        h, _ = run.model.lstm(xs)
    torch.testing.assert_close(tr.hidden, h[0])


def test_captions_state_the_variant_equations():
    from lstmkit.inspect_gates import CAPTIONS, captions
    from lstmkit.variants import Variant

    assert captions(Variant()) == CAPTIONS
    cap = captions(Variant.make(coupled=True, layer_norm=True, zoneout=0.2, cell_clip=3))
    assert cap["forget gate"].startswith("f = 1 - i (coupled)")
    assert cap["cell state"].startswith("c = 0.2·c_prev + 0.8·(clip(f·c_prev + i·g, ±3))")
    assert "tanh(LN(c))" in cap["hidden state"]
    assert "p·c" in captions(Variant.make(peephole=True))["output gate"]


@pytest.mark.parametrize("flags", [["--weight-drop", "0.3"], ["--recurrent-dropout", "0.2"]])
def test_one_stochastic_variant_alone_trains_and_predicts(flags, tmp_path, capsys):
    """Weight drop alone needs no kernel feature (auto runs the plain native kernels);
    recurrent dropout alone needs one in training and none in evaluation."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *SMALL, *flags]) == 0
    assert main(["predict", "--run", str(out), "5", "6", "7", "8"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()[-1].split()) == 4
