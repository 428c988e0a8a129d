"""The variants (layer norm, peepholes, coupled gates, cell clip, recurrent dropout, zoneout,
weight drop, forget bias, chrono init): the oracle's equations, every backend against it, and
the masks' statistics."""

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import lstmkit
from lstmkit import backends
from lstmkit.backends import Request
from lstmkit.cell import lstm_step
from lstmkit.variants import FEATURES, Variant, draw_masks

TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}

VARIANTS = {
    "layer_norm": {"layer_norm": True},
    "peephole": {"peephole": True},
    "coupled": {"coupled": True},
    "cell_clip": {"cell_clip": 0.4},
    "recurrent_dropout": {"recurrent_dropout": 0.3},
    "zoneout": {"zoneout": (0.2, 0.35)},
    "weight_drop": {"weight_drop": 0.4},
    "forget_bias": {"forget_bias": 1.0},
    "chrono": {"init": "chrono", "t_max": 20},
    "ln+rd": {"layer_norm": True, "recurrent_dropout": 0.3},
    "peephole+zoneout+clip": {"peephole": True, "zoneout": 0.25, "cell_clip": 0.5},
    "all": {
        "layer_norm": True,
        "peephole": True,
        "coupled": True,
        "cell_clip": 0.6,
        "recurrent_dropout": 0.2,
        "zoneout": (0.3, 0.1),
        "weight_drop": 0.3,
    },
}
# (layers, bidirectional, proj_size, lengths)
SHAPES = [(1, False, 0, False), (2, True, 0, True), (2, True, 3, True), (1, False, 2, False)]
FAST = ["fused", "native"]


@pytest.fixture(scope="module", autouse=True)
def _native(native_built):
    """Every test here runs the native backend."""


def _model(kw, shape, backend, dtype, seed=0):
    layers, bi, proj, _ = shape
    torch.manual_seed(seed)
    m = lstmkit.LSTM(
        4,
        5,
        num_layers=layers,
        bidirectional=bi,
        proj_size=proj,
        backend=backend,
        dtype=dtype,
        **kw,
    )
    with torch.no_grad():  # move the layer-norm gains and shifts off their initial 1 and 0
        for n, p in m.named_parameters():
            if "_ln_" in n or "peephole" in n:
                p.add_(torch.randn_like(p) * 0.2)
    return m.to(dtype)


def _run(kw, shape, backend, dtype, training, mask_seed=1):
    """Output, states and every gradient of one forward and backward."""
    m = _model(kw, shape, backend, dtype).train(training)
    g = torch.Generator().manual_seed(7)
    D = 2 if shape[1] else 1
    R = shape[2] or 5

    def leaf(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()

    x, h0, c0 = leaf(6, 3, 4), leaf(shape[0] * D, 3, R), leaf(shape[0] * D, 3, 5)
    lengths = torch.tensor([6, 2, 4]) if shape[3] else None
    torch.manual_seed(mask_seed)  # the masks: drawn by the layer, the same for every backend
    out, (h, c) = m(x, (h0, c0), lengths=lengths)
    loss = sum((t * torch.randn(t.shape, generator=g).to(dtype)).sum() for t in (out, h, c))
    loss.backward()
    res = {"out": out, "h_n": h, "c_n": c, "dx": x.grad, "dh0": h0.grad, "dc0": c0.grad}
    res.update({f"d{n}": p.grad for n, p in m.named_parameters()})
    return res


def _assert_same(ours, ref, dtype):
    assert ours.keys() == ref.keys()
    for k, v in ref.items():
        assert ours[k] is not None and v is not None, f"{k} has no gradient"
        torch.testing.assert_close(ours[k], v, **TOL[dtype], msg=lambda m, k=k: f"{k}: {m}")


def _assert_as_accurate(ours, ref32, truth):
    """float32: every tensor within 1e-5 of the float64 truth relative to its largest value,
    or no further from it than twice the float32 reference is (layer norm divides by small
    standard deviations, and the oracle's own float32 error is then above 1e-5)."""
    assert ours.keys() == truth.keys()
    for k, t in truth.items():
        assert ours[k] is not None, f"{k} has no gradient"
        err = (ours[k].double() - t).abs().max().item()
        ref_err = (ref32[k].double() - t).abs().max().item()
        scale = max(1.0, t.abs().max().item())
        assert err <= max(1e-5 * scale, 2 * ref_err), f"{k}: {err:.3g} (reference {ref_err:.3g})"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-bi{}-P{}-len{}".format(*s))
@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("backend", FAST)
def test_backend_matches_reference(backend, name, shape, training, dtype):
    kw = VARIANTS[name]
    ref = _run(kw, shape, "reference", dtype, training)
    ours = _run(kw, shape, backend, dtype, training)
    if dtype == torch.float64:
        _assert_same(ours, ref, dtype)
    else:
        _assert_as_accurate(ours, ref, _run(kw, shape, "reference", torch.float64, training))


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_inference_matches_training_forward(backend):
    """The no-grad path (chunked, nothing saved) computes what the training path does."""
    kw = VARIANTS["all"] | {"recurrent_dropout": 0.0, "weight_drop": 0.0}
    m = _model(kw, SHAPES[1], backend, torch.float64).eval()
    x = torch.randn(300, 2, 4, dtype=torch.float64)
    lengths = torch.tensor([300, 177])
    with torch.no_grad():
        a = m(x, lengths=lengths)
    b = m(x.requires_grad_(), lengths=lengths)
    for u, v in zip(
        torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b), strict=False
    ):
        torch.testing.assert_close(u, v.detach(), **TOL[torch.float64])


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize("name", ["layer_norm", "peephole", "all"])
def test_gradcheck(backend, name):
    """The handwritten backward against finite differences, the new parameters included."""
    kw = VARIANTS[name]
    m = _model(kw, (1, True, 0, True), backend, torch.float64).eval()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 3])

    def f(x, *ps):
        out, (h, c) = torch.func.functional_call(
            m, dict(zip(names, ps, strict=False)), (x,), {"lengths": lengths}
        )
        return out, h, c

    assert torch.autograd.gradcheck(f, (x, *params), atol=1e-6)


