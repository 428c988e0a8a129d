"""Converters between ``lstmkit.LSTM`` and other libraries' LSTM layers, exact in both ways.

- ``torch.nn.LSTM``: the same parameter names and layout (gate order i, f, g, o), so a
  conversion is a state_dict copy plus the constructor arguments (layers, bias,
  batch_first, dropout, bidirectional, proj_size).
- Keras 3 ``keras.layers.LSTM`` (one layer, one direction, batch-first): ``kernel`` (I, 4H),
  ``recurrent_kernel`` (H, 4H) and one ``bias`` (4H,), gate order i, f, c, o — PyTorch's
  i, f, g, o — so the weights are transposed and the two PyTorch biases summed (Keras →
  lstmkit puts the bias in ``bias_ih`` and zeros in ``bias_hh``).

Only plain LSTMs convert: an ``lstmkit.LSTM`` whose ``variant`` is not plain (layer norm,
peepholes, …) has no counterpart there and is refused with :class:`ConversionError`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from lstmkit.errors import LstmkitError
from lstmkit.layer import LSTM


class ConversionError(LstmkitError):
    """A model that the target format cannot represent exactly (named in the message)."""


def require_plain(model: LSTM, target: str) -> None:
    """Refuse an LSTM with a non-plain ``variant`` (which ``target`` cannot express)."""
    if not isinstance(model, LSTM):
        raise ConversionError(f"{target} takes an lstmkit.LSTM, got {type(model).__name__}")
    variant = getattr(model, "variant", None)
    if variant is not None and not variant.is_plain():
        raise ConversionError(
            f"{target} supports only the plain LSTM; this one has the variant {variant}"
        )


def from_torch(module: nn.LSTM, backend: str = "auto") -> LSTM:
    """An ``lstmkit.LSTM`` with ``module``'s configuration, a copy of its weights (same device
    and dtype) and its train/eval mode."""
    if not isinstance(module, nn.LSTM):
        raise ConversionError(f"from_torch takes a torch.nn.LSTM, got {type(module).__name__}")
    w = module.weight_ih_l0
    out = LSTM(
        module.input_size,
        module.hidden_size,
        module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        dropout=module.dropout,
        bidirectional=module.bidirectional,
        proj_size=module.proj_size,
        device=w.device,
        dtype=w.dtype,
        backend=backend,
    )
    with torch.no_grad():
        out.load_state_dict(module.state_dict())
    return out.train(module.training)


def to_torch(model: LSTM) -> nn.LSTM:
    """A ``torch.nn.LSTM`` with ``model``'s configuration, a copy of its weights (same device
    and dtype) and its train/eval mode; the backend choice does not carry over."""
    require_plain(model, "to_torch")
    w = model.weight_ih_l0
    out = nn.LSTM(
        model.input_size,
        model.hidden_size,
        model.num_layers,
        bias=model.bias,
        batch_first=model.batch_first,
        dropout=model.dropout,
        bidirectional=model.bidirectional,
        proj_size=model.proj_size,
        device=w.device,
        dtype=w.dtype,
    )
    with torch.no_grad():
        out.load_state_dict(model.state_dict())
    return out.train(model.training)


# -- Keras 3 ---------------------------------------------------------------------------------


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")  # lstmkit's own; read at keras' import
    try:
        import keras
    except ImportError:
        raise ConversionError("the Keras converters need keras 3: pip install keras") from None
    return keras


def _activation_name(fn) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", repr(fn))


def from_keras(layer, backend: str = "auto", dtype: torch.dtype | None = None) -> LSTM:
    """An ``lstmkit.LSTM`` (batch_first=True, one layer) computing what the built Keras 3
    ``keras.layers.LSTM`` ``layer`` computes in inference. Keras' input/recurrent dropout act
    only in training and are not carried over. ``dtype``: default the layer's weights'."""
    keras = _keras()
    if not isinstance(layer, keras.layers.LSTM):
        raise ConversionError(f"from_keras takes a keras.layers.LSTM, got {type(layer).__name__}")
    if not layer.built:
        raise ConversionError("from_keras needs a built Keras layer (call it on an input once)")
    cell = layer.cell
    for what, got, want in (
        ("activation", _activation_name(cell.activation), "tanh"),
        ("recurrent_activation", _activation_name(cell.recurrent_activation), "sigmoid"),
    ):
        if got != want:
            raise ConversionError(f"from_keras: {what} must be {want!r} as in lstmkit, got {got!r}")
    if layer.go_backwards:
        raise ConversionError("from_keras: go_backwards=True layers are not supported")
    weights = [torch.as_tensor(w) for w in layer.get_weights()]
    kernel, recurrent = weights[0], weights[1]
    I, H = kernel.shape[0], cell.units
    dtype = dtype or kernel.dtype
    out = LSTM(I, H, bias=cell.use_bias, batch_first=True, dtype=dtype, backend=backend)
    with torch.no_grad():
        out.weight_ih_l0.copy_(kernel.T)
        out.weight_hh_l0.copy_(recurrent.T)
        if cell.use_bias:
            out.bias_ih_l0.copy_(weights[2])
            out.bias_hh_l0.zero_()
    return out


def to_keras(model: LSTM, return_sequences: bool = True, return_state: bool = True):
    """A built Keras 3 ``keras.layers.LSTM`` computing what ``model`` computes (inference).

    Keras layers are one layer, one direction, no projection, batch-first: ``model`` must be
    so too (its ``batch_first`` is ignored: the Keras layer takes (B, T, I)). With the
    defaults it returns ``[output (B, T, H), h_n (B, H), c_n (B, H)]``."""
    require_plain(model, "to_keras")
    for bad, what in (
        (model.num_layers != 1, f"num_layers={model.num_layers}"),
        (model.bidirectional, "bidirectional=True"),
        (model.proj_size, f"proj_size={model.proj_size}"),
    ):
        if bad:
            raise ConversionError(f"to_keras: a Keras LSTM layer has no {what}")
    keras = _keras()
    dtype = str(model.weight_ih_l0.dtype).removeprefix("torch.")
    layer = keras.layers.LSTM(
        model.hidden_size,
        use_bias=model.bias,
        unit_forget_bias=False,  # the bias is set below
        return_sequences=return_sequences,
        return_state=return_state,
        dtype=dtype,
    )
    layer.build((None, None, model.input_size))
    with torch.no_grad():
        weights = [model.weight_ih_l0.T, model.weight_hh_l0.T]
        if model.bias:
            weights.append(model.bias_ih_l0 + model.bias_hh_l0)
        layer.set_weights([w.detach().cpu().numpy() for w in weights])
    return layer
