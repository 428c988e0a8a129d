"""The Triton backend's variants (peepholes, layer norm, coupled gates, cell clipping,
recurrent dropout, zoneout), run on the CPU in triton's interpreter, against the reference
backend on the same parameters and masks: outputs, final states and every gradient, the
variants' own parameters included. Also what ``unsupported`` and ``auto`` on CUDA say.

Sizes are tiny: the interpreter runs every program of the grid one after another, in Python.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

from conftest import interpreted_triton_kernels  # noqa: E402

from lstmkit import LSTM, BackendError  # noqa: E402
from lstmkit.backends import Request, policy_cuda, reference, resolve  # noqa: E402
from lstmkit.backends import triton as tb  # noqa: E402
from lstmkit.variants import FEATURES, CellExtras  # noqa: E402

kernels = interpreted_triton_kernels()

TOL = {"atol": 2e-5, "rtol": 2e-5}


def _case(T, B, I, H, feats, lengths, seed=0):
    """Inputs, weights and a CellExtras with every feature in ``feats``: its parameters are
    leaves that require grad (returned in ``params``), its masks are fixed tensors."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * scale + shift).requires_grad_()

    def bern(p, *shape):
        return torch.bernoulli(torch.full(shape, p), generator=g)

    k = H**-0.5
    x, h0, c0 = rnd(T, B, I), rnd(B, H), rnd(B, H)
    w = [rnd(4 * H, I, scale=k), rnd(4 * H, H, scale=k), rnd(4 * H, scale=k), rnd(4 * H, scale=k)]
    ex, params = CellExtras(), {}
    if "peephole" in feats:
        ex.peephole = params["peephole"] = rnd(3 * H, scale=0.5)
    if "layer_norm" in feats:  # gains away from 1 and a shift, so that each one matters
        ln = (rnd(4 * H, scale=0.3, shift=1), rnd(4 * H, scale=0.3, shift=1),
              rnd(H, scale=0.3, shift=1), rnd(H, scale=0.2))  # fmt: skip
        ex.layer_norm = ln
        params.update(g_ih=ln[0], g_hh=ln[1], g_c=ln[2], b_c=ln[3])
    ex.coupled = "coupled" in feats
    if "cell_clip" in feats:
        ex.cell_clip = 0.3  # small: some cells are clipped, some are not
    if "recurrent_dropout" in feats:
        ex.h_mask = bern(0.7, B, H) / 0.7
    if "zoneout" in feats:
        ex.zoneout_c, ex.zoneout_h = bern(0.3, T, B, H), bern(0.4, T, B, H)
    if "zoneout_eval" in feats:  # evaluation: the probabilities themselves
        ex.zoneout_c, ex.zoneout_h = 0.25, None
    lens = None
    if lengths:
        lens = torch.randint(1, T + 1, (B,), generator=g)
        lens[0], lens[-1] = T, max(1, T - 2)  # a full sequence and a shorter one
    return x, h0, c0, w, lens, ex, params


