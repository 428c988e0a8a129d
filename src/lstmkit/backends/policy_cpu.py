"""The CPU branch of ``auto``: which backend is fastest for a CPU request, and why.

Measured with ``bench/bench_cpu.py`` (fp32, one layer, H = I in 16..1024, B in 1..256,
T in 4..1000): ``native`` is never slower than ``fused`` (both share the input and weight
GEMMs; native's per-step loop has no Python or dispatcher overhead), and ``fused`` beats
``reference`` everywhere (one input GEMM, handwritten BPTT). So the order is native, fused,
reference, each taken only if it supports the request; native also needs its C++ extension,
which compiles on first use (and if it cannot, auto says so and uses fused). Deciding never
builds it: :func:`lstmkit.backends.resolve` does that, only when the choice is about to run.

Where native used to lose to torch.nn.LSTM (oneDNN) it now has its own answers rather than
another backend: in float32 on AVX-512 CPUs its own register tiles run every product at the
full vector width (MKL runs AVX2 code on AMD CPUs, half of it), with the weights packed once
per call and the gate math fused into the step product; one or two batch rows against
hidden-1024 weights keep the handwritten matrix-vector loops (BLAS's sgemv read the weights
at about half oneDNN's bandwidth on AMD); and inference projects the inputs in chunks of
steps so the gate buffer stays in cache (it cost 2-3x at small H, large B*T).

bfloat16 inference: native runs it on its bfloat16 tiles where the CPU has AVX-512 BF16
(products of bfloat16 pairs accumulated in float32, twice an FMA's work per instruction), at
every size: 0.61-1.13x nn.LSTM's bfloat16 time where fused took 1.2-9.1x (T=100 and T=4,
hidden 16-1024, batch 1-256; ``bench/bench_cpu.py --cells ... --dtype bfloat16``). bfloat16
training (and inference on CPUs without AVX-512 BF16): native computes in float32, fused in
bfloat16 products (oneDNN's AVX-512 BF16 GEMMs, half the work per product). Measured for
training at T=100 (T=4 and 20 for the biggest): fused is faster from B*H^2 = 2^22 at hidden
512 and 1024 (hidden 1024, batch 16: 166 against 182 ms; batch 256, T=4: 67 against 118;
hidden 512, batch 64: 138 against 166), native below and at hidden 256 whatever the batch
(batch 256: 180 against 202 ms; batch 64: 46 against 50): BF16_FUSED_WORK and
BF16_FUSED_HIDDEN.
"""

from __future__ import annotations


def _size(req) -> str:
    proj = f" P={req.P}" if req.P else ""
    var = f", variants {'+'.join(sorted(req.features))}" if req.features else ""
    from lstmkit.backends import shown

    dtype = str(req.dtype).replace("torch.", "")
    return f"cpu {dtype}, T={shown(req.T)} B={shown(req.B)} H={req.H}{proj}{var}"


BF16_FUSED_WORK = 1 << 22  # B * H^2 from which bfloat16 training goes to fused (see above)
BF16_FUSED_HIDDEN = 512  # ... at this hidden size and above

# Answers already given, by (request, native's build failure): the policy is a function of
# those two, and a small forward should not pay for deciding again (~10 us, as much as the
# step loop at H=16). Bounded: each new length is a new request.
_ANSWERS: dict = {}
_ANSWERS_MAX = 512


def auto_cpu(req) -> tuple[str, str]:
    """(backend name, reason) for a request with ``req.device_type == "cpu"``."""
    import torch

    from lstmkit.backends import native

    if torch.compiler.is_compiling():  # traced code: no global state to guard on
        return _decide(req)
    key = (req, native.failed())
    answer = _ANSWERS.get(key)
    if answer is None:
        if len(_ANSWERS) >= _ANSWERS_MAX:
            _ANSWERS.clear()
        answer = _ANSWERS[key] = _decide(req)
    return answer


def _decide(req) -> tuple[str, str]:
    """auto_cpu without the memo."""
    import torch

    from lstmkit.backends import fused, native, reference

    work = "training" if req.needs_grad else "inference"
    # (traced code keeps native: comparing a symbolic batch would specialise the graph to it)
    big = not torch.compiler.is_compiling() and req.B * req.H**2 >= BF16_FUSED_WORK
    big = big and req.H >= BF16_FUSED_HIDDEN
    tiles = not req.needs_grad and native.has_bf16_tiles()  # bfloat16 inference, natively
    if req.dtype == torch.bfloat16 and big and not tiles and fused.unsupported(req) is None:
        return "fused", (
            f"fused: {_size(req)}, {work}; bfloat16 products (AVX-512 BF16 GEMMs) measured "
            "faster than native's float32 from B*H^2 = 2^22 at hidden 512 and above"
        )
    if native.unsupported(req) is None:
        if native.failed() is None:  # built, or not tried yet (never built by a query)
            return "native", (
                f"native: {_size(req)}, {work}; the C++ step loop measured fastest on CPU "
                "at every size (no per-step Python or dispatch overhead)"
            )
        fallback = f"native could not be built ({native.failed()}); "
    else:
        fallback = f"native does not support {native.unsupported(req)}; "
    if fused.unsupported(req) is None:
        return "fused", (
            f"fused: {_size(req)}, {work}; {fallback}fused (one input GEMM, handwritten BPTT) "
            "is the next fastest"
        )
    why = fused.unsupported(req)
    assert reference.unsupported(req) is None
    return "reference", f"reference: {_size(req)}; {fallback}fused does not support {why}"
