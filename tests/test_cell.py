"""The reference cell against torch.nn.LSTMCell, and its layout."""

import pytest
import torch
from compare import TOL

import lstmkit


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_matches_torch(dtype, bias, batched):
    torch.manual_seed(0)
    theirs = torch.nn.LSTMCell(5, 7, bias=bias, dtype=dtype)
    ours = lstmkit.LSTMCell(5, 7, bias=bias, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    shape = (3, 5) if batched else (5,)
    x = torch.randn(shape, dtype=dtype)
    hx = tuple(torch.randn((3, 7) if batched else (7,), dtype=dtype) for _ in range(2))
    grads = []
    for m in (ours, theirs):
        xi, hi, ci = (t.clone().requires_grad_() for t in (x, *hx))
        h, c = m(xi, (hi, ci))
        (h.sum() * 2 + (c * c).sum()).backward()
        grads.append([h, c, xi.grad, hi.grad, ci.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


def test_cell_zero_state_default_and_init():
    torch.manual_seed(0)
    m = lstmkit.LSTMCell(3, 4)
    x = torch.randn(2, 3)
    h, c = m(x)
    h2, c2 = m(x, (torch.zeros(2, 4), torch.zeros(2, 4)))
    assert torch.equal(h, h2) and torch.equal(c, c2)
    assert all(p.abs().max() <= 0.5 for p in m.parameters())
    assert repr(m) == "LSTMCell(3, 4)"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(2, 4)), "input.size(-1) must be 3, got 4"),
        (lambda m: m(torch.randn(1, 2, 3)), "input must be 1-D (I,) or 2-D (B, I), got 3-D"),
        (
            lambda m: m(torch.randn(2, 3), (torch.zeros(2, 5), torch.zeros(2, 4))),
            "h must have shape (2, 4), got (2, 5)",
        ),
    ],
)
def test_cell_bad_input(call, message):
    with pytest.raises(ValueError) as e:
        call(lstmkit.LSTMCell(3, 4))
    assert message in str(e.value)


def test_cell_bad_constructor():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        lstmkit.LSTMCell(3, 0)