def _compare(feats, T=4, B=3, I=3, H=8, reverse=False, lengths=True, seed=0):
    x, h0, c0, w, lens, ex, params = _case(T, B, I, H, feats, lengths, seed)
    args = (x, h0, c0, *w, None, lens, reverse)
    got = tb.run(*args, extras=ex)
    want = reference.run(*args, extras=ex)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    if lens is not None:
        assert (got[0][lens[-1] :, -1] == 0).all()  # zero past the length
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(o.shape, generator=g) for o in want]
    names = ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh", *params]
    inputs = [x, h0, c0, *w, *params.values()]
    got_g = torch.autograd.grad(got, inputs, cot)
    want_g = torch.autograd.grad(want, inputs, cot)
    worst = 0.0
    for name, a, b in zip(names, got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")
        assert b.abs().max() > 0, f"grad {name} is zero: the case tests nothing"
        worst = max(worst, (a - b).abs().max().item())
    return worst


SINGLE = ["peephole", "layer_norm", "coupled", "cell_clip", "recurrent_dropout", "zoneout",
          "zoneout_eval"]  # fmt: skip


@pytest.mark.parametrize("feat", SINGLE)
@pytest.mark.parametrize("reverse", [False, True])
def test_each_variant_matches_reference(feat, reverse):
    _compare({feat}, reverse=reverse)


COMBOS = {
    "all": {"peephole", "layer_norm", "coupled", "cell_clip", "recurrent_dropout", "zoneout"},
    "ln_peephole_dropout": {"layer_norm", "peephole", "recurrent_dropout"},
    "zoneout_clip_coupled": {"zoneout", "cell_clip", "coupled"},
}


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("reverse, lengths", [(False, False), (True, True)])
def test_combinations_match_reference(combo, reverse, lengths):
    _compare(COMBOS[combo], reverse=reverse, lengths=lengths, H=6)  # H < HP: padded columns


# Work splits the default plan does not pick at these sizes (see test_triton.SPLITS): several
# programs over the units (not with layer norm: it keeps every unit in one program, whatever
# BH asks), weights streamed in K-chunks, several batch blocks, the barrier code, no carry.
SPLITS = {
    "hidden_split": {"BH": 8},
    "hidden_and_batch_split": {"BH": 8, "BB": 2},
    "streamed_weights": {"W_RES": False, "BK": 4, "BH": 8},
    "barrier_code": {"sync": True, "BB": 2},
    "one_program_without_carry": {"carry": False},
}
NOT_LN = COMBOS["all"] - {"layer_norm"}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("feats", ["all", "not_ln"])
def test_work_splits(split, feats, monkeypatch):
    monkeypatch.setattr(tb, "_OVERRIDE", SPLITS[split])
    f = COMBOS["all"] if feats == "all" else NOT_LN
    p = tb._plan(3, 16, torch.float32, torch.device("cpu"), own_all="layer_norm" in f)
    assert p["grid"][0] == (1 if "layer_norm" in f or "BH" not in SPLITS[split] else 2)
    _compare(f, T=3, B=3, I=3, H=16, reverse=True, lengths=True)


def test_layer_norm_plans_one_program_over_all_units():
    cpu = torch.device("cpu")
    for H in (16, 64, 256):
        p = tb._plan(16, H, torch.float32, cpu, own_all=True)
        assert p["grid"][0] == 1 and p["BH"] >= H and not p["SYNC"] and not p["stepwise"]
    p = tb.plan_split(16, 256, torch.float32, "tf32", sms=132, own_all=True)
    assert p["grid"] == (1, 1) and not p["W_RES"]  # 4 x 256 x 256 floats: streamed ...
    assert p["BK"] == 16  # ... in the smallest chunks (fewest registers)
    assert tb.plan_split(16, 256, torch.float32, "tf32", sms=132)["grid"][0] > 1


def test_layer_norm_with_streamed_weights_and_padding():
    # one program, weight_hh streamed in chunks, HP = 32 > H = 20
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tb, "_OVERRIDE", {"W_RES": False, "BK": 8})
        _compare({"layer_norm", "peephole"}, T=3, B=2, I=3, H=20, reverse=False)


def test_no_grad_forward_and_eval_zoneout_match():
    x, h0, c0, w, lens, ex, _ = _case(5, 3, 3, 8, COMBOS["all"], lengths=True)
    with torch.no_grad():
        got = tb.run(x, h0, c0, *w, None, lens, True, extras=ex)
        want = reference.run(x, h0, c0, *w, None, lens, True, extras=ex)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_extras_with_nothing_on_is_the_plain_lstm():
    x, h0, c0, w, lens, _, _ = _case(4, 2, 2, 8, set(), lengths=True)
    a = tb.run(x, h0, c0, *w, None, lens, False, extras=CellExtras())
    b = tb.run(x, h0, c0, *w, None, lens, False)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)


def _cast(ex, params, dtype, like=None):
    """ex and params as new leaves of ``dtype`` (from ``like``'s values when given)."""
    src = like or params
    new = {k: src[k].detach().to(dtype).requires_grad_() for k in params}
    ln = None
    if ex.layer_norm is not None:
        ln = tuple(new[k] for k in ("g_ih", "g_hh", "g_c", "b_c"))

    def m(v):
        return v.to(dtype) if isinstance(v, torch.Tensor) else v

    ex2 = dataclasses.replace(ex, peephole=new.get("peephole"), layer_norm=ln,
                              h_mask=m(ex.h_mask), zoneout_c=m(ex.zoneout_c),
                              zoneout_h=m(ex.zoneout_h))  # fmt: skip
    return ex2, new


