"""lstmkit.LSTM against torch.nn.LSTM with copied weights, on the reference backend."""

import pytest
import torch
from compare import GRID, Case, assert_same, case_id, run_both

import lstmkit


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", GRID, ids=case_id)
def test_matches_torch(case: Case, dtype):
    ours, theirs = run_both(case, dtype, backend="reference")
    assert_same(ours, theirs, dtype)


def test_state_dict_round_trips_both_ways():
    kw = {"num_layers": 2, "bidirectional": True, "proj_size": 2}
    theirs, ours = torch.nn.LSTM(3, 5, **kw), lstmkit.LSTM(3, 5, **kw)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    theirs.load_state_dict(ours.state_dict())
    for (n, a), (m, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert n == m
        assert torch.equal(a, b)


def test_init_range_and_repr():
    m = lstmkit.LSTM(3, 16, num_layers=2, proj_size=4, batch_first=True, dropout=0.5)
    bound = 1 / 16**0.5
    for p in m.parameters():
        assert p.abs().max() <= bound
        assert p.std() > bound / 4  # really drawn, not zeros
    r = repr(m)
    assert r == repr(torch.nn.LSTM(3, 16, num_layers=2, proj_size=4, batch_first=True, dropout=0.5))


def test_lengths_give_zeros_past_each_length_and_true_final_state():
    torch.manual_seed(0)
    m = lstmkit.LSTM(2, 4, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 3, 2, dtype=torch.float64)
    lens = [6, 2, 4]
    out, (h, c) = m(x, lengths=lens)
    for b, n in enumerate(lens):
        assert torch.count_nonzero(out[n:, b]) == 0
        alone, (hb, cb) = m(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b : b + 1], alone, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(h[:, b], hb[:, 0], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(c[:, b], cb[:, 0], atol=1e-12, rtol=1e-12)


def test_gradcheck_float64():
    torch.manual_seed(0)
    m = lstmkit.LSTM(2, 3, num_layers=2, bidirectional=True, proj_size=2, dtype=torch.float64)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]

    def f(x, h0, c0, *ps):
        out, (h, c) = torch.func.functional_call(
            m, dict(zip(names, ps, strict=True)), (x, (h0, c0))
        )
        return out, h, c

    leaves = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, h0, c0, *leaves))


def test_dropout_train_and_eval_behave_as_torch():
    torch.manual_seed(0)
    kw = {"num_layers": 3, "dropout": 1.0, "dtype": torch.float64}
    theirs, ours = torch.nn.LSTM(3, 4, **kw), lstmkit.LSTM(3, 4, **kw)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    # p = 1 zeroes every layer's output but the last, deterministically: outputs must agree.
    for mode in ("train", "eval"):
        getattr(theirs, mode)()
        getattr(ours, mode)()
        a, b = theirs(x), ours(x)
        torch.testing.assert_close(b[0], a[0])
        torch.testing.assert_close(b[1][0], a[1][0])
    # p = 0.5: eval is deterministic and equals torch; train is random and differs from eval.
    theirs, ours = (
        torch.nn.LSTM(3, 4, num_layers=2, dropout=0.5),
        lstmkit.LSTM(3, 4, 2, dropout=0.5),
    )
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 2, 3)
    ours.train()
    t1, t2 = ours(x)[0], ours(x)[0]
    assert not torch.equal(t1, t2)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_backend_choice_is_reported():
    m = lstmkit.LSTM(3, 4, backend="reference")
    name, reason = m.backend_choice(torch.randn(2, 1, 3))
    assert name == "reference"
    assert reason
    name, reason = lstmkit.LSTM(3, 4).backend_choice(torch.randn(2, 1, 3))
    assert name in lstmkit.backends.names()
    assert reason.startswith("auto")


@pytest.mark.parametrize("backend", ["reference", "fused", "native"])
@pytest.mark.parametrize("grad", [False, True])
def test_outputs_are_separate_tensors_as_in_torch(backend, grad):
    """out, h_n and c_n of a one-layer LSTM (whose final states the layer returns uncopied)
    share no memory: editing one in place changes neither the others nor the gradients."""
    torch.manual_seed(0)
    m = lstmkit.LSTM(3, 5, backend=backend)
    x = torch.randn(4, 2, 3)
    with torch.set_grad_enabled(grad):
        out, (h_n, c_n) = m(x)
    ptrs = {t.untyped_storage().data_ptr() for t in (out, h_n, c_n)}
    assert len(ptrs) == 3
    torch.testing.assert_close(h_n[0], out[-1], rtol=0, atol=0)
    want_out = out.detach().clone()
    h_n.detach().add_(1.0)
    c_n.detach().add_(1.0)
    torch.testing.assert_close(out.detach(), want_out, rtol=0, atol=0)
    if grad:
        out.sum().backward()
        ref = lstmkit.LSTM(3, 5, backend="reference")
        ref.load_state_dict(m.state_dict())
        ref(x)[0].sum().backward()
        torch.testing.assert_close(m.weight_hh_l0.grad, ref.weight_hh_l0.grad)
