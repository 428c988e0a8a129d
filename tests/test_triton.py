"""The Triton backend's kernels, run on the CPU in triton's interpreter, against the reference.

TRITON_INTERPRET=1 is set only while the kernel module is imported (triton reads it when the
kernels are decorated) and then restored, so other test files in this process are unaffected.
Sizes are tiny: the interpreter runs every program of the grid one after another, in Python.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from conftest import interpreted_triton_kernels  # noqa: E402

from lstmkit import LSTM, BackendError  # noqa: E402
from lstmkit.backends import Request, reference  # noqa: E402
from lstmkit.backends import triton as tb  # noqa: E402

kernels = interpreted_triton_kernels()

TOL = {"atol": 1e-5, "rtol": 1e-5}


def test_interpreter_engaged():
    from triton.runtime.interpreter import InterpretedFunction

    assert kernels.INTERPRETED
    assert isinstance(kernels.lstm_fwd_kernel, InterpretedFunction)
    assert isinstance(kernels.lstm_bwd_kernel, InterpretedFunction)


def _case(T, B, I, H, bias=True, lengths=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=g) * 2 - 1) * scale).requires_grad_()

    k = H**-0.5
    x, h0, c0 = rnd(T, B, I), rnd(B, H), rnd(B, H)
    w = [rnd(4 * H, I, scale=k), rnd(4 * H, H, scale=k)]
    w += [rnd(4 * H, scale=k), rnd(4 * H, scale=k)] if bias else [None, None]
    lens = None
    if lengths:
        lens = torch.randint(1, T + 1, (B,), generator=g)
        lens[0] = T  # one full-length sequence, and (B > 1) usually a shorter one
    return x, h0, c0, w, lens


def _compare(T, B, I, H, reverse, lengths, bias=True, override=None, monkeypatch=None):
    if override:
        monkeypatch.setattr(tb, "_OVERRIDE", override)
    x, h0, c0, w, lens = _case(T, B, I, H, bias, lengths)
    args = (x, h0, c0, *w, None, lens, reverse)
    got = tb.run(*args)
    want = reference.run(*args)
    for name, a, b in zip(("out", "h_n", "c_n"), got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    # random weights on every output, so every path of the backward matters
    g = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(o.shape, generator=g) for o in want]
    inputs = [t for t in (x, h0, c0, *w) if t is not None]
    got_g = torch.autograd.grad(got, inputs, grads_out)
    want_g = torch.autograd.grad(want, inputs, grads_out)
    names = ["x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    for name, a, b in zip(names[: len(inputs)], got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("H", [4, 8, 16])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [False, True])
def test_matches_reference(H, reverse, lengths):
    _compare(T=5, B=3, I=3, H=H, reverse=reverse, lengths=lengths)


# Work splits the default plan never picks at these sizes: several programs over the hidden
# units (launched a step at a time: the interpreter cannot run a spinning barrier), weight_hh
# streamed in K-chunks, several batch blocks, and the barrier code itself with one program.
SPLITS = {
    "hidden_split": {"BH": 4},
    "hidden_and_batch_split": {"BH": 8, "BB": 2},
    "streamed_weights": {"W_RES": False, "BK": 4, "BH": 8},
    "barrier_code": {"sync": True, "BB": 2},
    "one_program_without_carry": {"carry": False},
}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("reverse", [False, True])
def test_work_splits(split, reverse, monkeypatch):
    _compare(T=4, B=3, I=2, H=16, reverse=reverse, lengths=True, override=SPLITS[split],
             monkeypatch=monkeypatch)  # fmt: skip


def test_one_program_carries_h_in_registers(monkeypatch):
    # the default plan at the sizes above: all units in one program, state never re-read
    p = tb._plan(B=3, H=16, dtype=torch.float32, device=torch.device("cpu"))
    assert p["grid"] == (1, 1) and p["CARRY"]
    monkeypatch.setattr(tb, "_OVERRIDE", {"carry": False})
    assert not tb._plan(B=3, H=16, dtype=torch.float32, device=torch.device("cpu"))["CARRY"]
    monkeypatch.setattr(tb, "_OVERRIDE", {"BH": 8})  # two programs: h must go through memory
    assert not tb._plan(B=3, H=16, dtype=torch.float32, device=torch.device("cpu"))["CARRY"]


@pytest.mark.parametrize(
    "H, B, dtype, prec, resident",
    [
        (64, 16, torch.float32, "tf32x3", True),
        (128, 16, torch.float32, "tf32x3", False),  # both operands split in two: too big
        (256, 16, torch.float32, "tf32", True),  # measured on an H100: fine
        (256, 16, torch.float32, "tf32x3", False),  # measured: spilled, 14x cuDNN's time
        (512, 16, torch.bfloat16, "ieee", True),
        (512, 256, torch.bfloat16, "ieee", False),  # 64 batch rows per program
        (512, 16, torch.float32, "tf32", False),  # 4 x 512 x 16 floats exceed the budget
    ],
)
def test_plan_keeps_weights_on_chip_only_when_the_operand_fits(H, B, dtype, prec, resident):
    p = tb.plan_split(B, H, dtype, prec, sms=132)  # an H100's SM count
    assert p["W_RES"] is resident
    if not resident:  # streamed: K-chunks small enough too, 3xTF32 on 8 warps
        op = {"tf32x3": 8, "tf32": 4}.get(prec, 2)
        assert p["BB"] * p["BK"] * op <= 4096 or p["BK"] == 16
        assert prec != "tf32x3" or p["num_warps"] == 8


def test_a_broken_barrier_gives_nan_not_silently_wrong_numbers(monkeypatch):
    # Two programs share each step's h, but the interpreter runs them one after the other:
    # exactly what happens on a GPU that does not run the whole grid at once. The first
    # program's barrier times out; every result from then on must be NaN, forward and back.
    monkeypatch.setattr(kernels, "SPIN_LIMIT", 3)
    monkeypatch.setattr(tb, "_OVERRIDE", {"BH": 8, "sync": True, "stepwise": False})
    p = tb._plan(B=3, H=16, dtype=torch.float32, device=torch.device("cpu"))
    assert p["grid"] == (2, 1) and p["SYNC"] and not p["stepwise"]
    x, h0, c0, w, _ = _case(T=4, B=3, I=2, H=16)
    out, h_n, c_n = tb.run(x, h0, c0, *w, None, None, False)
    assert torch.isfinite(out[0]).all()  # step 0 reads only h0: no barrier before it
    assert out[1:].isnan().all() and h_n.isnan().all() and c_n.isnan().all()
    monkeypatch.setattr(tb, "_OVERRIDE", {"BH": 8})  # a forward that works, stepwise
    out, h_n, c_n = tb.run(x, h0, c0, *w, None, None, False)
    monkeypatch.setattr(tb, "_OVERRIDE", {"BH": 8, "sync": True, "stepwise": False})
    grads = torch.autograd.grad((out.sum(), h_n.sum()), [x, w[1]])
    assert all(g.isnan().any() for g in grads)


def test_plans_respect_the_shared_memory_of_the_card():
    small = 99 * 1024  # sm_86 / sm_89 cards
    cases = [(64, torch.float32, "tf32x3"), (256, torch.float32, "tf32"),
             (512, torch.bfloat16, "ieee"), (1024, torch.bfloat16, "ieee")]  # fmt: skip
    for H, dtype, prec in cases:
        p = tb.plan_split(16, H, dtype, prec, sms=58, smem=small)
        es = torch.empty(0, dtype=dtype).element_size()
        if p["W_RES"]:  # resident weights need up to twice their bytes + 8 KB
            assert 2 * 4 * p["HP"] * p["BH"] * es + 8 * 1024 <= small
    assert not tb.plan_split(16, 512, torch.bfloat16, "ieee", 58, smem=small)["W_RES"]
    assert tb.plan_split(16, 512, torch.bfloat16, "ieee", 132)["W_RES"]  # an H100 keeps them
    assert not tb.plan_split(16, 64, torch.float32, "tf32", 132, stream=True)["W_RES"]


class _RefusesResident:
    """A kernel handle that raises Triton's OutOfResources for resident-weight launches, as a
    GPU with less shared memory than planned does before running anything."""

    def __init__(self, kernel):
        self.kernel, self.refused = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kw):
            if kw["W_RES"]:
                from triton.runtime.errors import OutOfResources

                self.refused += 1
                raise OutOfResources(139264, 101376, "shared memory")
            return self.kernel[grid](*args, **kw)

        return launch


def test_a_refused_launch_is_planned_again_with_streamed_weights(monkeypatch):
    fwd, bwd = _RefusesResident(kernels.lstm_fwd_kernel), _RefusesResident(kernels.lstm_bwd_kernel)
    monkeypatch.setattr(kernels, "lstm_fwd_kernel", fwd)
    monkeypatch.setattr(kernels, "lstm_bwd_kernel", bwd)
    monkeypatch.setattr(tb, "_STREAMED", set())
    _compare(T=4, B=3, I=2, H=16, reverse=True, lengths=True)  # right answers all the same
    # refused once, then remembered for this shape: the backward plans streamed weights
    assert fwd.refused == 1 and bwd.refused == 0
    assert tb._plan(3, 16, torch.float32, torch.device("cpu"), "ieee")["W_RES"] is False
    _compare(T=3, B=2, I=2, H=16, reverse=False, lengths=False)
    assert fwd.refused == 1 and bwd.refused == 0
    monkeypatch.setattr(tb, "_STREAMED", set())  # the backward alone refused: the same
    bwd.refused = 0
    monkeypatch.setattr(kernels, "lstm_fwd_kernel", fwd.kernel)
    _compare(T=3, B=2, I=2, H=16, reverse=False, lengths=True)
    assert bwd.refused == 1


def test_other_launch_errors_are_not_swallowed(monkeypatch):
    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                raise RuntimeError("an unrelated failure")

            return launch

    monkeypatch.setattr(kernels, "lstm_fwd_kernel", Broken())
    x, h0, c0, w, _ = _case(3, 2, 3, 8)
    with pytest.raises(RuntimeError, match="unrelated"):
        tb.run(x, h0, c0, *w, None, None, False)


# bfloat16: inputs, h, gates and their gradients are stored in bf16 (2**-8 relative rounding)
# and compounded over the steps; the float64 reference runs on the same bf16 inputs. Errors
# measured here: 0.4-1.3% of each tensor's largest value (the H100 measured 0.4% norm-wise).
BF16_REL = 3e-2


@pytest.mark.parametrize("split", [None, *SPLITS])
@pytest.mark.parametrize("reverse, lengths", [(False, False), (True, True)])
def test_bfloat16_matches_reference(split, reverse, lengths, monkeypatch):
    if split:
        monkeypatch.setattr(tb, "_OVERRIDE", SPLITS[split])
    x, h0, c0, w, lens = _case(5, 3, 3, 16, lengths=lengths)
    ours = [t.detach().bfloat16().requires_grad_() for t in (x, h0, c0, *w)]
    ref = [t.detach().double().requires_grad_() for t in ours]
    got = tb.run(*ours[:3], *ours[3:], None, lens, reverse)
    want = reference.run(*ref[:3], *ref[3:], None, lens, reverse)
    g = torch.Generator().manual_seed(1)
    cot = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in want]
    got_all = [*got, *torch.autograd.grad(got, ours, [c.bfloat16() for c in cot])]
    want_all = [*want, *torch.autograd.grad(want, ref, cot)]
    names = ["out", "h_n", "c_n", "grad x", "grad h0", "grad c0", "grad weight_ih",
             "grad weight_hh", "grad bias_ih", "grad bias_hh"]  # fmt: skip
    for name, a, b in zip(names, got_all, want_all, strict=True):
        assert a.dtype == torch.bfloat16, name
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, rtol=BF16_REL, atol=BF16_REL * scale,
                                   msg=lambda m, n=name: f"{n}: {m}")  # fmt: skip


def test_odd_hidden_size_and_no_bias():
    _compare(T=4, B=2, I=3, H=6, reverse=True, lengths=True, bias=False)


def test_plan_spreads_hidden_units_over_programs():
    p = tb._plan(B=16, H=1024, dtype=torch.float32, device=torch.device("cpu"))
    assert p["grid"][0] * p["BH"] >= 1024 and p["grid"][0] > 1
    assert p["stepwise"]  # the interpreter cannot run several programs at once
    assert not p["W_RES"]  # 4 x 1024 x BH floats do not fit on chip


def test_no_grad_forward_matches():
    x, h0, c0, w, lens = _case(6, 3, 3, 8, lengths=True)
    with torch.no_grad():
        got = tb.run(x, h0, c0, *w, None, lens, False)
        want = reference.run(x, h0, c0, *w, None, lens, False)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert (got[0][lens[1] :, 1] == 0).all()  # zero past the length


def test_layer_bidirectional_two_layers():
    torch.manual_seed(0)
    ref = LSTM(3, 8, num_layers=2, bidirectional=True, backend="reference")
    tri = LSTM(3, 8, num_layers=2, bidirectional=True, backend="triton")
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    lens = torch.tensor([5, 3])
    out_r, (h_r, c_r) = ref(x, lengths=lens)
    out_t, (h_t, c_t) = tri(x, lengths=lens)
    for a, b in zip((out_t, h_t, c_t), (out_r, h_r, c_r), strict=True):
        torch.testing.assert_close(a, b, **TOL)
    (gx_r,) = torch.autograd.grad(out_r.sum() + h_r.sum(), x)
    (gx_t,) = torch.autograd.grad(out_t.sum() + h_t.sum(), x)
    torch.testing.assert_close(gx_t, gx_r, **TOL)


def _req(**kw):
    base = dict(device_type="cpu", dtype=torch.float32, T=5, B=3, I=3, H=8, P=0, num_layers=1,
                directions=1, has_lengths=False, needs_grad=True)  # fmt: skip
    return Request(**{**base, **kw})


def test_unsupported_says_why(monkeypatch):
    assert tb.unsupported(_req()) is None  # the kernels were built for the interpreter
    assert tb.unsupported(_req(P=4)) == "proj_size"
    assert "float64" in tb.unsupported(_req(dtype=torch.float64))
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    assert "TRITON_INTERPRET=1" in tb.unsupported(_req())
    monkeypatch.setattr(tb, "_triton_installed", lambda: False)
    assert tb.unsupported(_req()) == "triton is not installed (pip install lstmkit[gpu])"


def test_projection_is_a_clear_error():
    x, h0, c0, w, _ = _case(3, 2, 3, 8)
    with pytest.raises(BackendError, match="triton.*proj_size"):
        tb.run(x, h0[:, :2], c0, *w, torch.randn(2, 8), None, False)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_cell_states_match_reference(reverse):
    x, h0, c0, w, lens = _case(6, 3, 3, 8, lengths=True)
    with torch.no_grad():
        got = tb.run(x, h0, c0, *w, None, lens, reverse, None, True)
        want = reference.run(x, h0, c0, *w, None, lens, reverse, None, True)
    assert len(got) == 4 and got[3].shape == (6, 3, 8)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert (got[3][lens[1] :, 1] == 0).all()  # zero past the length


def test_cell_states_with_gradients_are_refused_by_name():
    assert "return_cell_states" in tb.unsupported(_req(cell_states=True))
    assert tb.unsupported(_req(cell_states=True, needs_grad=False)) is None
    tri = LSTM(3, 8, backend="triton")
    x = torch.randn(4, 2, 3)
    with pytest.raises(BackendError, match="triton.*return_cell_states with gradients"):
        tri(x, return_cell_states=True)
    with torch.no_grad():
        _, (_, c_n), cs = tri(x, return_cell_states=True)
    torch.testing.assert_close(cs[-1], c_n[0], **TOL)
