"""The native backend: the per-step recurrences in C++ (``lstm_native.cpp``), compiled at first use.

In float32 on CPUs with AVX-512 every product runs on the extension's own register tiles
(``tiles.h``): W_hh packed once per call, the gate math finished in each tile's epilogue, one
parallel region for the whole time loop, and the big products before and after the loop
(the input projection, the input and weight gradients: :meth:`NativeLoops.mm`) on the same
tiles. Elsewhere (float64, a projection, other CPUs) the C++ loop calls BLAS directly for the
per-step GEMMs (below a batch size that grows with H, its own threaded matrix-vector loops
instead, see ``small_batch``) and runs the gate math as vectorised loops. Either way a step
costs no tensor creation and no dispatcher round trip; the frame around the loops is shared
with ``fused`` (see :mod:`lstmkit.backends._bptt`).

The extension is built with ``torch.utils.cpp_extension.load`` into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``) under a name that
hashes the source, the flags, the torch version and the CPU's feature flags, so an edit or a
different machine rebuilds instead of loading a stale or illegal binary. The first build
prints one line on stderr (it takes ~30 s); ``python -m lstmkit.backends.native`` builds it
ahead of time (the Makefile's set-up does). Where it cannot be built (no compiler, no ninja)
asking for ``native`` by name raises :class:`~lstmkit.errors.BackendError`; ``auto`` then
picks ``fused`` and says why. :func:`pending` answers queries without building.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

import torch

from lstmkit.backends import _bptt, lacking
from lstmkit.errors import BackendError

_SOURCE = Path(__file__).with_name("lstm_native.cpp")
_HEADERS = (Path(__file__).with_name("tiles.h"),)  # included by the source
# bfloat16: inference on bfloat16 tiles, else in float32 (see ``run``)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# The variants the C++ loops run (see lstmkit.variants); the others are refused by name.
_FEATURES = frozenset(
    ("layer_norm", "peephole", "coupled", "cell_clip", "recurrent_dropout", "zoneout")
)

_ext = None  # the loaded extension module
_error: str | None = None  # why the build failed, once it has (so it is tried only once)

NOTICE = "lstmkit: building the native CPU kernel (once, ~30 s)…"


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


# -O3 and fast math that keeps IEEE results; -fopenmp: at::parallel_for is inline and runs
# serially where _OPENMP is undefined. -march=native: the cache key includes the CPU flags,
# so the binary never moves machines.
_FLAGS = ["-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp"]
if platform.machine() in ("x86_64", "AMD64"):
    _FLAGS.append("-march=native")


def _name() -> str:
    """The extension's name: a hash of everything the binary depends on, so that an edit, a
    new torch or Python, or another CPU builds afresh instead of loading a stale binary; and
    of the source's path, so that two checkouts sharing one cache do not rebuild each other's
    (the build file names the source, and ninja rebuilds when that line changes)."""
    texts = [f.read_text() for f in (_SOURCE, *_HEADERS)]
    parts = [*texts, str(_SOURCE), *_FLAGS, torch.__version__, sys.version]
    key = "\n".join([*parts, _cpu_flags()])
    return "lstmkit_native_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def build_dir() -> Path:
    """Where the extension is built and cached: ``$TORCH_EXTENSIONS_DIR`` if set, else
    torch's default extension root (``~/.cache/torch_extensions``), then its name."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / _name()


def is_built() -> bool:
    """Whether the compiled extension is loaded or waiting in the cache (nothing is built)."""
    return _ext is not None or (build_dir() / f"{_name()}.so").is_file()