@pytest.mark.parametrize("name", ["recurrent_dropout", "zoneout", "weight_drop", "all"])
def test_same_seed_same_numbers_different_seed_different(name):
    kw = VARIANTS[name]
    a = _run(kw, SHAPES[0], "native", torch.float64, True, mask_seed=3)
    b = _run(kw, SHAPES[0], "fused", torch.float64, True, mask_seed=3)
    c = _run(kw, SHAPES[0], "native", torch.float64, True, mask_seed=4)
    torch.testing.assert_close(a["out"], b["out"], **TOL[torch.float64])
    assert not torch.allclose(a["out"], c["out"])


@pytest.mark.parametrize("backend", ["reference", *FAST])
def test_eval_is_deterministic(backend):
    m = _model(VARIANTS["all"], SHAPES[1], backend, torch.float64).eval()
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(0)
    a = m(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(m(x)[0], a, rtol=0, atol=0)


# -- each variant off, or at zero, is the plain LSTM ------------------------------------------


OFF = {
    "recurrent_dropout": {"recurrent_dropout": 0.0},
    "zoneout": {"zoneout": 0.0},
    "weight_drop": {"weight_drop": 0.0},
    "forget_bias": {"forget_bias": 0.0},
    "cell_clip": {"cell_clip": None},
    "layer_norm": {"layer_norm": False},
}


@pytest.mark.parametrize("name", list(OFF))
def test_off_is_plain_and_bit_exact(name):
    torch.manual_seed(0)
    theirs = torch.nn.LSTM(4, 6, num_layers=2, dtype=torch.float64)
    ours = lstmkit.LSTM(4, 6, num_layers=2, dtype=torch.float64, **OFF[name])
    assert ours.variant.is_plain()
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], **TOL[torch.float64])


