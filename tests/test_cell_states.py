"""``return_cell_states=True``: every step's cell state c_t of the last layer, on the CPU
backends, against a time loop over the reference cell and against the reference backend,
forward and backward (a loss on c_t trains the weights on every backend alike)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import lstmkit
from lstmkit import BackendError, lstm_cell
from lstmkit.backends import Request, resolve

F64 = {"atol": 1e-10, "rtol": 1e-8}
BACKENDS = ["reference", "fused", "native"]


@pytest.fixture(scope="module", autouse=True)
def _native(native_built):
    pass


def _model(backend, seed=0, **kw):
    torch.manual_seed(seed)
    return lstmkit.LSTM(3, 4, backend=backend, dtype=torch.float64, **kw)


def _cell_loop(m: lstmkit.LSTM, x, lengths, reverse=False):
    """c_t of a one-layer model, stepped by hand with lstmkit.lstm_cell (zero past lengths)."""
    sfx = "_l0_reverse" if reverse else "_l0"
    w = [getattr(m, n + sfx) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    T, B, _ = x.shape
    h = x.new_zeros(B, m.hidden_size)
    c = x.new_zeros(B, m.hidden_size)
    cs = x.new_zeros(T, B, m.hidden_size)
    for t in range(T - 1, -1, -1) if reverse else range(T):
        h_new, c_new = lstm_cell(x[t], h, c, *w)
        live = (t < lengths).unsqueeze(1)
        h, c = torch.where(live, h_new, h), torch.where(live, c_new, c)
        cs[t] = torch.where(live, c_new, torch.zeros_like(c_new))
    return cs


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_states_are_the_reference_cells_c(backend):
    m = _model(backend, bidirectional=True)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([6, 2, 4])
    out, (h_n, c_n), cs = m(x, lengths=lengths, return_cell_states=True)
    assert cs.shape == (6, 3, 8)  # (T, B, D*H): forward half, then the backward direction's
    want = torch.cat([_cell_loop(m, x, lengths), _cell_loop(m, x, lengths, reverse=True)], 2)
    torch.testing.assert_close(cs, want, **F64)
    # the last live step's c_t is c_n (forward direction), and nothing changed in output
    torch.testing.assert_close(cs[lengths - 1, torch.arange(3), :4], c_n[0], **F64)
    out2, _ = m(x, lengths=lengths)
    torch.testing.assert_close(out, out2, rtol=0, atol=0)


VARIANTS = [
    {},
    {"num_layers": 2, "bidirectional": True, "proj_size": 2},
    {"layer_norm": True, "peephole": True, "coupled": True},
    {"zoneout": (0.3, 0.2), "recurrent_dropout": 0.2, "cell_clip": 1.5},
]


@pytest.mark.parametrize("kw", VARIANTS, ids=["plain", "layers_bidir_proj", "ln_peep", "zone"])
@pytest.mark.parametrize("backend", ["fused", "native"])
def test_gradients_through_cell_states_match_reference(backend, kw):
    ref, m = _model("reference", **kw), _model(backend, **kw)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 1, 3])
    weight = torch.randn(5, 3, m.hidden_size * (2 if m.bidirectional else 1), dtype=torch.float64)

    def run(model):
        xx = x.clone().requires_grad_()
        model.zero_grad()
        torch.manual_seed(7)  # the variants' masks: the same draws on both backends
        out, (h_n, c_n), cs = model(xx, lengths=lengths, return_cell_states=True)
        (cs * weight).sum().backward()  # a loss on the cell states alone
        return [out, cs, xx.grad, *(p.grad for p in model.parameters())]

    got, want = run(m), run(ref)
    assert want[2].abs().sum() > 0  # the gradient reaches the input through c_t
    torch.testing.assert_close(got, want, **F64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_layouts(backend):
    m = _model(backend, batch_first=True)
    x = torch.randn(3, 5, 3, dtype=torch.float64)  # (B, T, I)
    with torch.no_grad():
        out, _, cs = m(x, lengths=[5, 2, 4], return_cell_states=True)
        assert cs.shape == (3, 5, 4) and (cs[1, 2:] == 0).all() and (cs[1, :2] != 0).all()
        _, _, cs1 = m(x[0], return_cell_states=True)  # unbatched (T, I)
        assert cs1.shape == (5, 4)
        torch.testing.assert_close(cs1, m(x[:1], return_cell_states=True)[2][0], **F64)
        packed = pack_padded_sequence(x, [5, 2, 4], batch_first=True, enforce_sorted=False)
        p_out, _, p_cs = m(packed, return_cell_states=True)
    assert p_cs.batch_sizes.tolist() == p_out.batch_sizes.tolist()
    torch.testing.assert_close(p_cs.data, packed_like(cs, packed), **F64)


def packed_like(padded_bt, packed):
    return pack_padded_sequence(padded_bt, [5, 2, 4], batch_first=True, enforce_sorted=False).data


def test_flag_is_checked_and_cudnn_refuses_by_name():
    m = _model("fused")
    with pytest.raises(TypeError, match="return_cell_states must be True or False, got 1"):
        m(torch.randn(2, 1, 3, dtype=torch.float64), return_cell_states=1)
    req = Request("cuda", torch.float32, 5, 2, 3, 4, 0, 1, 1, False, False, cell_states=True)
    with pytest.raises(BackendError, match="'cudnn' does not support return_cell_states"):
        resolve(req, "cudnn")
    assert resolve(req, "auto", build=False).name != "cudnn"
