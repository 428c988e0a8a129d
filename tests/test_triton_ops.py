"""The Triton backend under torch.compile and torch.export: the ``lstmkit::triton_layer``
custom op (fake implementation, autograd, backward op), run on the CPU through triton's
interpreter (tiny sizes: the interpreter steps through every program in Python)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("triton")

from conftest import interpreted_triton_kernels  # noqa: E402
from torch._dynamo.backends.registry import lookup_backend  # noqa: E402
from torch.export import Dim  # noqa: E402

import lstmkit  # noqa: E402
from lstmkit.backends import BackendError  # noqa: E402

kernels = interpreted_triton_kernels()
TOL = {"atol": 1e-5, "rtol": 1e-5}
OP = torch.ops.lstmkit.triton_layer


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _ops_in(gm) -> int:
    return sum(n.target in (OP, OP.default) for n in gm.graph.nodes)


def test_importing_lstmkit_registers_the_ops():
    assert hasattr(torch.ops.lstmkit, "triton_layer")
    assert hasattr(torch.ops.lstmkit, "triton_layer_backward")


@pytest.mark.slow  # ~10 s: opcheck runs the interpreted kernels a dozen times
def test_opcheck():
    """Schema, fake implementation, autograd and AOT dispatch agree with the kernels."""
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 3, 2, 2, 4

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.5).requires_grad_()

    args = (r(T, B, I), r(B, H), r(B, H), r(4 * H, I), r(4 * H, H), r(4 * H), r(4 * H))
    lens = torch.tensor([3, 1])  # with lengths, in reverse
    torch.library.opcheck(OP, (*args, lens, True, True, False), atol=1e-5, rtol=1e-5)


class _Recorder:
    def __init__(self):
        self.graphs = []
        self.inner = lookup_backend("aot_eager")

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self.inner(gm, example_inputs)


def _fwd_bwd(model, x, lengths):
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    y, (h, c) = model(x, lengths=lengths)
    (y.square().sum() + h.sum() + c.sin().sum()).backward()
    return [y.detach(), h.detach(), c.detach(), x.grad, *(p.grad for p in model.parameters())]


def test_compile_fullgraph_matches_eager_without_recompiling():
    torch.manual_seed(0)
    eager = lstmkit.LSTM(3, 4, backend="triton")
    rec = _Recorder()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True, dynamic=True, backend=rec)
    # sizes unlike each other and I, H (equal sizes share one symbol until they differ)
    for step, (T, B) in enumerate([(5, 2), (6, 7)]):
        x = torch.randn(T, B, 3)
        lengths = torch.tensor([T] + [2] * (B - 1))
        torch.testing.assert_close(_fwd_bwd(compiled, x, lengths), _fwd_bwd(eager, x, lengths))
        if step == 0:
            first = len(rec.graphs)
    assert len(rec.graphs) == first and _ops_in(rec.graphs[-1]) == 1


def test_export_dynamic_time_and_batch():
    torch.manual_seed(0)
    model = lstmkit.LSTM(3, 4, backend="triton").eval()
    dims = {"input": {0: Dim("T", min=1, max=64), 1: Dim("B", min=1, max=16)}}
    with torch.no_grad():
        ep = torch.export.export(model, (torch.randn(5, 3, 3),), dynamic_shapes=dims)
        assert _ops_in(ep.graph_module) == 1
        for T, B in ((1, 1), (6, 2)):
            x = torch.randn(T, B, 3)
            torch.testing.assert_close(ep.module()(x), model(x), **TOL)


def test_variants_under_compile_are_refused_by_name():
    model = lstmkit.LSTM(3, 4, backend="triton", peephole=True)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match="triton.*plain LSTM only") as e:
        compiled(torch.randn(3, 2, 3))
    assert isinstance(e.value, BackendError) or "BackendError" in str(e.value)
