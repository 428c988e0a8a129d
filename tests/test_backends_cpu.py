"""The CPU backends (reference, fused, native) against the reference backend and torch.nn.LSTM.

Two levels: the backend contract itself (``run`` against ``reference.run``, every option of
one layer and direction, every gradient), and through ``lstmkit.LSTM`` against
``torch.nn.LSTM`` with copied weights over the shared grid of layer options.
"""

import itertools
import warnings
from pathlib import Path

import pytest
import torch
from compare import GRID, TOL, Case, assert_same, case_id, run_both

import lstmkit
from lstmkit import backends
from lstmkit.backends import Request, fused, native, reference
from lstmkit.errors import LstmkitError

FAST = ["fused", "native"]


@pytest.fixture(scope="module", autouse=True)
def _native(native_built):
    """Every test here runs the native backend."""


def _module(name):
    return {"reference": reference, "fused": fused, "native": native}[name]


def _args(T, B, I, H, P, bias, dtype, seed=0, grad=("x", "h0", "c0", "w")):
    """Random inputs of one layer and direction, as leaves; those named in ``grad`` need grad."""
    g = torch.Generator().manual_seed(seed)
    R = P or H

    def r(*shape, scale=1.0, name="w"):
        t = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)
        return t.requires_grad_(name in grad)

    def s(fan_in):  # keep pre-activations O(1) at every size, as a trained net would
        return min(0.5, 2 / fan_in**0.5)

    w_ih, w_hh = r(4 * H, I, scale=s(I)), r(4 * H, R, scale=s(R))
    b_ih, b_hh = (r(4 * H), r(4 * H)) if bias else (None, None)
    w_hr = r(P, H, scale=s(H)) if P else None
    x, h0, c0 = r(T, B, I, name="x"), r(B, R, name="h0"), r(B, H, name="c0")
    return [x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr]


def _lengths(kind, T, B, seed=0):
    if kind == "none":
        return None
    if kind == "full":
        return torch.full((B,), T, dtype=torch.long)
    lens = torch.randint(1, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    lens[-1] = 1  # unsorted, with a shortest sequence last
    return lens


def _run_and_grad(backend, args, lengths, reverse, seed=1):
    outs = backend.run(*args, lengths, reverse)
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    leaves = [a for a in args if a is not None and a.requires_grad]
    grads = torch.autograd.grad(outs, leaves, ups)
    return [o.detach() for o in outs], list(grads)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    "T,B,P,bias,lengths,reverse",
    list(
        itertools.product(
            [1, 6], [1, 4], [0, 3], [True, False], ["none", "unsorted", "full"], [False, True]
        )
    ),
)
def test_run_matches_reference_float64(name, T, B, P, bias, lengths, reverse):
    args = _args(T, B, 5, 4, P, bias, torch.float64)
    lens = None if lengths == "none" else _lengths(lengths, T, B)
    want = _run_and_grad(reference, args, lens, reverse)
    got = _run_and_grad(_module(name), args, lens, reverse)
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    if lens is not None:
        for b, n in enumerate(lens.tolist()):  # exactly zero past each length
            assert torch.count_nonzero(got[0][0][n:, b]) == 0


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("reverse", [False, True])
def test_run_matches_reference_float32_larger(name, reverse):
    args = _args(9, 7, 16, 32, 0, True, torch.float32, seed=3)
    lens = _lengths("unsorted", 9, 7, seed=3)
    want = _run_and_grad(reference, args, lens, reverse)
    got = _run_and_grad(_module(name), args, lens, reverse)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("grad", [("x",), ("w",), ("h0", "c0"), ("c0",)])
def test_only_requested_gradients(name, grad):
    args = _args(4, 3, 2, 3, 2, True, torch.float64, grad=grad)
    want = _run_and_grad(reference, args, None, False)
    got = _run_and_grad(_module(name), args, None, False)
    torch.testing.assert_close(got, want, **TOL[torch.float64])


