"""Export for inference outside lstmkit: ONNX graphs and int8 dynamic quantization.

ONNX (``pip install 'lstmkit[export]'``): :func:`to_onnx` writes an ``lstmkit.LSTM`` or a
``SequenceModel`` as ONNX's own ``LSTM`` operator, one node per layer (both directions in
one node), written from the weights with ``onnx.helper`` — no tracing. Graph inputs and
outputs, float32, ``batch``/``time`` dynamic:

- ``input``: (T, B, I), or (B, T, I) with batch_first (a SequenceModel is batch-first; with an
  embedding it takes int64 token ids (B, T));
- ``lengths`` (B,) int64, only when exported with ``lengths=True``: right-padded input as
  ``lstmkit.LSTM(..., lengths=)`` takes it (zeros past each length, true final states);
- ``output`` as the module returns it, ``h_n`` and ``c_n`` (L*D, B, H).

Not expressible: ``proj_size`` (ONNX's LSTM has no projection), non-plain variants and
unbatched input. Dropout acts only in training and is left out. float64 weights are written
as float32.

A run (:func:`export_run`) also carries what prediction needs, as ``metadata_props``:
``lstmkit.format_version`` ("1"), ``lstmkit.version``, and the JSON of ``lstmkit.config``,
``lstmkit.task`` and ``lstmkit.scaler`` (``scaler.json``). Scaling — every kind, seasonal
included — runs outside the graph from those parameters, exactly as ``lstmkit predict`` does;
:func:`load_onnx_run` rebuilds a :class:`~lstmkit.checkpoint.Run` whose model is the
onnxruntime session, so ``predict_steps``/``forecast`` work on it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from lstmkit import __version__
from lstmkit.checkpoint import atomic_write
from lstmkit.convert import ConversionError, require_plain, to_torch
from lstmkit.data import TaskFacts
from lstmkit.layer import LSTM
from lstmkit.model import SequenceModel

OPSET, IR_VERSION, FORMAT_VERSION = 17, 8, "1"
_ONNX_GATES = [0, 3, 1, 2]  # PyTorch i, f, g, o  ->  ONNX i, o, f, c


def _need(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConversionError(
            f"ONNX export and inference need {module}: pip install 'lstmkit[export]'"
        ) from None


class _Graph:
    """Nodes and float32 initializers of the graph being written."""

    def __init__(self, onnx) -> None:
        self.onnx, self.nodes, self.inits = onnx, [], []

    def const(self, name: str, value: Tensor) -> str:
        arr = value.detach().cpu().numpy()
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], **attrs) -> list[str]:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, outputs, **attrs))
        return outputs


def _gates(w: Tensor) -> Tensor:
    """(4H, ·) or (4H,) from PyTorch's gate order to ONNX's."""
    return torch.cat([w.chunk(4, 0)[g] for g in _ONNX_GATES], 0).float()


def _stacked(lstm: LSTM, bases: list[str], suffixes: list[str]) -> Tensor:
    """(D, 4H * len(bases), ·): the named parameters of each direction, in ONNX's gate order."""
    return torch.stack([torch.cat([_gates(getattr(lstm, b + s)) for b in bases]) for s in suffixes])


def _lstm_layers(g: _Graph, lstm: LSTM, x: str, lens: str) -> tuple[str, str, str]:
    """Time-major x (T, B, I) through every layer: names of out (T, B, D*H), h_n, c_n."""
    D = 2 if lstm.bidirectional else 1
    shape = g.const("out_shape", torch.tensor([0, 0, -1]))
    hs, cs = [], []
    for k in range(lstm.num_layers):
        sfx = [f"_l{k}", f"_l{k}_reverse"][:D]  # PyTorch's parameter names, per direction
        W = g.const(f"W_l{k}", _stacked(lstm, ["weight_ih"], sfx))  # (D, 4H, I)
        R = g.const(f"R_l{k}", _stacked(lstm, ["weight_hh"], sfx))  # (D, 4H, H)
        B = ""
        if lstm.bias:  # (D, 8H): input bias then recurrent bias
            B = g.const(f"B_l{k}", _stacked(lstm, ["bias_ih", "bias_hh"], sfx))
        y, h, c = g.node(
            "LSTM",
            [x, W, R, B, lens],
            [f"Y_l{k}", f"h_l{k}", f"c_l{k}"],
            hidden_size=lstm.hidden_size,
            direction="bidirectional" if D == 2 else "forward",
        )
        # Y (T, D, B, H) -> (T, B, D, H) -> (T, B, D*H): the next layer's input
        (t,) = g.node("Transpose", [y], [f"Yt_l{k}"], perm=[0, 2, 1, 3])
        (x,) = g.node("Reshape", [t, shape], [f"out_l{k}"])
        hs.append(h)
        cs.append(c)
    (h_n,) = g.node("Concat", hs, ["h_n"], axis=0)
    (c_n,) = g.node("Concat", cs, ["c_n"], axis=0)
    return x, h_n, c_n