# bfloat16: as in test_triton (inputs, h, gates and their gradients stored in bf16), the float64
# reference runs on the same bf16 values; errors relative to each tensor's largest value
BF16_REL = 3e-2


@pytest.mark.parametrize("combo", ["all", "ln_peephole_dropout"])
def test_bfloat16_matches_reference(combo):
    x, h0, c0, w, lens, ex, params = _case(5, 3, 3, 16, COMBOS[combo], lengths=True)
    ours = [t.detach().bfloat16().requires_grad_() for t in (x, h0, c0, *w)]
    ref = [t.detach().double().requires_grad_() for t in ours]
    ex_b, p_b = _cast(ex, params, torch.bfloat16)
    ex_d, p_d = _cast(ex_b, params, torch.float64, like=p_b)
    got = tb.run(*ours, None, lens, True, extras=ex_b)
    want = reference.run(*ref, None, lens, True, extras=ex_d)
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in want]
    got_all = [*got, *torch.autograd.grad(got, [*ours, *p_b.values()], [c.bfloat16() for c in cot])]
    want_all = [*want, *torch.autograd.grad(want, [*ref, *p_d.values()], cot)]
    names = ["out", "h_n", "c_n", "x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih",
             "bias_hh", *params]  # fmt: skip
    for name, a, b in zip(names, got_all, want_all, strict=True):
        assert a.dtype == torch.bfloat16, name
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=BF16_REL, atol=BF16_REL * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip


# -- the layer: masks drawn there, the same for every backend for the same seed ---------------

LAYER_VARIANTS = {
    "ln_peephole_dropout_zoneout": dict(
        layer_norm=True, peephole=True, recurrent_dropout=0.3, zoneout=0.2
    ),  # fmt: skip
    "coupled_clip_zoneout_pair": dict(coupled=True, cell_clip=0.5, zoneout=(0.3, 0.1)),
}


@pytest.mark.parametrize("variant", LAYER_VARIANTS)
@pytest.mark.parametrize("training", [True, False])
def test_layer_bidirectional_two_layers(variant, training):
    kw = LAYER_VARIANTS[variant]
    torch.manual_seed(0)
    ref = LSTM(3, 8, num_layers=2, bidirectional=True, backend="reference", **kw)
    tri = LSTM(3, 8, num_layers=2, bidirectional=True, backend="triton", **kw)
    with torch.no_grad():  # move the layer-norm gains and peepholes off their initial values
        for p in ref.parameters():
            p.add_(torch.rand(p.shape) * 0.2 - 0.1)
    tri.load_state_dict(ref.state_dict())
    ref.train(training)
    tri.train(training)
    assert tri.backend_choice(torch.zeros(5, 2, 3))[0] == "triton"
    x = torch.randn(5, 2, 3)
    lens = torch.tensor([5, 3])
    results = []
    for m in (ref, tri):
        torch.manual_seed(7)  # the same masks for both
        xi = x.clone().requires_grad_()
        out, (h, c) = m(xi, lengths=lens)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() + h.sum() + c.sum()
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        results.append([out, h, c, *grads])
    names = ["out", "h_n", "c_n", "grad x", *(f"grad {n}" for n, _ in ref.named_parameters())]
    for name, a, b in zip(names, *results, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"{n}: {m}")


def test_forget_bias_model_runs_on_triton():
    torch.manual_seed(0)
    tri = LSTM(3, 8, forget_bias=1.0, backend="triton")
    ref = LSTM(3, 8, forget_bias=1.0, backend="reference")
    ref.load_state_dict(tri.state_dict())
    assert (tri.bias_ih_l0[8:16] - ref.bias_ih_l0[8:16] == 0).all()
    x = torch.randn(4, 2, 3)
    for a, b in zip(tri(x)[0], ref(x)[0], strict=True):
        torch.testing.assert_close(a, b, **TOL)


# -- what the backend says it lacks, and what auto picks on CUDA -----------------------------


