"""torch.compile(fullgraph=True) and torch.export of lstmkit models, against eager.

The fused and native backends go through the ``lstmkit::lstm_layer`` custom op (one per
layer and direction, with a fake implementation and a backward op); the reference backend is
traced as its Python loop, unrolled, with T specialised. Most tests compile with
``aot_eager``: dynamo, the fake implementations, AOTAutograd and the backward op all run,
and only Inductor's code generation (tens of seconds on two cores) is left to the slow test.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend
from torch.export import Dim
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit
from lstmkit.backends import BackendError, _ops
from lstmkit.model import SequenceModel

F64 = {"atol": 1e-10, "rtol": 1e-8}
F32 = {"atol": 1e-5, "rtol": 1e-4}
LAYER_OP = torch.ops.lstmkit.lstm_layer.default


def _is_layer_op(node) -> bool:  # dynamo records the packet, export the overload
    return node.target in (LAYER_OP, torch.ops.lstmkit.lstm_layer)


class Recorder:
    """A torch.compile backend: keeps each graph dynamo hands over, then runs aot_eager (or
    ``inner``); ``len(graphs)`` counts compilations, recompilations included."""

    def __init__(self, inner: str = "aot_eager") -> None:
        self.graphs: list[torch.fx.GraphModule] = []
        self.inner = lookup_backend(inner)

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self.inner(gm, example_inputs)

    def layer_ops(self, i: int = -1) -> int:
        return sum(map(_is_layer_op, self.graphs[i].graph.nodes))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(T, B, I, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, I, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    return x, lengths


def _fwd_bwd(model, x, lengths, seed=5):
    """Outputs and every gradient (x and parameters) of one forward and backward."""
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    torch.manual_seed(seed)  # the variants' masks: the same draws in eager and compiled
    y, (h, c) = model(x, lengths=lengths)
    (y.square().sum() + h.sum() + c.sin().sum()).backward()
    grads = [x.grad] + [p.grad for p in model.parameters()]
    return [y.detach(), h.detach(), c.detach()], grads


def _pair(backend, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    eager = lstmkit.LSTM(3, 5, backend=backend, dtype=dtype, **kw)
    return eager, copy.deepcopy(eager)


@pytest.mark.parametrize("backend", ["fused", "native"])
def test_compile_matches_eager_one_op_per_layer_and_dynamic_sizes(backend):
    eager, model = _pair(backend, num_layers=2, bidirectional=True)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=rec)
    for step, (T, B) in enumerate([(7, 4), (9, 4), (9, 6), (2, 2), (30, 5)]):
        x, lengths = _inputs(T, B, 3, torch.float64, seed=step)
        want = _fwd_bwd(eager, x, lengths)
        got = _fwd_bwd(compiled, x, lengths)
        torch.testing.assert_close(got, want, **F64)
        if step == 0:
            first = len(rec.graphs)  # (dynamo may restart its first analysis once)
    assert len(rec.graphs) == first, "a new T or B (>= 2) recompiled"
    # one op per layer and direction, whatever T: no loop over time in the graph
    assert rec.layer_ops() == 4
    assert len(rec.graphs[-1].graph.nodes) < 120
    x, lengths = _inputs(1, 1, 3, torch.float64, seed=9)  # size 1: torch specialises once
    torch.testing.assert_close(_fwd_bwd(compiled, x, lengths), _fwd_bwd(eager, x, lengths), **F64)
    assert len(rec.graphs) <= first + 1


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("backend", ["fused", "native"])
def test_compile_variants(backend, training):
    kw = {"layer_norm": True, "peephole": True, "zoneout": (0.2, 0.1), "cell_clip": 2.0}
    kw |= {"recurrent_dropout": 0.3, "weight_drop": 0.2, "dropout": 0.25, "proj_size": 2}
    eager, model = _pair(backend, num_layers=2, bidirectional=True, **kw)
    eager.train(training)
    model.train(training)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=rec)
    counts = []
    for step, (T, B) in enumerate([(6, 4), (8, 3)]):
        x, lengths = _inputs(T, B, 3, torch.float64, seed=step)
        torch.testing.assert_close(
            _fwd_bwd(compiled, x, lengths), _fwd_bwd(eager, x, lengths), **F64
        )
        counts.append(len(rec.graphs))
    assert counts[1] == counts[0] and rec.layer_ops() == 4


@pytest.mark.parametrize("backend", ["fused", "native"])
def test_compile_inference_under_no_grad(backend):
    """No gradient needed: the op runs its inference path (save=False, nothing kept)."""
    eager, model = _pair(backend, dtype=torch.float32, bidirectional=True, zoneout=0.1)
    rec = Recorder()
    compiled = torch.compile(model.eval(), fullgraph=True, dynamic=True, backend=rec)
    with torch.no_grad():
        for T, B in [(50, 3), (9, 4)]:
            x, lengths = _inputs(T, B, 3, torch.float32, seed=T)
            want = eager.eval()(x, lengths=lengths)
            torch.testing.assert_close(compiled(x, lengths=lengths), want, **F32)
    ops = [n for n in rec.graphs[-1].graph.nodes if _is_layer_op(n)]
    assert len(ops) == 2 and all(n.args[11] is False for n in ops)


def test_compile_coupled_float32():
    eager, model = _pair("native", dtype=torch.float32, coupled=True, zoneout=0.1)
    compiled = torch.compile(model.eval(), fullgraph=True, dynamic=True, backend=Recorder())
    x, lengths = _inputs(12, 3, 3, torch.float32, seed=1)
    torch.testing.assert_close(
        _fwd_bwd(compiled, x, lengths), _fwd_bwd(eager.eval(), x, lengths), **F32
    )


def test_compile_reference_specialises_T_only():
    """The reference loop unrolls: a new T compiles again, a new B does not."""
    eager, model = _pair("reference", bidirectional=True)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=rec)
    counts = []
    for T, B in [(3, 2), (3, 5), (4, 5), (4, 3)]:
        x, lengths = _inputs(T, B, 3, torch.float64, seed=T * B)
        torch.testing.assert_close(
            _fwd_bwd(compiled, x, lengths), _fwd_bwd(eager, x, lengths), **F64
        )
        counts.append(len(rec.graphs))
    assert counts[1] == counts[0] and counts[3] == counts[2]  # a new B: no recompile
    assert counts[2] > counts[1]  # a new T: one more compile
    assert rec.layer_ops() == 0


def test_compile_sequence_model_with_auto():
    torch.manual_seed(0)
    eager = SequenceModel(3, 6, 2, num_layers=2)
    model = copy.deepcopy(eager)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=rec)
    counts = []
    for B, T in [(4, 10), (5, 17)]:
        x = torch.randn(B, T, 3, dtype=torch.float32)
        lengths = torch.tensor([T] + [max(1, T - 3 * i) for i in range(1, B)])
        outs = []
        for m in (eager, compiled):
            m.zero_grad()
            y = m(x, lengths=lengths)
            y.square().mean().backward()
            outs.append([y.detach(), *(p.grad for p in m.parameters())])
        torch.testing.assert_close(outs[1], outs[0], **F32)
        counts.append(len(rec.graphs))
    assert counts[1] == counts[0] and rec.layer_ops() == 2


def test_compiled_lengths_check_is_a_graph_assert():
    model = lstmkit.LSTM(3, 4, backend="native")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=Recorder())
    x = torch.randn(5, 2, 3)
    compiled(x, lengths=torch.tensor([5, 1]))
    for bad in ([0, 3], [6, 3]):
        with pytest.raises(RuntimeError, match="lengths must be in 1..T"):
            compiled(x, lengths=torch.tensor(bad))
    with pytest.raises(ValueError, match="lengths must be"):  # eager: the exact message
        model(x, lengths=torch.tensor([6, 3]))


@pytest.mark.parametrize("impl", ["fused", "native"])
@pytest.mark.parametrize("case", ["plain", "proj_lengths_reverse", "variants"])
def test_opcheck(impl, case):
    """torch.library.opcheck: schema, fake implementation, autograd registration and
    AOT dispatch of lstmkit::lstm_layer agree with the real kernel."""
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 4, 3, 2, 3
    P = 2 if case == "proj_lengths_reverse" else H

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    w_hr = r(P, H) if case == "proj_lengths_reverse" else None
    lengths = torch.tensor([4, 1, 2]) if case == "proj_lengths_reverse" else None
    var = [False] + [None] * 5 + [False, None, None, None, None, None, None]
    if case == "variants":
        zc = (torch.rand(T, B, H, generator=g) < 0.3).double()
        ln = [r(4 * H), r(4 * H), r(H), r(H)]
        var = [True, r(3 * H), *ln, False, 1.5, None, zc, None, None, 0.1]
    base = [r(T, B, I), r(B, P), r(B, H), r(4 * H, I), r(4 * H, P), r(4 * H), r(4 * H), w_hr]
    cells = case != "plain"  # every step's cell state as an output too
    args = (*base, lengths, case != "plain", impl, True, cells, *var)
    torch.library.opcheck(torch.ops.lstmkit.lstm_layer, args)
    # save=False is the inference op: traced only where no gradient is needed
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    args[11] = False
    torch.library.opcheck(torch.ops.lstmkit.lstm_layer, tuple(args))


def _fwd_bwd_cells(model, x, lengths):
    """Outputs and gradients of a loss on the cell states (and the output)."""
    x = x.clone().requires_grad_(True)
    model.zero_grad()
    y, (h, c), cs = model(x, lengths=lengths, return_cell_states=True)
    (cs.sin().sum() + y.sum()).backward()
    return [y.detach(), cs.detach(), x.grad, *(p.grad for p in model.parameters())]


def test_compile_cell_states():  # fused: the same op (opcheck above); reference: autograd
    eager, model = _pair("native", num_layers=2, bidirectional=True, proj_size=2)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=rec)
    for step, (T, B) in enumerate([(6, 4), (8, 5)]):  # (B = I = 3 would share I's symbol)
        x, lengths = _inputs(T, B, 3, torch.float64, seed=step)
        got = _fwd_bwd_cells(compiled, x, lengths)
        torch.testing.assert_close(got, _fwd_bwd_cells(eager, x, lengths), **F64)
        assert got[1].shape == (T, B, 10)
        if step == 0:
            first = len(rec.graphs)  # (dynamo may restart its first analysis once)
    # one op per layer and direction, and no recompile for a new T and B
    assert rec.layer_ops() == 4 and len(rec.graphs) == first


def test_compile_packed_sequence():  # the packing is the layer's, the same for every backend
    eager, model = _pair("native", bidirectional=True)
    rec = Recorder()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=rec)
    for step, lens in enumerate([[5, 2, 4, 1], [3, 7, 2, 6, 5]]):
        x = torch.randn(max(lens), len(lens), 3, dtype=torch.float64, requires_grad=True)
        got, (h, c) = compiled(pack_padded_sequence(x, lens, enforce_sorted=False))
        want, (h2, c2) = eager(pack_padded_sequence(x, lens, enforce_sorted=False))
        assert torch.equal(got.batch_sizes, want.batch_sizes)
        assert torch.equal(got.unsorted_indices, want.unsorted_indices)
        torch.testing.assert_close((got.data, h, c), (want.data, h2, c2), **F64)
        (gx,) = torch.autograd.grad(got.data.sum() + c.sum(), x)
        (gx2,) = torch.autograd.grad(want.data.sum() + c2.sum(), x)
        torch.testing.assert_close(gx, gx2, **F64)
        if step == 0:
            first = len(rec.graphs)
    assert len(rec.graphs) == first  # a new T and B: no recompile


def test_compiled_packed_sequence_needs_sorted_indices():
    compiled = torch.compile(lstmkit.LSTM(3, 4), fullgraph=True, backend="eager")
    packed = pack_padded_sequence(torch.randn(4, 2, 3), [4, 2])  # enforce_sorted=True
    with pytest.raises(Exception, match="enforce_sorted=False"):
        compiled(packed)


def test_export_cell_states():
    torch.manual_seed(0)
    model = lstmkit.LSTM(3, 5, bidirectional=True).eval()
    x, lengths = torch.randn(7, 4, 3), torch.tensor([7, 2, 5, 1])
    dims = {"input": {0: Dim("T", min=1, max=4096), 1: Dim("B", min=1, max=512)}}
    dims |= {"lengths": {0: dims["input"][1]}, "return_cell_states": None}
    kwargs = {"lengths": lengths, "return_cell_states": True}
    with torch.no_grad():
        ep = torch.export.export(model, (x,), kwargs, dynamic_shapes=dims)
        for T, B in ((1, 1), (9, 3)):
            (xt,), kw = _example("lstm", T, B)
            kw["return_cell_states"] = True
            got, want = ep.module()(xt, **kw), model(xt, **kw)
            assert got[2].shape == (T, B, 10)
            torch.testing.assert_close(got, want, **F32)


# -- torch.export --------------------------------------------------------------------------

T_VALUES = (1, 7, 100, 1000)


def _exported(kind):
    """(eager model, exported program, example inputs for T) for an LSTM or a SequenceModel."""
    torch.manual_seed(0)
    if kind == "lstm":
        model = lstmkit.LSTM(3, 5, num_layers=2, bidirectional=True).eval()
        x = torch.randn(7, 4, 3)
        dims = {"input": {0: Dim("T", min=1, max=4096), 1: Dim("B", min=1, max=512)}}
        dims["lengths"] = {0: dims["input"][1]}
        kwargs = {"lengths": torch.tensor([7, 2, 5, 1])}
    else:
        model = SequenceModel(3, 6, 2, num_layers=2).eval()
        x = torch.randn(4, 7, 3)
        dims = {"x": {0: Dim("B", min=1, max=512), 1: Dim("T", min=1, max=4096)}}
        kwargs = {}
    with torch.no_grad():  # an inference graph: nothing kept for a backward
        ep = torch.export.export(model, (x,), kwargs, dynamic_shapes=dims)
    return model, ep


def _example(kind, T, B=3):
    g = torch.Generator().manual_seed(T)
    if kind == "lstm":
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        lengths[0] = T
        return (torch.randn(T, B, 3, generator=g),), {"lengths": lengths}
    return (torch.randn(B, T, 3, generator=g),), {}


@pytest.mark.parametrize("kind", ["lstm", "sequence_model"])
def test_export_dynamic_batch_and_time(kind):
    model, ep = _exported(kind)
    ops = [n for n in ep.graph.nodes if _is_layer_op(n)]
    assert len(ops) == (4 if kind == "lstm" else 2)
    assert all(n.args[11] is False for n in ops)  # save=False: the inference path
    for T in T_VALUES:
        for B in (1, 3):
            args, kwargs = _example(kind, T, B)
            with torch.no_grad():
                want = model(*args, **kwargs)
            torch.testing.assert_close(ep.module()(*args, **kwargs), want, **F32)


LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    import lstmkit.backends  # registers the lstmkit::lstm_layer ops the program calls
    torch.set_num_threads(1)
    ep = torch.export.load(sys.argv[1])
    cases = torch.load(sys.argv[2])
    for args, kwargs, want in cases:
        torch.testing.assert_close(ep.module()(*args, **kwargs), want, atol=1e-5, rtol=1e-4)
    print("matched", len(cases))
    """
)