@pytest.mark.parametrize("backend", ["reference", *FAST])
@pytest.mark.parametrize(
    "kw",
    [
        {"peephole": True},  # with zero peephole weights
        {"cell_clip": 1e6},  # a clip that never bites
        {"recurrent_dropout": 0.5},  # in eval: identity
        {"weight_drop": 0.5},  # in eval: identity
    ],
    ids=["peephole0", "clip-huge", "rd-eval", "wd-eval"],
)
def test_variant_that_does_nothing_equals_plain(backend, kw):
    torch.manual_seed(0)
    plain = lstmkit.LSTM(4, 6, dtype=torch.float64, backend=backend)
    var = lstmkit.LSTM(4, 6, dtype=torch.float64, backend=backend, **kw).eval()
    var.load_state_dict(plain.state_dict(), strict=False)
    if "peephole" in kw:
        torch.nn.init.zeros_(var.weight_peephole_l0)
    x = torch.randn(9, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(var(x)[0], plain(x)[0], **TOL[torch.float64])


# -- the oracle's equations, checked against independent formulations -----------------------


def _weights(H=6, I=4, P=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = P or H
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.5  # noqa: E731
    return r(3, I), r(3, R), r(3, H), r(4 * H, I), r(4 * H, R), r(4 * H), r(4 * H)


def test_layer_norm_equations():
    x, h, c, w_ih, w_hh, b_ih, b_hh = _weights()
    gains = [torch.rand(24, dtype=torch.float64) + 0.5 for _ in range(2)]
    g_c, b_c = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
    h1, c1, (i, f, g, o) = lstm_step(
        x, h, c, w_ih, w_hh, b_ih, b_hh, layer_norm_params=(*gains, g_c, b_c)
    )
    pre = (
        F.layer_norm(x @ w_ih.T, (24,), gains[0], None, 1e-5)
        + F.layer_norm(h @ w_hh.T, (24,), gains[1], None, 1e-5)
        + b_ih
        + b_hh
    )
    pi, pf, pg, po = pre.chunk(4, 1)
    cc = torch.sigmoid(pf) * c + torch.sigmoid(pi) * torch.tanh(pg)
    hh = torch.sigmoid(po) * torch.tanh(F.layer_norm(cc, (6,), g_c, b_c, 1e-5))
    torch.testing.assert_close(c1, cc, **TOL[torch.float64])
    torch.testing.assert_close(h1, hh, **TOL[torch.float64])


def test_peephole_coupled_clip_equations():
    x, h, c, w_ih, w_hh, b_ih, b_hh = _weights()
    peep = torch.randn(18, dtype=torch.float64)
    h1, c1, (i, f, g, o) = lstm_step(
        x, h, c, w_ih, w_hh, b_ih, b_hh, peephole=peep, coupled=True, cell_clip=0.3
    )
    pi, _, pg, po = (x @ w_ih.T + h @ w_hh.T + b_ih + b_hh).chunk(4, 1)
    i_ = torch.sigmoid(pi + peep[:6] * c)
    torch.testing.assert_close(f, 1 - i_)  # coupled: the forget gate is 1 - i
    cc = ((1 - i_) * c + i_ * torch.tanh(pg)).clamp(-0.3, 0.3)
    assert c1.abs().max() <= 0.3
    torch.testing.assert_close(c1, cc)
    torch.testing.assert_close(h1, torch.sigmoid(po + peep[12:] * cc) * torch.tanh(cc))


def test_zoneout_equations():
    x, h, c, w_ih, w_hh, b_ih, b_hh = _weights()
    h_plain, c_plain, _ = lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh)
    dc = torch.bernoulli(torch.full_like(c, 0.5))
    dh = torch.bernoulli(torch.full_like(h, 0.5))
    h1, c1, _ = lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh, zoneout=(dc, dh))
    torch.testing.assert_close(c1, torch.where(dc.bool(), c, c_plain))  # kept or updated
    torch.testing.assert_close(h1, torch.where(dh.bool(), h, h_plain))
    h2, c2, _ = lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh, zoneout=(0.25, 0.75))  # evaluation
    torch.testing.assert_close(c2, 0.25 * c + 0.75 * c_plain)
    torch.testing.assert_close(h2, 0.75 * h + 0.25 * h_plain)


def test_recurrent_dropout_mask_is_per_sequence_and_layer():
    """One mask per sequence, layer and direction, the same at every step: with h_mask m the
    layer equals the reference loop that multiplies h by m at every step."""
    torch.manual_seed(0)
    m = lstmkit.LSTM(3, 5, dtype=torch.float64, recurrent_dropout=0.5, backend="reference")
    x = torch.randn(8, 4, 3, dtype=torch.float64)
    torch.manual_seed(11)
    out = m(x)[0]
    torch.manual_seed(11)
    mask = draw_masks(m.variant, True, 8, 4, 5, 5, x)["h_mask"]
    assert set(mask.unique().tolist()) <= {0.0, 2.0}
    h = c = x.new_zeros(4, 5)
    for t in range(8):
        h, c, _ = lstm_step(
            x[t], h, c, m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0, h_mask=mask
        )
        torch.testing.assert_close(out[t], h)


