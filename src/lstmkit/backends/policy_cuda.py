"""The CUDA half of ``auto``: cuDNN or the persistent Triton kernels, by dtype and size.

The boundaries are the cells where Triton measured faster than cuDNN, forward and
forward+backward, on an H200 (``bench/gpu_results.md``, 1000 steps, the current kernels):

- bfloat16, hidden 256-512, batch <= 64: Triton 0.36-0.74x cuDNN's time (1.3-1.9x at hidden
  1024: cuDNN).
- float32 with TF32 allowed, hidden 256 (up to, not including, 512), batch <= 64: 0.53-0.82x
  (hidden 512 measured 1.03-1.34x, hidden 128 1.55-2.3x, batch 256 1.1-1.6x: cuDNN).
- float32 without TF32: cuDNN (Triton's 3xTF32 dots measured 1.6-7.9x cuDNN's time), and every
  size not measured above: cuDNN, which is the well-known default.

A request with variants (``req.features``) never goes to cuDNN, which has none: Triton when it
runs them (any size: the alternative is a Python loop), else ``fused``.

"TF32 allowed" is decided as nn.LSTM's cuDNN path decides it (``triton.tf32_enabled``: the
cuDNN RNN flag, on by default in torch), so both contestants run the same arithmetic.
"""

from __future__ import annotations

import torch


def auto_cuda(req) -> tuple[str, str]:
    """(backend name, reason) for a request on a CUDA device."""
    from lstmkit.backends import shown, unsupported

    why = unsupported("triton", req)
    if req.cell_states:  # cuDNN returns only the last cell state
        if why is None:
            return (
                "triton",
                "cuda: return_cell_states (cudnn gives only the last c; triton keeps all)",
            )
        return (
            "fused",
            f"cuda: return_cell_states (cudnn gives only the last c; triton cannot run {why})",
        )
    if req.features:  # cuDNN runs only the plain LSTM
        feats = ", ".join(sorted(req.features))
        if why is None:
            return "triton", f"cuda: variants {feats} (cudnn has none; triton runs them)"
        return "fused", f"cuda: variants {feats} (cudnn has none; triton cannot run {why})"
    if why is not None:
        return "cudnn", f"cuda: triton cannot run this ({why})"
    size = f"hidden {req.H}, batch {shown(req.B)}"
    if req.dtype == torch.bfloat16 and 256 <= req.H <= 512 and req.B <= 64:
        return "triton", f"cuda: bfloat16 at {size} (triton measured faster on H200)"
    from lstmkit.backends.triton import tf32_enabled

    if req.dtype == torch.float32 and not tf32_enabled():
        return "cudnn", "cuda: float32 without TF32 (cuDNN measured faster on H200)"
    if req.dtype == torch.float32 and 256 <= req.H < 512 and req.B <= 64:
        return "triton", f"cuda: float32 with TF32 at {size} (triton measured faster on H200)"
    return "cudnn", f"cuda: {req.dtype} at {size}, outside where triton measured faster"