@pytest.mark.parametrize("kind", ["lstm", "sequence_model"])
def test_export_save_load_in_a_fresh_process(kind, tmp_path):
    model, ep = _exported(kind)
    torch.export.save(ep, tmp_path / "model.pt2")
    cases = []
    for T in T_VALUES:
        args, kwargs = _example(kind, T)
        with torch.no_grad():
            cases.append((args, kwargs, model(*args, **kwargs)))
    torch.save(cases, tmp_path / "cases.pt")
    (tmp_path / "load.py").write_text(LOAD_SCRIPT)
    res = subprocess.run(
        [sys.executable, str(tmp_path / "load.py"), str(tmp_path / "model.pt2"),
         str(tmp_path / "cases.pt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == f"matched {len(T_VALUES)}"


def test_export_reference_needs_a_static_T():
    model = lstmkit.LSTM(3, 4, backend="reference").eval()
    x = torch.randn(5, 2, 3)
    with torch.no_grad(), pytest.raises(BackendError, match="static T"):
        torch.export.export(model, (x,), dynamic_shapes={"input": {0: Dim("T"), 1: Dim("B")}})
    with torch.no_grad():
        ep = torch.export.export(
            model, (x,), dynamic_shapes={"input": {0: Dim.STATIC, 1: Dim("B", max=64)}}
        )
    x7 = torch.randn(5, 7, 3)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x7), model(x7), **F32)


def test_exported_training_graph_differentiates():
    """Exported with grad enabled, the program keeps the buffers (save=True) and its
    module trains: gradients equal eager ones."""
    torch.manual_seed(0)
    model = lstmkit.LSTM(3, 5, backend="native", bidirectional=True)
    x = torch.randn(6, 2, 3)
    ep = torch.export.export(model, (x,), dynamic_shapes={"input": {0: Dim("T"), 1: Dim("B")}})
    assert all(n.args[11] is True for n in ep.graph.nodes if _is_layer_op(n))
    loaded = ep.module()
    x9 = torch.randn(9, 3, 3)
    grads = []
    for m in (model, loaded):
        y, (h, c) = m(x9)
        grads.append(torch.autograd.grad(y.square().sum() + c.sum(), list(m.parameters())))
    torch.testing.assert_close(grads[1], grads[0], **F32)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["native", "fused"])
def test_compile_inductor(backend):
    """The default backend (Inductor's generated code around the custom ops)."""
    eager, model = _pair(backend, dtype=torch.float32, num_layers=2, bidirectional=True)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for step, (T, B) in enumerate([(7, 4), (20, 5)]):
        x, lengths = _inputs(T, B, 3, torch.float32, seed=step)
        torch.testing.assert_close(
            _fwd_bwd(compiled, x, lengths), _fwd_bwd(eager, x, lengths), **F32
        )


def test_ops_are_registered_by_importing_lstmkit():
    assert _ops.lstm_layer._qualname == "lstmkit::lstm_layer"
    assert hasattr(torch.ops.lstmkit, "lstm_layer_backward")