def _build():
    """Compile (or load from the cache) the extension; raises if it cannot."""
    from torch.utils import cpp_extension

    where = build_dir()
    if not is_built():  # a compile, not a cache hit: say so, as it takes a while
        if shutil.which(_compiler()) is None:  # fail before torch's long compiler warning
            raise RuntimeError(f"no C++ compiler: {_compiler()!r} is not on PATH (set CXX)")
        print(NOTICE, file=sys.stderr, flush=True)
    where.mkdir(parents=True, exist_ok=True)
    # ninja may sit beside the interpreter of an unactivated venv; let the build find it.
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path])
    try:
        return cpp_extension.load(
            name=where.name,
            sources=[str(_SOURCE)],
            extra_cflags=_FLAGS,
            extra_ldflags=["-fopenmp"],
            build_directory=str(where),
            verbose=False,
        )
    finally:
        os.environ["PATH"] = path


def _compiler() -> str:
    return os.environ.get("CXX") or "c++"


def prepare():
    """Build (or load from the cache) the extension once and return it; raise
    :class:`~lstmkit.errors.BackendError` naming the backend and the missing compiler or
    the build's error where it cannot be built (remembered: later calls raise at once)."""
    global _ext, _error
    if _ext is None and _error is None:
        try:
            _ext = _build()
        except Exception as e:  # any build failure: the backend cannot run on this machine
            last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            _error = f"{type(e).__name__}: {last}"
    if _ext is None:
        raise BackendError(
            f"backend 'native' cannot be built on this machine: it needs a working C++ "
            f"compiler ({_compiler()}) and ninja, and the build failed ({_error}); "
            "backend 'auto' runs 'fused' instead"
        )
    return _ext


load = prepare  # the extension, built on first call (the name tests and benchmarks use)


def failed() -> str | None:
    """Why the build failed, if it was tried and did (never builds)."""
    return _error


def pending() -> str | None:
    """What the first run still has to do (None: nothing); raises BackendError if the build
    was tried and failed. Never builds: for queries such as ``LSTM.backend_choice``."""
    if _error is not None:
        prepare()  # raises the remembered failure
    return None if is_built() else "not built yet; builds on first use"


def release_pool() -> int:
    """Free the big result blocks (gates, states, gradients of T·B rows) that the native
    kernels keep for reuse once their tensors are gone: a training loop asks for the same
    sizes every step, and fresh pages cost a page fault each. At most 1 GB is kept; returns
    the bytes freed (0 when the extension is not loaded)."""
    return 0 if _ext is None else int(_ext.drop_pool())


def available() -> bool:
    """Whether the extension is built or can be (builds it on first call; never raises)."""
    try:
        prepare()
    except BackendError:
        return False
    return True


def _version(t) -> int:
    """t's version counter, or -1 for an inference tensor (made under torch.inference_mode,
    e.g. a model built there), which has none: the packed-weight cache lives for one layer
    call, in which nothing writes the weights."""
    return -1 if t.is_inference() else t._version


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


class _Slots(threading.local):
    """Buffers for packed weights, kept between calls (per thread): packing a weight costs
    less than the page faults of a fresh buffer of its size. A slot is lent to one NativeLoops
    at a time (the layers of a model run one after another); the next borrower packs over it,
    and the previous one's ``holds`` turns false, so it packs again rather than read another
    weight. Buffers above KEEP_BYTES are not kept."""

    KEEP_BYTES = 32 << 20

    def __init__(self):
        self.slots = {}  # name -> (buffer, borrower)

    def holds(self, name, who, packed) -> bool:
        buf, owner = self.slots.get(name, (None, None))
        return owner is who and buf is packed

    def fill(self, name, who, pack):
        """pack(buffer or None) into the slot's buffer; the result is lent to ``who``."""
        out = pack(self.slots.get(name, (None, None))[0])
        if out is not None and out.numel() * out.element_size() <= self.KEEP_BYTES:
            self.slots[name] = (out, who)
        else:
            self.slots.pop(name, None)
        return out


_SLOTS = _Slots()