def _req(**kw):
    base = dict(device_type="cpu", dtype=torch.float32, T=5, B=3, I=3, H=8, P=0, num_layers=1,
                directions=1, has_lengths=False, needs_grad=True)  # fmt: skip
    return Request(**{**base, **kw})


def test_features_are_every_variant_and_unsupported_names_the_rest():
    assert frozenset(FEATURES) == tb._FEATURES
    for f in FEATURES:
        assert tb.unsupported(_req(features=frozenset({f}))) is None
    assert tb.unsupported(_req(features=frozenset({"a_future_variant"}))) == (
        "variant a_future_variant"
    )
    why = tb.unsupported(_req(features=frozenset({"layer_norm", "peephole"}), H=512))
    assert why.startswith("variant layer_norm at hidden 512") and "256" in why
    assert tb.unsupported(_req(features=frozenset({"peephole"}), H=512)) is None
    x, h0, c0, w, _, ex, _ = _case(2, 1, 2, 300, {"layer_norm"}, lengths=False)
    with pytest.raises(BackendError, match="triton.*layer_norm at hidden 300"):
        tb.run(x, h0, c0, *w, None, None, False, extras=ex)
    with pytest.raises(BackendError, match="triton.*layer_norm"):
        LSTM(3, 300, layer_norm=True, backend="triton")(torch.zeros(2, 1, 3))


def _cuda(**kw):
    return _req(**{"device_type": "cuda", "T": 1000, "B": 16, "H": 256, **kw})


def test_auto_on_cuda_never_picks_cudnn_for_variants(monkeypatch):
    monkeypatch.setattr(tb, "_triton_installed", lambda: True)
    monkeypatch.setattr(tb, "tf32_enabled", lambda: True)
    assert policy_cuda.auto_cuda(_cuda())[0] == "triton"  # the plain LSTM: as measured
    assert policy_cuda.auto_cuda(_cuda(H=64))[0] == "cudnn"
    for f in FEATURES:  # any size: cuDNN cannot run a variant
        for H in (64, 256, 2048):
            name, why = policy_cuda.auto_cuda(_cuda(H=H, features=frozenset({f})))
            want = "fused" if f == "layer_norm" and H > tb.LN_MAX_HIDDEN else "triton"
            assert name == want, (f, H, why)
            assert "variant" in why
    name, why = policy_cuda.auto_cuda(_cuda(H=512, features=frozenset({"layer_norm"})))
    assert name == "fused" and "layer_norm at hidden 512" in why
    name, why = policy_cuda.auto_cuda(_cuda(P=4, features=frozenset({"peephole"})))
    assert name == "fused" and "proj_size" in why
    name, _ = policy_cuda.auto_cuda(_cuda(dtype=torch.float16, features=frozenset({"zoneout"})))
    assert name == "fused"
    monkeypatch.setattr(tb, "_triton_installed", lambda: False)
    name, why = policy_cuda.auto_cuda(_cuda(features=frozenset({"coupled"})))
    assert name == "fused" and "triton is not installed" in why
    choice = resolve(_cuda(features=frozenset({"peephole"})), "auto")
    assert choice.name == "fused" and choice.reason.startswith("auto: cuda:")


# -- the GPU timing script, its logic run on the CPU (kernels interpreted, tiny sizes) --------


@pytest.mark.slow
def test_gpu_variants_script_smoke_run(tmp_path):
    import json
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHONPATH": str(root / "src")}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, str(root / "bench/gpu_variants.py"), "--cpu-smoke"],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    md = (tmp_path / "gpu_variants.md").read_text()
    assert "correctness: ALL PASS" in md
    res = json.loads((tmp_path / "gpu_variants.json").read_text())
    variants = {"plain", *FEATURES, "all"}
    assert {r["variant"] for r in res["correctness"]} == variants
    assert all(r["passed"] and r["worst"] < 1e-4 for r in res["correctness"])
    assert {r["variant"] for r in res["timings"]} == variants
    keys = ("triton_fwd_ms", "triton_fb_ms", "cudnn_plain_fb_ms", "reference_fb_ms", "fused_fb_ms")
    assert all(r[k] > 0 for r in res["timings"] for k in keys)