@pytest.mark.parametrize("B", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("H,P", [(40, 0), (21, 7)])
def test_native_small_batch_loops_float64(B, H, P):
    """With the size rule off, B <= 8 takes native's own matrix-vector loops (5: a block of 4
    and one; 9: BLAS). H=40 covers the two-vector, one-vector and float64 lane paths; H=21
    with P=7 the scalar tails and a row count (P) that is not a multiple of 4. Two threads
    with no work threshold split every product."""
    args = _args(5, B, 6, H, P, True, torch.float64, seed=B)
    lens = _lengths("unsorted", 5, B, seed=B) if B > 1 else None
    want = _run_and_grad(reference, args, lens, True)
    ext, threads = native.load(), torch.get_num_threads()
    try:
        for par_min in (1 << 62, 0):  # one thread, then split over two
            ext.set_tuning(8, par_min, False, 0)
            torch.set_num_threads(1 if par_min else 2)
            got = _run_and_grad(native, args, lens, True)
            torch.testing.assert_close(got, want, **TOL[torch.float64])
    finally:
        ext.set_tuning(16, 1 << 16, True, 1)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize(
    "P,lengths,reverse",
    [(0, None, False), (3, "unsorted", True), (0, "unsorted", False), (3, None, True)],
)
def test_chunked_inference_float64(name, P, lengths, reverse, monkeypatch):
    """Inference runs the input projection and loop in chunks of steps (here 4, the least):
    state carries across chunk borders, reverse walks the chunks from the end."""
    from lstmkit.backends import _bptt

    T, B = 11, 3
    args = _args(T, B, 5, 4, P, True, torch.float64, grad=())
    lens = None if lengths is None else _lengths(lengths, T, B)
    want = reference.run(*args, lens, reverse)
    monkeypatch.setattr(_bptt, "CHUNK_BYTES", 1)
    assert _bptt.chunk_steps(T, B, 16, 8) == _bptt.CHUNK_MIN_STEPS < T
    with torch.no_grad():
        got = _module(name).run(*args, lens, reverse)
    torch.testing.assert_close(got, want, **TOL[torch.float64])
    if lens is not None:
        for b, n in enumerate(lens.tolist()):
            assert torch.count_nonzero(got[0][n:, b]) == 0


@pytest.mark.parametrize("name", FAST)
def test_non_contiguous_input_and_state(name):
    args = _args(5, 3, 4, 3, 0, True, torch.float64)
    x = args[0].detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    h0 = args[1].detach().t().contiguous().t().requires_grad_()
    assert not x.transpose(0, 1).is_contiguous() or not h0.is_contiguous()
    args = [x, h0, *args[2:]]
    torch.testing.assert_close(
        _run_and_grad(_module(name), args, None, True),
        _run_and_grad(reference, args, None, True),
        **TOL[torch.float64],
    )


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("P,lengths", [(0, None), (2, torch.tensor([4, 2, 3]))])
def test_gradcheck_float64(name, P, lengths):
    args = tuple(_args(4, 3, 3, 3, P, True, torch.float64))
    args = tuple(a for a in args if a is not None)

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh, *rest):
        w_hr = rest[0] if rest else None
        return _module(name).run(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, True)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_inference_saves_nothing_and_matches(name, mode):
    args = _args(6, 3, 4, 5, 2, True, torch.float32)
    lens = torch.tensor([6, 1, 4])
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        got = _module(name).run(*args, lens, True)
        want = reference.run(*args, lens, True)
    assert all(o.grad_fn is None for o in got)
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["auto", *FAST])
def test_a_model_built_under_inference_mode_runs(backend, dtype):
    """Weights made under torch.inference_mode are inference tensors (no version counter):
    the native backend's per-call packing must not need one. Sizes where the tiles pack both
    products (B >= 16, 4H >= 48)."""
    torch.manual_seed(0)
    ref = lstmkit.LSTM(24, 32, num_layers=2, backend="reference")
    x = torch.randn(7, 16, 24)
    with torch.inference_mode():
        m = lstmkit.LSTM(24, 32, num_layers=2, backend=backend).to(dtype)
        m.load_state_dict(ref.state_dict())
        got = m(x.to(dtype))[0]
        want = ref(x)[0]
    tol = TOL[torch.float32] if dtype == torch.float32 else dict(rtol=1.6e-2, atol=1e-2)
    torch.testing.assert_close(got.float(), want, **tol)


@pytest.mark.parametrize("name", FAST)
def test_outputs_may_be_modified_in_place(name):
    args = _args(3, 2, 2, 3, 0, True, torch.float64)
    out, h_n, c_n = _module(name).run(*args, None, False)
    out.mul_(2)
    h_n.add_(1)
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    assert args[0].grad is not None and torch.isfinite(args[0].grad).all()


