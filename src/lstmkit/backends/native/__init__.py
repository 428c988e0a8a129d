"""The native backend: the per-step recurrences in C++ (``lstm_native.cpp``), compiled at first use.

The C++ loop calls BLAS directly for the per-step GEMMs (below a batch size that grows with H,
its own threaded matrix-vector loops instead, see ``small_batch``) and runs the gate math as
vectorised loops, so a step costs no tensor creation and no dispatcher round trip; the big
GEMMs before and after the loop are shared with ``fused`` (see :mod:`lstmkit.backends._bptt`).

The extension is built with ``torch.utils.cpp_extension.load`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) under a name that
hashes the source, the flags, the torch version and the CPU's feature flags, so an edit or a
different machine rebuilds instead of loading a stale or illegal binary. Where it cannot be
built (no compiler, no ninja) the backend runs ``fused`` instead and warns once.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path

import torch

from lstmkit.backends import _bptt, fused, lacking

_SOURCE = Path(__file__).with_name("lstm_native.cpp")
_DTYPES = (torch.float32, torch.float64)
# The variants the C++ loops run (see lstmkit.variants); the others are refused by name.
_FEATURES = frozenset(
    ("layer_norm", "peephole", "coupled", "cell_clip", "recurrent_dropout", "zoneout")
)

_ext = None  # the loaded extension module
_error: str | None = None  # why the build failed, once it has (so we warn and try only once)


def unsupported(req) -> str | None:
    if req.device_type != "cpu":
        return f"device {req.device_type}"
    if req.dtype not in _DTYPES:
        return f"dtype {req.dtype}"
    return lacking(req, _FEATURES)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build():
    """Compile (or load from the cache) the extension; raises if it cannot."""
    from torch.utils import cpp_extension

    source = _SOURCE.read_text()
    # -march=native: the cache key includes the CPU flags, so the binary never moves machines.
    # -fopenmp: at::parallel_for is inline and runs serially where _OPENMP is undefined.
    flags = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    key = "\n".join([source, *flags, torch.__version__, _cpu_flags()])
    name = "lstmkit_native_" + hashlib.sha256(key.encode()).hexdigest()[:16]
    # ninja may sit beside the interpreter of an unactivated venv; let the build find it.
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        return cpp_extension.load(
            name=name,
            sources=[str(_SOURCE)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path


def load():
    """The compiled extension, or None where it cannot be built (then it warns, once)."""
    global _ext, _error
    if _ext is None and _error is None:
        try:
            _ext = _build()
        except Exception as e:  # any build failure means: run fused instead, and say so
            _error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e) else ''}"
            warnings.warn(
                f"lstmkit: the native backend could not be compiled ({_error}); "
                "running the fused backend instead",
                RuntimeWarning,
                stacklevel=2,
            )
    return _ext


# Traced code (torch.compile) asks this once, at trace time, and keeps the answer: building
# the extension is not something to trace.
@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the C++ extension is (or can be) built; compiles it on first call."""
    return load() is not None


def _contig(t):
    return None if t is None else t.contiguous()


def _variant_args(ex) -> list:
    """The C++ variant arguments from a CellExtras (see ``forward_var`` in the .cpp)."""
    ln = ex.layer_norm or (None,) * 4
    zone = []
    for z in (ex.zoneout_c, ex.zoneout_h):
        zone += [_contig(z), 0.0] if isinstance(z, torch.Tensor) else [None, float(z or 0.0)]
    return [
        _contig(ex.peephole),
        *(_contig(t) for t in ln[1:]),
        ex.coupled,
        float(ex.cell_clip or 0.0),
        _contig(ex.h_mask),
        *zone,
    ]


_AUX = ("cnew", "ghat", "grstd", "chat", "crstd")


class NativeLoops:
    """The Loops protocol of :mod:`._bptt` over the C++ extension."""

    name = "native"  # for lstmkit::lstm_layer (see ._ops)

    def __init__(self, ext):
        self.ext = ext

    def forward(self, xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex=None):
        w_hr = _contig(w_hr)
        if ex is not None:
            res = self.ext.forward_var(
                xg, h0, c0, w_hh.contiguous(), w_hr, mask, reverse, save, *_variant_args(ex)
            )
            if not save:
                return res[0], res[1], None, None, None, {}
            aux = {k: t for k, t in zip(_AUX, res[5:], strict=True) if t is not None}
            return (*res[:5], aux)
        res = self.ext.forward(xg, h0, c0, w_hh.contiguous(), w_hr, mask, reverse, save)
        if not save:
            return res[0], res[1], None, None, None
        return tuple(res)

    def backward(self, dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, ex=None,
                 aux=None):  # fmt: skip
        dh_n, dc_n, w_hr = _contig(dh_n), _contig(dc_n), _contig(w_hr)
        args = (dout, dh_n, dc_n, gates, cbuf, tc, w_hh.contiguous(), w_hr, mask, reverse)
        if ex is None:
            return tuple(self.ext.backward(*args))
        saved = [aux.get(k) for k in _AUX]
        dG, dht, dh, dc, *grads = self.ext.backward_var(*args, *_variant_args(ex), *saved)
        names = ("dgh", "dpeep", "dg_hh", "dg_c", "db_c")
        return dG, dht, dh, dc, {k: g for k, g in zip(names, grads, strict=True) if g is not None}

    def norm_rows(self, v, gain, shift, save):
        y, vhat, rstd = self.ext.norm_rows(v.contiguous(), gain.contiguous(), _contig(shift), save)
        return y, vhat, rstd

    def norm_rows_backward(self, dy, gain, vhat, rstd):
        return tuple(self.ext.norm_rows_backward(dy.contiguous(), gain.contiguous(), vhat, rstd))


def run(
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras=None
):
    """One layer, one direction; see :mod:`lstmkit.backends` for shapes and semantics.

    x (T, B, I), h0 (B, P or H), c0 (B, H) -> out (T, B, P or H), h_n, c_n.
    """
    if not available():
        return fused.run(
            x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras
        )
    return _bptt.run_with(
        NativeLoops(_ext),
        x,
        h0,
        c0,
        weight_ih,
        weight_hh,
        bias_ih,
        bias_hh,
        weight_hr,
        lengths,
        reverse,
        extras,
    )