def test_mask_statistics():
    v = Variant.make(recurrent_dropout=0.3, zoneout=(0.1, 0.4), weight_drop=0.6)
    like = torch.empty(0)
    torch.manual_seed(0)
    masks = draw_masks(v, True, 50, 40, 30, 30, like)
    keep_rd = (masks["h_mask"] > 0).double().mean().item()
    keep_wd = (masks["weight_drop"] > 0).double().mean().item()
    assert abs(keep_rd - 0.7) < 0.05 and abs(keep_wd - 0.4) < 0.04
    torch.testing.assert_close(masks["h_mask"].max().item(), 1 / 0.7)  # scaled: mean 1
    assert abs(masks["zoneout_c"].mean().item() - 0.1) < 0.01
    assert abs(masks["zoneout_h"].mean().item() - 0.4) < 0.01
    # per unit and step: the masks differ across steps
    assert not torch.equal(masks["zoneout_c"][0], masks["zoneout_c"][1])
    ev = draw_masks(v, False, 50, 40, 30, 30, like)
    assert ev == {"weight_drop": None, "h_mask": None, "zoneout_c": 0.1, "zoneout_h": 0.4}


def test_weight_drop_uses_one_mask_per_forward():
    """Two forwards of one model draw different masks; the gradient of weight_hh is zero
    exactly where the mask dropped a weight."""
    torch.manual_seed(0)
    m = lstmkit.LSTM(3, 4, dtype=torch.float64, weight_drop=0.5)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    m(x)[0].sum().backward()
    torch.manual_seed(5)
    mask = draw_masks(m.variant, True, 5, 2, 4, 4, x)["weight_drop"]
    assert (m.weight_hh_l0.grad[mask == 0] == 0).all()
    assert (m.weight_hh_l0.grad[mask != 0] != 0).all()
    torch.manual_seed(6)
    assert not torch.equal(m(x)[0], m(x)[0])


def test_forget_bias_and_chrono_init():
    torch.manual_seed(0)
    plain = lstmkit.LSTM(3, 8, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    fb = lstmkit.LSTM(3, 8, num_layers=2, bidirectional=True, forget_bias=1.0)
    for sfx in ("_l0", "_l1_reverse"):
        d = getattr(fb, "bias_ih" + sfx) - getattr(plain, "bias_ih" + sfx)
        torch.testing.assert_close(d[8:16], torch.ones(8))
        torch.testing.assert_close(d[:8], torch.zeros(8))
    ch = lstmkit.LSTM(3, 8, init="chrono", t_max=50)
    b = ch.bias_ih_l0 + ch.bias_hh_l0
    assert (b[8:16] >= 0).all() and (b[8:16] <= math.log(49) + 1e-6).all()
    torch.testing.assert_close(b[:8], -b[8:16])
    assert b[8:16].std() > 0.1  # drawn, not constant


def test_layer_norm_parameters_named_and_initialised():
    m = lstmkit.LSTM(3, 4, bidirectional=True, layer_norm=True, peephole=True)
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    for sfx in ("_l0", "_l0_reverse"):
        assert shapes["weight_ln_ih" + sfx] == (16,) and shapes["weight_ln_hh" + sfx] == (16,)
        assert shapes["weight_ln_c" + sfx] == (4,) and shapes["bias_ln_c" + sfx] == (4,)
        assert shapes["weight_peephole" + sfx] == (12,)
        assert (getattr(m, "weight_ln_c" + sfx) == 1).all()
        assert (getattr(m, "bias_ln_c" + sfx) == 0).all()
    assert "layer_norm=True" in repr(m) and "peephole=True" in repr(m)


# -- dispatch: every backend says what it runs, none falls back silently -----------------------


def test_auto_runs_native_for_every_variant():
    for kw in VARIANTS.values():
        m = lstmkit.LSTM(4, 8, **kw)
        name, reason = m.backend_choice(torch.randn(5, 2, 4))
        assert name == "native", (kw, reason)
        for feat in m.variant.features(training=True):
            assert feat in reason.split("variants ")[1], reason  # says what it runs


def _req(features):
    return Request("cpu", torch.float32, 5, 2, 4, 8, 0, 1, 1, False, True, frozenset(features))


def test_backends_name_the_variant_they_lack():
    for feat in FEATURES:
        assert backends.unsupported("reference", _req({feat})) is None
        assert backends.unsupported("fused", _req({feat})) is None
        assert backends.unsupported("native", _req({feat})) is None
    cuda = Request("cuda", torch.float32, 5, 2, 4, 8, 0, 1, 1, False, True, frozenset({"zoneout"}))
    assert backends.unsupported("cudnn", cuda) == "variant zoneout"
    with pytest.raises(backends.BackendError, match="cudnn.*variant zoneout"):
        backends.resolve(cuda, "cudnn")


def test_recurrent_dropout_feature_only_in_training():
    v = Variant.make(recurrent_dropout=0.2, weight_drop=0.3)
    assert v.features(training=True) == {"recurrent_dropout"}
    assert v.features(training=False) == frozenset()
    assert not v.is_plain()


# -- LSTMCell with variants is one step of the layer --------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_cell_equals_one_step_of_the_layer(training):
    kw = VARIANTS["all"]
    torch.manual_seed(0)
    layer = lstmkit.LSTM(3, 5, dtype=torch.float64, **kw).train(training)
    cell = lstmkit.LSTMCell(3, 5, dtype=torch.float64, **kw).train(training)
    cell.load_state_dict({k[:-3]: v for k, v in layer.state_dict().items()})
    x = torch.randn(1, 2, 3, dtype=torch.float64)
    h0, c0 = torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 2, 5, dtype=torch.float64)
    torch.manual_seed(3)
    out, (h, c) = layer(x, (h0, c0))
    torch.manual_seed(3)  # the cell draws in the layer's order: weight drop, dropout, zoneout
    masks = cell.draw_masks(2) if training else None
    h1, c1 = cell(x[0], (h0[0], c0[0]), masks=masks)
    torch.testing.assert_close(h1, h[0], **TOL[torch.float64])
    torch.testing.assert_close(c1, c[0], **TOL[torch.float64])