def test_fused_runs_bfloat16_close_to_float32():
    args32 = _args(5, 3, 4, 8, 0, True, torch.float32)
    args16 = [None if a is None else a.detach().bfloat16() for a in args32]
    with torch.no_grad():
        want = reference.run(*args32, None, False)
        got = fused.run(*args16, None, False)
    torch.testing.assert_close([g.float() for g in got], list(want), atol=5e-2, rtol=5e-2)


def _bf16_errors(model, ref, x, lengths) -> dict[str, float]:
    """‖a − b‖ / ‖b‖ of ``model``'s output and every gradient against float64 ``ref`` on the
    same values (a fixed random cotangent on the output)."""
    x16, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
    got, want = model(x16, lengths=lengths), ref(x64, lengths=lengths)
    assert got[0].dtype == got[1][1].dtype == torch.bfloat16
    cot = torch.randn(got[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (got[0].double() * cot).sum().backward()
    (want[0] * cot).sum().backward()

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    errs = {"out": rel(got[0], want[0]), "c_n": rel(got[1][1], want[1][1]),
            "dx": rel(x16.grad, x64.grad)}  # fmt: skip
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert p.grad.dtype == torch.bfloat16, name
        errs[name] = rel(p.grad, q.grad)
    ref.zero_grad()
    return errs


@pytest.mark.parametrize("variants", [{}, {"layer_norm": True, "peephole": True}])
def test_native_bfloat16_matches_the_reference_on_the_same_values(variants):
    """bfloat16 in the native backend: float32 arithmetic on the bfloat16 values, each layer's
    results and gradients rounded to bfloat16 (2^-8 relative). Against the float64 reference
    on those same values (two layers, both directions, lengths): outputs within 1e-2; the
    plain LSTM's gradients too; the layer-normed cell amplifies the rounding between layers
    (norm-wise up to ~5e-2 measured), so there the bar is the reference backend's own
    bfloat16 arithmetic (3-10x less accurate, measured), which ours must beat."""
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, **variants)
    ours = lstmkit.LSTM(12, 16, backend="native", **kw).to(torch.bfloat16)
    in_bf16 = lstmkit.LSTM(12, 16, backend="reference", **kw).to(torch.bfloat16)
    ref = lstmkit.LSTM(12, 16, backend="reference", **kw).double()
    in_bf16.load_state_dict(ours.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(9, 5, 12).bfloat16()
    lengths = torch.tensor([9, 4, 7, 1, 9])
    errs = _bf16_errors(ours, ref, x, lengths)
    assert max(errs["out"], errs["c_n"]) < 1e-2, errs
    if not variants:
        assert max(errs.values()) < 1e-2, errs
    assert max(errs.values()) < max(_bf16_errors(in_bf16, ref, x, lengths).values())


def _bf16_tiles():
    if not native.load().has_bf16_tiles():
        pytest.skip("the bfloat16 tiles need AVX-512 BF16 (elsewhere bfloat16 runs in float32)")


@pytest.mark.parametrize("M,K,N", [(1, 2, 64), (7, 34, 130), (100, 256, 1024), (450, 1024, 200)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_bfloat16_products_on_the_tiles(M, K, N, threads):
    """The input projection of bfloat16 inference: pairs of bfloat16 along K, products
    accumulated in float32 (a product of two bfloat16 values is exact in float32, so the error
    is float32 summation's), with and without a float32 bias."""
    _bf16_tiles()
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(M, K, generator=g).bfloat16()
    w, bias = torch.randn(N, K, generator=g).bfloat16(), torch.randn(N, generator=g)
    ext, old = native.load(), torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ext.set_tuning(16, 1 << 62 if threads == 1 else 0, True, 1)
        packed = ext.pack_rhs(w.t(), None)
        got, got_b = ext.mm_packed(a, packed, N, None), ext.mm_packed(a, packed, N, bias)
    finally:
        ext.set_tuning(16, 1 << 16, True, 1)
        torch.set_num_threads(old)
    assert got.dtype == torch.float32
    want = a.double() @ w.double().t()
    tol = {"atol": 1e-5 * K**0.5, "rtol": 1e-5}
    torch.testing.assert_close(got.double(), want, **tol)
    torch.testing.assert_close(got_b.double(), want + bias.double(), **tol)


@pytest.mark.parametrize("B,H", [(1, 34), (2, 16), (5, 64), (13, 130), (16, 1024)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_bfloat16_inference_on_its_tiles(B, H, threads, monkeypatch):
    """bfloat16 inference takes the bfloat16 tiles (every batch from one row, short inputs
    too): two layers, both directions, lengths, against the float64 reference on the same
    bfloat16 values within 1e-2 norm-wise, and at least as accurate as the reference
    backend's own bfloat16 arithmetic."""
    _bf16_tiles()
    used = []
    forward = native._Bf16Loops.forward

    def spy(self, xg, *args, **kw):
        used.append(self._pack(args[2], xg, False) is not None)
        return forward(self, xg, *args, **kw)

    monkeypatch.setattr(native._Bf16Loops, "forward", spy)
    torch.manual_seed(B + H)
    kw = dict(num_layers=2, bidirectional=True)
    ours = lstmkit.LSTM(H, H, backend="native", **kw).to(torch.bfloat16)
    in_bf16 = lstmkit.LSTM(H, H, backend="reference", **kw).to(torch.bfloat16)
    ref = lstmkit.LSTM(H, H, backend="reference", **kw).double()
    in_bf16.load_state_dict(ours.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, B, H).bfloat16()
    lengths = torch.randint(1, 7, (B,), generator=torch.Generator().manual_seed(B))
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            got = ours(x, lengths=lengths)
            theirs = in_bf16(x, lengths=lengths)
    finally:
        torch.set_num_threads(old)
    with torch.no_grad():
        want = ref(x.double(), lengths=lengths)
    assert used and all(used)  # every layer and direction on the bfloat16 tiles

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    for k, (g, t, w) in enumerate(
        zip([got[0], *got[1]], [theirs[0], *theirs[1]], [want[0], *want[1]], strict=True)
    ):
        assert g.dtype == torch.bfloat16
        assert rel(g, w) < 1e-2, (k, rel(g, w))
        assert rel(g, w) <= rel(t, w), (k, rel(g, w), rel(t, w))  # measured: at most 0.43x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", FAST)  # reference: tests/test_layer.py
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_layer_matches_torch(case: Case, backend, dtype):
    ours, theirs = run_both(case, dtype, backend=backend)
    assert_same(ours, theirs, dtype)


@pytest.fixture
def no_compiler(monkeypatch):
    """The native extension as on a machine without a C++ compiler (its build raises, as
    cpp_extension does there), not built before, nothing cached on disk."""

    def build():
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(native, "_build", build)
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(native, "is_built", lambda: False)


def test_native_by_name_without_compiler_raises(no_compiler):
    m = lstmkit.LSTM(3, 4, backend="native")
    x = torch.randn(5, 2, 3)
    # the query does not build, so it cannot know yet; it says a build is coming
    assert m.backend_choice(x) == (
        "native",
        "asked for by name (not built yet; builds on first use)",
    )
    with pytest.raises(lstmkit.BackendError, match="'native'.*C\\+\\+ compiler.*command not found"):
        m(x)
    with pytest.raises(LstmkitError, match="'native'.*C\\+\\+ compiler"):
        m.backend_choice(x)  # now the failure is known: the query says it too, still no build
    with pytest.raises(lstmkit.BackendError, match="'native'"):
        m(x)  # and it stays refused, without a second build attempt


def test_auto_without_compiler_falls_back_to_fused_with_one_warning(no_compiler):
    m = lstmkit.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    name, reason = m.backend_choice(x)
    assert name == "native" and reason.endswith("(not built yet; builds on first use)")
    with pytest.warns(RuntimeWarning, match="auto skips 'native'.*C\\+\\+ compiler") as rec:
        got = m(x)[0]
    assert len([w for w in rec if "native" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second forward must not warn again
        again = m(x)[0]
    m.backend = "fused"
    torch.testing.assert_close(got, m(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    m.backend = "auto"
    name, reason = m.backend_choice(x)
    assert name == "fused" and "native could not be built" in reason


def test_backend_choice_never_builds(monkeypatch):
    def build():
        raise AssertionError("a query must not build the native extension")

    monkeypatch.setattr(native, "_build", build)
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(native, "is_built", lambda: False)
    for backend in ("auto", "native"):
        name, reason = lstmkit.LSTM(3, 4, backend=backend).backend_choice(torch.randn(5, 2, 3))
        assert name == "native" and "not built yet; builds on first use" in reason


def test_first_build_prints_one_line(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setattr(native, "is_built", lambda: False)
    import torch.utils.cpp_extension as ce

    monkeypatch.setattr(ce, "load", lambda **kw: calls.append(kw) or "ext")
    assert native.prepare() == "ext"
    err = capsys.readouterr().err
    assert err == native.NOTICE + "\n" and "building the native CPU kernel" in err
    assert calls[0]["build_directory"] == str(native.build_dir())
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "is_built", lambda: True)  # a cache hit: silent
    native.prepare()
    assert capsys.readouterr().err == ""


def test_build_dir_follows_torch_extensions_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native.build_dir().parent == tmp_path
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR")
    from torch.utils.cpp_extension import get_default_build_root

    assert native.build_dir().parent == Path(get_default_build_root())


def _request(**kw) -> Request:
    base = {
        "device_type": "cpu", "dtype": torch.float32, "T": 1000, "B": 1, "I": 64, "H": 64,
        "P": 0, "num_layers": 1, "directions": 1, "has_lengths": False, "needs_grad": True,
    }  # fmt: skip
    return Request(**{**base, **kw})


@pytest.mark.parametrize(
    "kw",
    [{}, {"dtype": torch.float64}, {"dtype": torch.bfloat16}, {"dtype": torch.float16},
     {"P": 8, "has_lengths": True}, {"B": 256, "H": 1024, "needs_grad": False},
     {"dtype": torch.bfloat16, "B": 256, "H": 256}, {"dtype": torch.bfloat16, "B": 16, "H": 1024},
     {"dtype": torch.bfloat16, "B": 16, "H": 1024, "needs_grad": False}],
)  # fmt: skip
def test_auto_picks_a_supporting_backend_and_says_why(kw):
    req = _request(**kw)
    name, reason = backends._auto(req)
    assert backends.unsupported(name, req) is None
    assert reason.startswith(name) and f"T={req.T} B={req.B} H={req.H}" in reason
    expect = "fused" if req.dtype == torch.float16 else "native"  # bfloat16: in float32
    tiles = not req.needs_grad and native.has_bf16_tiles()  # bfloat16 inference: bf16 tiles
    if req.dtype == torch.bfloat16 and req.B * req.H**2 >= 1 << 22 and req.H >= 512 and not tiles:
        expect = "fused"  # bfloat16 GEMMs beat native's float32 there
    assert name == expect


def test_layer_reports_its_choice():
    m = lstmkit.LSTM(4, 8)
    name, reason = m.backend_choice(torch.randn(5, 2, 4))
    assert name == "native" and "native" in reason
    with pytest.raises(lstmkit.BackendError, match="native.*device"):
        backends.resolve(_request(device_type="cuda"), "native")


@pytest.mark.parametrize("name", FAST)
def test_inference_h_n_does_not_alias_output(name):
    args = _args(3, 2, 2, 3, 0, True, torch.float32)
    with torch.inference_mode():
        out, h_n, _ = _module(name).run(*args, None, False)
        before = h_n.clone()
        out.zero_()
    torch.testing.assert_close(h_n, before, rtol=0, atol=0)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("H,P,lengths", [(64, 0, "none"), (64, 0, "unsorted"), (128, 128, "none")])
def test_float32_hidden_64_and_128(name, H, P, lengths):
    args = _args(5, 3, 8, H, P, True, torch.float32, seed=5)
    lens = None if lengths == "none" else _lengths(lengths, 5, 3, seed=5)
    for reverse in (False, True):
        # Gradients here reach |15| and are sums of O(100) products: float32 rounding alone is
        # ~1e-6 relative to that, so the absolute tolerance scales with it.
        torch.testing.assert_close(
            _run_and_grad(_module(name), args, lens, reverse),
            _run_and_grad(reference, args, lens, reverse),
            atol=5e-5,
            rtol=1e-5,
        )


def test_missing_compiler_is_named_before_any_build(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: a build is due
    monkeypatch.setattr(native, "_ext", None)
    monkeypatch.setattr(native, "_error", None)
    with pytest.raises(lstmkit.BackendError, match="'native'.*no-such-c\\+\\+.*not on PATH"):
        native.prepare()
    assert capsys.readouterr().err == ""  # no "building" line: nothing was built


@pytest.mark.parametrize("B,H", [(1, 33), (2, 16), (5, 20), (7, 64), (13, 70), (16, 130)])
@pytest.mark.parametrize("lengths,reverse", [("none", False), ("unsorted", True)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_tiles_float32(B, H, lengths, reverse, threads):
    """float32 takes the register tiles (tiles.h) on AVX-512 CPUs and BLAS elsewhere:
    against the float64 reference, forward and every gradient. The sizes cover one and
    several row blocks (at most 6 rows each), unit counts that are not a multiple of the
    panels' 16 (forward) or 64 (backward), and several panels; one thread, then two
    splitting every step."""
    args = _args(6, B, 5, H, 0, True, torch.float64, seed=B + H)
    lens = _lengths(lengths, 6, B, seed=B)
    want = _run_and_grad(reference, args, lens, reverse)
    args32 = [
        None if a is None else a.detach().float().requires_grad_(a.requires_grad) for a in args
    ]
    ext, old = native.load(), torch.get_num_threads()
    try:
        ext.set_tuning(16, 1 << 62 if threads == 1 else 0, False, 1)  # tiles for every size
        torch.set_num_threads(threads)
        loops, gates = native.NativeLoops(ext), torch.empty(6, B, 4 * H)
        for backward in (False, True):
            assert loops._pack(args32[4], gates, backward) is not None or not _avx512()
        got = _run_and_grad(native, args32, lens, reverse)
    finally:
        ext.set_tuning(16, 1 << 16, True, 1)
        torch.set_num_threads(old)
    want32 = [[t.float() for t in part] for part in want]
    torch.testing.assert_close(got, want32, **TOL[torch.float32])


def _avx512() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx512f " in flags


@pytest.mark.parametrize(
    "M,K,N,a_t,b_t",
    [
        (16, 20, 16, False, True),
        (97, 130, 70, False, True),
        (200, 257, 129, True, False),
        (7, 300, 64, False, False),
        (1, 5, 3, True, True),
        (450, 140, 200, False, True),
        (400, 33, 130, True, False),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_native_tiled_mm(M, K, N, a_t, b_t, threads):
    """The products outside the time loop on the tiles: either operand stored transposed (a
    view, as the LSTM passes W_ih^T and dG^T), sizes that are not multiples of the tile (6
    rows, 64 columns), the row chunk (192) or the depth block (128), with and without bias;
    rows shared out by chunks (above 384 at two threads) or by panels, whole and partial."""
    if not _avx512():
        pytest.skip("the tiles need AVX-512 (elsewhere NativeLoops.mm is torch.mm)")
    g = torch.Generator().manual_seed(M + K + N)
    a = torch.randn(K, M, generator=g).t() if a_t else torch.randn(M, K, generator=g)
    b = torch.randn(N, K, generator=g).t() if b_t else torch.randn(K, N, generator=g)
    bias = torch.randn(N, generator=g)
    ext, old = native.load(), torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ext.set_tuning(16, 1 << 62 if threads == 1 else 0, True, 1)
        packed = ext.pack_rhs(b, None)
        got, got_b = ext.mm_packed(a, packed, N, None), ext.mm_packed(a, packed, N, bias)
    finally:
        ext.set_tuning(16, 1 << 16, True, 1)
        torch.set_num_threads(old)
    want = a.double() @ b.double()
    tol = {"atol": 1e-5 * K**0.5, "rtol": 1e-5}
    torch.testing.assert_close(got.double(), want, **tol)
    torch.testing.assert_close(got_b.double(), want + bias.double(), **tol)


@pytest.mark.parametrize("M,K,N", [(1, 5, 3), (4, 64, 130), (7, 33, 64), (100, 256, 1024)])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_mm_rows(M, K, N, threads):
    """A few rows against a weight stored as it is (N, K): dot products along its rows, for
    the projections too short to pay for packing the weight; with and without bias."""
    g = torch.Generator().manual_seed(M + K + N)
    a, w, bias = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N)
    ext, old = native.load(), torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ext.set_tuning(16, 1 << 62 if threads == 1 else 0, True, 1)
        got, got_b = ext.mm_rows(a, w, None), ext.mm_rows(a, w, bias)
    finally:
        ext.set_tuning(16, 1 << 16, True, 1)
        torch.set_num_threads(old)
    want = a.double() @ w.double().t()
    tol = {"atol": 1e-5 * K**0.5, "rtol": 1e-5}
    torch.testing.assert_close(got.double(), want, **tol)
    torch.testing.assert_close(got_b.double(), want + bias.double(), **tol)


def test_native_short_inputs_skip_packing():
    """Packing a weight for the tiles reads and rewrites all of it, which a short input does
    not win back: a 16 MB W_ih's projection of 64 rows and a forward of 4 steps of batch 4
    at hidden 1024 take dot products instead; longer ones, and every backward, pack."""
    ext = native.load()
    if not ext.has_tiles():
        pytest.skip("without the tiles nothing is packed")
    w = 4096 * 1024
    assert not ext.pack_pays(64, 64, w, True) and ext.pack_pays(400, 400, w, True)
    assert not ext.pack_pays(16, 16, 256 * 1024, True) and ext.pack_pays(64, 64, 256 * 1024, True)
    assert not ext.pack_pays(16, 4, w, False) and ext.pack_pays(400, 4, w, False)
    assert ext.pack_pays(64, 16, w, False)  # batch 16 at hidden 1024: the tiles win already
    loops, w_hh = native.NativeLoops(ext), torch.randn(4096, 1024)
    assert loops._pack(w_hh, torch.empty(4, 4, 4096), False) is None
    assert loops._pack(w_hh, torch.empty(100, 4, 4096), False) is not None
    assert loops._pack(w_hh, torch.empty(4, 4, 4096), True) is not None


@pytest.mark.parametrize("reverse", [False, True])
def test_native_tiles_through_lstm(reverse):
    """Big enough that the input projection and the weight and input gradients take the
    tiled products too (NativeLoops.mm): float32 against the float64 reference."""
    args = _args(12, 16, 40, 48, 0, True, torch.float64, seed=7)
    lens = _lengths("unsorted", 12, 16, seed=7)
    want = _run_and_grad(reference, args, lens, reverse)
    args32 = [
        None if a is None else a.detach().float().requires_grad_(a.requires_grad) for a in args
    ]
    got = _run_and_grad(native, args32, lens, reverse)
    torch.testing.assert_close(got, [[t.float() for t in p] for p in want], **TOL[torch.float32])


def test_native_packed_buffers_are_lent_not_shared():
    """Packed weights reuse one buffer per kind between calls (native._Slots): a layer whose
    buffer another layer has packed over since packs again, never reading the other's weight."""
    if not _avx512():
        pytest.skip("the tiles need AVX-512 (elsewhere nothing is packed)")
    ext = native.load()
    w1, w2 = torch.randn(64, 16), torch.randn(64, 16)
    first, second = native.NativeLoops(ext), native.NativeLoops(ext)
    xg = torch.empty(50, 4, 64)  # long enough to pack for
    p1 = first._pack(w1, xg, False).clone()
    p2 = second._pack(w2, xg, False)  # packs into the same buffer
    assert not torch.equal(p1, p2)
    again = first._pack(w1, xg, False)
    torch.testing.assert_close(again, p1, rtol=0, atol=0)
    assert torch.equal(ext.pack(w1, 4, False, None), p1)


def test_native_big_results_come_from_a_pool_that_never_hands_out_live_memory():
    """Results of 4 MB and more (the kernels' gates, states, gradients, products) come from
    blocks earlier calls freed (no fresh pages in a training loop); a block is reused only
    once its tensor is gone, its tensors resize and serialise like any other, and
    release_pool frees what the pool keeps."""
    import io

    ext = native.prepare()
    if not ext.has_tiles():
        pytest.skip("the pooled product runs on the AVX-512 tiles; here it is torch's")
    native.release_pool()
    loops = native.NativeLoops(ext)
    torch.manual_seed(0)
    a, b = torch.randn(1024, 256), torch.randn(256, 1024)  # a 4 MB product
    first = loops.mm(a, b)
    kept = first.clone()
    second = loops.mm(a.flip(0), b)
    # a live result is never handed out again
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    want = (a.double() @ b.double()).float()
    torch.testing.assert_close(first, want, atol=1e-5 * 256**0.5, rtol=1e-5)  # as tiled_mm
    ptr = first.untyped_storage().data_ptr()
    del first
    third = loops.mm(a, b)  # the freed block, reused
    assert third.untyped_storage().data_ptr() == ptr
    torch.testing.assert_close(third, kept, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(third, buf)
    torch.testing.assert_close(torch.load(io.BytesIO(buf.getvalue())), kept, rtol=0, atol=0)
    third.resize_(2 * third.numel())  # a pooled storage grows like any other
    del second, third
    assert native.release_pool() >= 2 * (4 << 20)
    assert native.release_pool() == 0
