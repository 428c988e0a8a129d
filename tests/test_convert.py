"""Converters: torch.nn.LSTM and Keras 3 LSTM layers, both ways, outputs compared."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")
import keras  # noqa: E402

from lstmkit import LSTM  # noqa: E402
from lstmkit.convert import (  # noqa: E402
    ConversionError,
    from_keras,
    from_torch,
    to_keras,
    to_torch,
)

# keras 3.15 on numpy 2 warns about its own __array__ on every weight read
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 1e-5, "rtol": 1e-5}}
CONFIGS = [
    {},
    {"num_layers": 2},
    {"bidirectional": True},
    {"num_layers": 2, "bidirectional": True, "proj_size": 3},
    {"bias": False, "batch_first": True},
    {"num_layers": 3, "dropout": 0.25, "batch_first": True, "proj_size": 2},
]
ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout")
ARGS += ("bidirectional", "proj_size")


def _same_outputs(a, b, x, dtype):
    a.eval(), b.eval()
    with torch.no_grad():
        (ya, (ha, ca)), (yb, (hb, cb)) = a(x), b(x)
    for got, want in ((ya, yb), (ha, hb), (ca, cb)):
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_torch_round_trip(cfg, dtype):
    torch.manual_seed(0)
    ref = nn.LSTM(4, 6, dtype=dtype, **cfg)
    ours = from_torch(ref)
    for a in ARGS:
        assert getattr(ours, a) == getattr(ref, a), a
    assert ours.weight_ih_l0.dtype == dtype
    x = torch.randn(5, 3, 4, dtype=dtype)
    _same_outputs(ours, ref, x, dtype)
    back = to_torch(ours)
    assert type(back) is nn.LSTM
    for a in ARGS:
        assert getattr(back, a) == getattr(ref, a), a
    sd, ref_sd = back.state_dict(), ref.state_dict()
    assert list(sd) == list(ref_sd)
    for k in sd:
        assert torch.equal(sd[k], ref_sd[k]), k
    _same_outputs(back, ours, x, dtype)


def test_methods_and_copies():
    ref = nn.LSTM(3, 5, 2, bidirectional=True).train()
    ours = LSTM.from_torch(ref, backend="reference")
    assert ours.backend == "reference" and ours.training
    back = ours.eval().to_torch()
    assert not back.training
    with torch.no_grad():  # copies, not shared tensors
        ours.weight_hh_l1_reverse.add_(1.0)
    assert not torch.equal(back.weight_hh_l1_reverse, ours.weight_hh_l1_reverse)
    assert torch.equal(back.weight_hh_l1_reverse, ref.weight_hh_l1_reverse)


class _Variant:
    def __init__(self, plain: bool) -> None:
        self.plain = plain

    def is_plain(self) -> bool:
        return self.plain

    def __str__(self) -> str:
        return "none" if self.plain else "layer_norm"


def test_variants_refused():
    m = LSTM(3, 4)
    m.variant = _Variant(plain=True)
    assert isinstance(to_torch(m), nn.LSTM)
    m.variant = _Variant(plain=False)
    for fn, name in ((to_torch, "to_torch"), (to_keras, "to_keras")):
        with pytest.raises(ConversionError, match=f"{name}.*layer_norm"):
            fn(m)


def test_wrong_types_refused():
    with pytest.raises(ConversionError, match="torch.nn.LSTM, got GRU"):
        from_torch(nn.GRU(3, 4))
    with pytest.raises(ConversionError, match="lstmkit.LSTM, got LSTM"):
        to_torch(nn.LSTM(3, 4))  # already a torch one
    with pytest.raises(ConversionError, match="keras.layers.LSTM, got GRU"):
        from_keras(keras.layers.GRU(4))


# -- Keras ------------------------------------------------------------------------------------


def _keras_layer(I, H, use_bias=True, seed=0, **kw):
    layer = keras.layers.LSTM(H, return_sequences=True, return_state=True, use_bias=use_bias, **kw)
    layer.build((None, None, I))
    g = torch.Generator().manual_seed(seed)  # random biases too (Keras' default is zeros)
    layer.set_weights([(torch.rand(w.shape, generator=g) - 0.5).numpy() for w in layer.weights])
    return layer


def _keras_out(layer, x):
    y, h, c = layer(x.numpy())
    return [torch.as_tensor(keras.ops.convert_to_numpy(t)) for t in (y, h, c)]


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("T,B", [(1, 1), (7, 5)])
def test_from_keras(use_bias, T, B):
    layer = _keras_layer(4, 6, use_bias)
    ours = from_keras(layer).eval()
    assert ours.batch_first and ours.bias == use_bias
    x = torch.randn(B, T, 4)
    want_y, want_h, want_c = _keras_out(layer, x)
    with torch.no_grad():
        y, (h, c) = ours(x)
    torch.testing.assert_close(y, want_y, **TOL[torch.float32])
    torch.testing.assert_close(h[0], want_h, **TOL[torch.float32])
    torch.testing.assert_close(c[0], want_c, **TOL[torch.float32])


@pytest.mark.parametrize("bias", [True, False])
def test_to_keras(bias):
    torch.manual_seed(1)
    ours = LSTM(3, 5, bias=bias, batch_first=True).eval()
    layer = to_keras(ours)
    x = torch.randn(4, 9, 3)
    got_y, got_h, got_c = _keras_out(layer, x)
    with torch.no_grad():
        y, (h, c) = ours(x)
    torch.testing.assert_close(got_y, y, **TOL[torch.float32])
    torch.testing.assert_close(got_h, h[0], **TOL[torch.float32])
    torch.testing.assert_close(got_c, c[0], **TOL[torch.float32])
    back = from_keras(layer)  # and the round trip keeps the function (biases summed)
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], y, **TOL[torch.float32])


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"activation": "relu"}, "activation must be 'tanh'.*'relu'"),
        ({"recurrent_activation": "hard_sigmoid"}, "recurrent_activation must be 'sigmoid'"),
        ({"go_backwards": True}, "go_backwards"),
    ],
)
def test_from_keras_refuses(kw, match):
    with pytest.raises(ConversionError, match=match):
        from_keras(_keras_layer(3, 4, **kw))
    with pytest.raises(ConversionError, match="built"):
        from_keras(keras.layers.LSTM(4))


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num_layers": 2}, "num_layers=2"),
        ({"bidirectional": True}, "bidirectional"),
        ({"proj_size": 2}, "proj_size=2"),
    ],
)
def test_to_keras_refuses(kw, match):
    with pytest.raises(ConversionError, match=f"to_keras.*{match}"):
        to_keras(LSTM(3, 4, **kw))