def to_onnx(model: LSTM | SequenceModel, path, lengths: bool = False, metadata=None) -> Path:
    """Write ``model`` (an ``lstmkit.LSTM`` or a ``SequenceModel``) to the ONNX file ``path``
    (see the module docstring for the graph's inputs and outputs). ``lengths``: add the
    ``lengths`` input. ``metadata``: str -> str pairs stored as ``metadata_props``."""
    onnx = _need("onnx")
    seq = isinstance(model, SequenceModel)
    lstm = model.lstm if seq else model
    require_plain(lstm, "to_onnx")
    if lstm.proj_size:
        raise ConversionError(
            f"to_onnx: ONNX's LSTM operator has no projection; this LSTM has "
            f"proj_size={lstm.proj_size}"
        )
    TP, h = onnx.TensorProto, onnx.helper
    g = _Graph(onnx)
    emb = seq and model.embedding is not None
    if emb:  # token ids (B, T) -> (B, T, E)
        x_info = h.make_tensor_value_info("input", TP.INT64, ["batch", "time"])
        table = g.const("embedding", model.embedding.weight.float())
        (x,) = g.node("Gather", [table, "input"], ["embedded"], axis=0)
    else:
        dims = ["batch", "time"] if lstm.batch_first else ["time", "batch"]
        x_info = h.make_tensor_value_info("input", TP.FLOAT, [*dims, lstm.input_size])
        x = "input"
    if lstm.batch_first:
        (x,) = g.node("Transpose", [x], ["input_tm"], perm=[1, 0, 2])
    inputs = [x_info]
    lens = ""
    if lengths:
        inputs.append(h.make_tensor_value_info("lengths", TP.INT64, ["batch"]))
        (lens,) = g.node("Cast", ["lengths"], ["lengths_i32"], to=TP.INT32)
    y, _, _ = _lstm_layers(g, lstm, x, lens)
    if lstm.batch_first:
        (y,) = g.node("Transpose", [y], ["out_bf"], perm=[1, 0, 2])
    D = 2 if lstm.bidirectional else 1
    out_dims = ["batch", "time"] if lstm.batch_first else ["time", "batch"]
    width = D * lstm.hidden_size
    if seq:  # the Linear head over every step
        width = model.head.out_features
        (y,) = g.node("MatMul", [y, g.const("head_weight_t", model.head.weight.T.float())], ["z"])
        g.node("Add", [y, g.const("head_bias", model.head.bias.float())], ["output"])
    else:
        g.node("Identity", [y], ["output"])
    states = [lstm.num_layers * D, "batch", lstm.hidden_size]
    outputs = [
        h.make_tensor_value_info("output", TP.FLOAT, [*out_dims, width]),
        h.make_tensor_value_info("h_n", TP.FLOAT, states),
        h.make_tensor_value_info("c_n", TP.FLOAT, states),
    ]
    graph = h.make_graph(g.nodes, type(model).__name__, inputs, outputs, g.inits)
    proto = h.make_model(
        graph,
        opset_imports=[h.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="lstmkit",
        producer_version=__version__,
    )
    if metadata:
        h.set_model_props(proto, {str(k): str(v) for k, v in metadata.items()})
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    if not path.parent.is_dir():
        raise ConversionError(f"to_onnx: directory {path.parent} does not exist")
    atomic_write(path, proto.SerializeToString())
    return path


def export_run(run, path=None, lengths: bool = False) -> Path:
    """Write a run's model to ONNX (default RUN/model.onnx) with what prediction needs as
    ``metadata_props``: its config, task facts and scaler."""
    from lstmkit.config import to_dict

    meta = {
        "lstmkit.format_version": FORMAT_VERSION,
        "lstmkit.version": __version__,
        "lstmkit.config": json.dumps(to_dict(run.config)),
        "lstmkit.task": json.dumps(run.task.to_dict()),
        "lstmkit.scaler": json.dumps(run.scaler.to_dict()),
    }
    return to_onnx(run.model, path or Path(run.path) / "model.onnx", lengths, meta)


class OnnxModel:
    """An onnxruntime session called like a model: x (B, T, ·) tensor -> output tensor."""

    def __init__(self, session) -> None:
        self.session = session
        self.names = [i.name for i in session.get_inputs()]

    def __call__(self, x: Tensor, lengths=None) -> Tensor:
        feed = {"input": x.detach().cpu().numpy()}
        if x.is_floating_point():
            feed["input"] = feed["input"].astype("float32")
        if "lengths" in self.names:
            n = torch.full((x.size(0),), x.size(1)) if lengths is None else lengths
            feed["lengths"] = torch.as_tensor(n, dtype=torch.int64).numpy()
        elif lengths is not None:
            raise ConversionError("this ONNX model was exported without a lengths input")
        return torch.from_numpy(self.session.run(["output"], feed)[0])

    def eval(self) -> OnnxModel:
        return self


def load_onnx_run(path):
    """A :class:`~lstmkit.checkpoint.Run` whose model is the ONNX file ``path`` (written by
    :func:`export_run`) in onnxruntime; config, task and scaler come from its metadata."""
    from lstmkit.checkpoint import Run
    from lstmkit.config import from_dict
    from lstmkit.errors import RunDirError
    from lstmkit.scaling import Scaler

    ort = _need("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"ONNX file {path} does not exist (write one with `lstmkit export`)")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes for every kind of bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunDirError(f"{path} is not a loadable ONNX model ({first})") from None
    meta = session.get_modelmeta().custom_metadata_map
    version = meta.get("lstmkit.format_version")
    if version != FORMAT_VERSION:
        raise RunDirError(
            f"{path} has lstmkit.format_version {version!r} in its metadata; this lstmkit "
            f"reads {FORMAT_VERSION!r} (export the run with `lstmkit export`)"
        )
    try:
        cfg = from_dict(json.loads(meta["lstmkit.config"]), source=str(path))
        task = TaskFacts.from_dict(json.loads(meta["lstmkit.task"]), str(path))
        scaler = Scaler.from_dict(json.loads(meta["lstmkit.scaler"]))
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{path} has incomplete or invalid lstmkit metadata: {e}") from None
    return Run(path, cfg, task, OnnxModel(session), scaler)


# -- int8 dynamic quantization ------------------------------------------------------------------


class _TorchSequenceModel(nn.Module):
    """A SequenceModel on ``torch.nn`` modules only (what quantize_dynamic can swap)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.embedding = model.embedding
        self.lstm = to_torch(model.lstm)
        self.head = model.head

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is not None:
            x = self.embedding(x)
        return self.head(self.lstm(x)[0])


def quantize_int8(model: LSTM | SequenceModel) -> nn.Module:
    """An int8 dynamically quantized copy for CPU inference: weights of the LSTM (through
    :func:`~lstmkit.convert.to_torch`) and of the Linear head stored as int8, activations
    quantized on the fly, via ``torch.ao.quantization.quantize_dynamic`` (deprecated by
    PyTorch in favour of torchao, still present in torch 2.13). An LSTM gives an
    ``nn.LSTM``-like module; a SequenceModel one mapping x (B, T, I) to (B, T, O)."""
    from torch.ao.quantization import quantize_dynamic

    if isinstance(model, SequenceModel):
        if model.lstm.proj_size:
            raise ConversionError("quantize_int8: torch's dynamic quantized LSTM has no proj_size")
        float_model = _TorchSequenceModel(model)
    else:
        float_model = to_torch(model)
        if model.proj_size:
            raise ConversionError("quantize_int8: torch's dynamic quantized LSTM has no proj_size")
    # quantize_dynamic swaps children only: wrap, so that a bare nn.LSTM is swapped too
    box = nn.Sequential(float_model.float().eval())
    return quantize_dynamic(box, {nn.LSTM, nn.Linear}, dtype=torch.qint8)[0]