class NativeLoops:
    """The Loops protocol of :mod:`._bptt` over the C++ extension."""

    name = "native"  # for lstmkit::lstm_layer (see ._ops)

    def __init__(self, ext):
        self.ext = ext
        self._packed = {}  # weights packed for the C++ tiles, once per layer call
        self._tiles = ext is not None and ext.has_tiles()

    def _packed_once(self, key, slot: str, pack):
        """What ``pack(buffer)`` returns, packed once per layer call into the slot's buffer
        (see _Slots); packed again if another layer's call has taken the slot since."""
        hit = self._packed.get(key)
        if hit is not None and _SLOTS.holds(slot, self, hit):
            return hit
        packed = _SLOTS.fill(slot, self, pack)
        self._packed[key] = packed
        return packed

    def _pack(self, w_hh, xg, backward: bool):
        """W_hh in the tiles' layout (None where the tiles do not apply, or where a forward of
        so few rows, T·B of ``xg``, would not win back the packing), packed once for all the
        chunks of an inference call and once for the backward."""
        batch = xg.shape[1]
        if not (backward or self._pays(w_hh, xg)):
            return None
        key = (backward, batch, w_hh.data_ptr(), _version(w_hh))
        slot = "units" if backward else "gates"
        return self._packed_once(key, slot, lambda buf: self.ext.pack(w_hh, batch, backward, buf))

    def _pays(self, w_hh, xg) -> bool:
        """Whether packing W_hh pays for a forward over xg's T·B rows (see ``pack_pays``)."""
        return self.ext.pack_pays(xg.shape[0] * xg.shape[1], xg.shape[1], w_hh.numel(), False)

    def _var_pack(self, w, buf):
        """The variants' per-step weight (W_hh^T forward, W_hh backward) packed for the tiles,
        or None where they do not apply (see ``tiles_for`` in the C++)."""
        batch = buf.shape[1]
        if not (self._tiles and buf.dtype == torch.float32):
            return None
        if not self.ext.tiles_for(batch, w.numel()):
            return None
        key = ("var", w.data_ptr(), _version(w), tuple(w.stride()))
        return self._packed_once(key, "weight_hh", lambda b: self.ext.pack_rhs(w, b))

    def mm(self, a, b, bias=None, reuse=False):
        """a @ b (+ bias) on the C++ tiles for float32 products big enough to pay for packing
        b (with ``reuse``, packed once per layer call); torch (BLAS) otherwise. Below 48
        columns most of a 64-column panel would be padding (packing a long b four times
        its size), so those stay with BLAS. Too few rows of a to win back the packing (see
        ``pack_pays``), with b a transposed weight (the input projection's W_ih^T), take dot
        products along the weight's rows instead (``mm_rows``)."""
        M, K = a.shape
        N = b.shape[1]
        # a tiny product is all call overhead whoever runs it: BLAS, with the fewest checks
        if not (self._tiles and a.dtype == torch.float32 and M * N * K >= 1 << 18):
            return _bptt.mm(a, b, bias)
        rows_of_w = b.stride(0) == 1 and b.stride(1) == K and a.is_contiguous()  # W (N, K) as is
        if rows_of_w and not self.ext.pack_pays(M, M, N * K, True):
            return self.ext.mm_rows(a, b.t(), bias)
        if not (M >= 16 and N >= 48):
            return _bptt.mm(a, b, bias)
        return self.ext.mm_packed(a, self._packed_rhs(b, reuse), N, bias)

    def _packed_rhs(self, b, reuse: bool):
        """b packed for mm_packed: with ``reuse`` once per layer call, else in the scratch slot."""
        if reuse:
            key = ("rhs", b.data_ptr(), _version(b), tuple(b.shape), tuple(b.stride()))
            return self._packed_once(key, "weight", lambda buf: self.ext.pack_rhs(b, buf))
        return _SLOTS.fill("rhs", self, lambda buf: self.ext.pack_rhs(b, buf))

    def empty(self, shape, like):
        """A buffer from the extension's pool of big blocks (see ``release_pool``)."""
        if self.ext is None:  # traced code: the custom op allocates when it runs
            return _bptt.empty(shape, like)
        return self.ext.empty_big(list(shape), like)

    def forward(self, xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex=None):
        w_hr = _contig(w_hr)
        if ex is not None:
            w_hh = w_hh.contiguous()
            packed = self._var_pack(w_hh.t(), xg)
            res = self.ext.forward_var(
                xg, h0, c0, w_hh, w_hr, mask, reverse, save, *_variant_args(ex), packed
            )
            if not save:
                return res[0], res[1], None, None, None, {}
            aux = {k: t for k, t in zip(_AUX, res[5:], strict=True) if t is not None}
            return (*res[:5], aux)
        w_hh = w_hh.contiguous()
        packed = None if w_hr is not None else self._pack(w_hh, xg, False)
        res = self.ext.forward(xg, h0, c0, w_hh, w_hr, mask, reverse, save, packed)
        if not save:
            return res[0], res[1], None, None, None
        return tuple(res)

    def backward(self, dout, dh_n, dc_n, gates, cbuf, tc, r, w_hh, w_hr, mask, reverse, ex=None,
                 aux=None, dcs=None):  # fmt: skip
        dh_n, dc_n, w_hr, w_hh = _contig(dh_n), _contig(dc_n), _contig(w_hr), w_hh.contiguous()
        args = (dout, dh_n, dc_n, gates, cbuf, tc, w_hh, w_hr, mask, reverse)
        if ex is None:
            packed = None if w_hr is not None else self._pack(w_hh, gates, True)
            return tuple(self.ext.backward(*args, _contig(dcs), packed))
        saved = [aux.get(k) for k in _AUX]
        packed = self._var_pack(w_hh, gates)
        dG, dht, dh, dc, *grads = self.ext.backward_var(
            *args, *_variant_args(ex), *saved, _contig(dcs), packed
        )
        names = ("dgh", "dpeep", "dg_hh", "dg_c", "db_c")
        return dG, dht, dh, dc, {k: g for k, g in zip(names, grads, strict=True) if g is not None}

    def norm_rows(self, v, gain, shift, save):
        y, vhat, rstd = self.ext.norm_rows(v.contiguous(), gain.contiguous(), _contig(shift), save)
        return y, vhat, rstd

    def norm_rows_backward(self, dy, gain, vhat, rstd):
        return tuple(self.ext.norm_rows_backward(dy.contiguous(), gain.contiguous(), vhat, rstd))