def test_cell_refuses_sequence_masks_it_was_not_given():
    cell = lstmkit.LSTMCell(3, 5, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="draw_masks"):
        cell(torch.randn(2, 3))
    cell.eval()
    assert cell(torch.randn(2, 3))[0].shape == (2, 5)


# -- bad arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"zoneout": 1.0}, r"zoneout must be a number in \[0, 1\), got 1.0"),
        ({"zoneout": (0.1, 0.2, 0.3)}, "zoneout must be one float or"),
        ({"recurrent_dropout": -0.1}, "recurrent_dropout must be"),
        ({"weight_drop": "0.5"}, "weight_drop must be"),
        ({"cell_clip": 0}, "cell_clip must be a positive number"),
        ({"init": "chrono"}, "init='chrono' needs t_max"),
        ({"init": "xavier"}, "init must be one of uniform, chrono"),
        ({"t_max": 10}, "t_max is used only with init='chrono'"),
        ({"forget_bias": 1.0, "init": "chrono", "t_max": 10}, "use one"),
        ({"layer_norm": 1}, "layer_norm must be True or False"),
        ({"forget_bias": math.nan}, "forget_bias must be finite"),
    ],
)
def test_bad_variant_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        lstmkit.LSTM(3, 4, **kw)


def test_unknown_argument_is_named():
    with pytest.raises(TypeError, match="unexpected argument 'layernorm'"):
        lstmkit.LSTM(3, 4, layernorm=True)


def test_forget_bias_needs_bias():
    with pytest.raises(ValueError, match="need bias=True"):
        lstmkit.LSTM(3, 4, bias=False, forget_bias=1.0)


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers=1"):
        lstmkit.LSTM(3, 4, dropout=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstmkit.LSTM(3, 4, num_layers=2, dropout=0.3)


FEATURE_KW = {
    "layer_norm": {"layer_norm": True},
    "peephole": {"peephole": True},
    "coupled": {"coupled": True},
    "cell_clip": {"cell_clip": 0.5},
    "recurrent_dropout": {"recurrent_dropout": 0.3},
    "zoneout": {"zoneout": 0.3},
}


@pytest.mark.parametrize("pair", list(itertools.combinations(FEATURES, 2)), ids="+".join)
@pytest.mark.parametrize("backend", FAST)
def test_every_pair_of_features(backend, pair):
    kw = FEATURE_KW[pair[0]] | FEATURE_KW[pair[1]]
    shape = (1, True, 0, True)
    _assert_same(
        _run(kw, shape, backend, torch.float64, True),
        _run(kw, shape, "reference", torch.float64, True),
        torch.float64,
    )


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["all", "peephole+zoneout+clip"])
def test_native_variants_on_tiles_threads(name, threads):
    """float32 variants take the register tiles for their per-step products (AVX-512 CPUs):
    on one thread, then with two splitting every product (no work threshold)."""
    from lstmkit.backends import native

    kw, shape = VARIANTS[name], (2, True, 0, True)
    ext, old = native.load(), torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ext.set_tuning(16, 1 << 62 if threads == 1 else 0, True, 1)
        ours = _run(kw, shape, "native", torch.float32, True)
    finally:
        ext.set_tuning(16, 1 << 16, True, 1)
        torch.set_num_threads(old)
    ref32 = _run(kw, shape, "reference", torch.float32, True)
    _assert_as_accurate(ours, ref32, _run(kw, shape, "reference", torch.float64, True))