class _Bf16Loops(NativeLoops):
    """Inference in bfloat16 on the bfloat16 tiles: W_ih and W_hh packed as pairs of bfloat16,
    products accumulated in float32 (AVX-512 BF16's vdpbf16ps, twice an FMA's multiply-adds);
    the gates, the cell state and h in float32, h read by the next step's product as bfloat16.
    W_hh is packed whatever the input's length (the alternative widens it first); only where
    the tiles are off does the step run the float32 loops on a widened W_hh."""

    def mm(self, a, b, bias=None, reuse=False):
        M, K = a.shape
        N = b.shape[1]
        pairs = a.dtype == b.dtype == torch.bfloat16 and K % 2 == 0 and b.stride(0) == 1
        if not (pairs and N >= 48 and b.stride(1) % 2 == 0):
            return _bptt.mm(a.float(), b.float(), bias)
        return self.ext.mm_packed(a, self._packed_rhs(b, reuse), N, bias)

    def _pays(self, w_hh, xg) -> bool:
        return True  # the alternative widens W_hh to float32 first: pack it whatever the size

    def forward(self, xg, h0, c0, w_hh, w_hr, mask, reverse, save, ex=None):
        packed = self._pack(w_hh, xg, False)
        if packed is None:
            return super().forward(xg, h0, c0, w_hh.float(), w_hr, mask, reverse, save, ex)
        res = self.ext.forward(xg, h0, c0, w_hh.contiguous(), None, mask, reverse, False, packed)
        return res[0], res[1], None, None, None


def has_bf16_tiles() -> bool:
    """Whether bfloat16 inference runs on the bfloat16 tiles here: the loaded extension's
    answer, or before it is built the CPU's flags (AVX-512 F and BF16); never builds."""
    if _ext is not None:
        return bool(_ext.has_bf16_tiles())
    flags = f" {_cpu_flags()} "
    return " avx512f " in flags and " avx512_bf16 " in flags


def _bf16_tiles_apply(x, tensors, weight_hr, extras, cells) -> bool:
    """Whether this bfloat16 call is inference the bfloat16 tiles run (no gradient to keep,
    no variants or projection, even sizes so that pairs of bfloat16 line up)."""
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    plain = extras is None and weight_hr is None and not cells
    even = x.size(-1) % 2 == 0 and tensors[4].size(1) % 2 == 0
    return not grad and plain and even and not torch.compiler.is_compiling() and has_bf16_tiles()


def run(
    x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse, extras=None,
    cells=False,
):  # fmt: skip
    """One layer, one direction; see :mod:`lstmkit.backends` for shapes and semantics.

    x (T, B, I), h0 (B, P or H), c0 (B, H) -> out (T, B, P or H), h_n, c_n (and with
    ``cells`` every step's c_t (T, B, H)).
    Builds the extension on the first eager call (traced code leaves that to the custom op).
    bfloat16 inference (nothing to differentiate, no variants or projection, even sizes) runs
    on the bfloat16 tiles where the CPU has AVX-512 BF16 (:class:`_Bf16Loops`). Otherwise
    bfloat16 runs in float32: the inputs, weights and states are widened on the way in (a
    differentiable cast, so the gradients come back in bfloat16) and the results rounded to
    bfloat16 on the way out; products, gates and the state update are float32 throughout.
    """
    if x.dtype == torch.bfloat16:
        tensors = (x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
        if _bf16_tiles_apply(x, tensors, weight_hr, extras, cells):
            return _bf16_inference(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, lengths,
                                   reverse)  # fmt: skip
        return _in_float32(
            x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, lengths, reverse,
            extras, cells,
        )  # fmt: skip
    # Traced code needs only the loops' name (the op loads the extension when it runs); not
    # reading _ext there keeps a guard on it, and a recompile once it is loaded, away.
    ext = None if torch.compiler.is_compiling() else prepare()
    return _bptt.run_with(
        NativeLoops(ext), x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
        lengths, reverse, extras, cells,
    )  # fmt: skip


def _bf16_inference(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    """:func:`run` of bfloat16 inference on the bfloat16 tiles (:class:`_Bf16Loops`); the
    states start and the biases add in float32, the results are rounded to bfloat16."""
    wide = (None, None) if b_ih is None else (b_ih.float(), b_hh.float())
    res = _bptt.run_with(
        _Bf16Loops(prepare()), x, h0.float(), c0.float(), w_ih, w_hh, *wide, None, lengths,
        reverse,
    )  # fmt: skip
    return tuple(r.to(torch.bfloat16) for r in res)


def _in_float32(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, reverse, extras, cells):
    """:func:`run` of bfloat16 tensors in float32, results back in bfloat16."""

    def wide(t):
        return t.float() if isinstance(t, torch.Tensor) else t

    if extras is not None:
        ln = None if extras.layer_norm is None else tuple(wide(t) for t in extras.layer_norm)
        extras = dataclasses.replace(
            extras, peephole=wide(extras.peephole), layer_norm=ln, h_mask=wide(extras.h_mask),
            zoneout_c=wide(extras.zoneout_c), zoneout_h=wide(extras.zoneout_h),
        )  # fmt: skip
    tensors = (wide(t) for t in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    res = run(*tensors, lengths, reverse, extras, cells)
    return tuple(r.to(torch.bfloat16) for r in res)
