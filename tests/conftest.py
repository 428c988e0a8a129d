"""Test-wide settings. The tests use tiny tensors, where a second intra-op thread only adds
synchronisation (and stalls badly when the 2 cores are shared); results do not depend on it."""

import importlib
import os
import shutil
import sys

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def native_built():
    """Compile the C++ extension once (it is cached on disk after that); modules that test it
    use this fixture with autouse."""
    from lstmkit.backends import native

    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: the native backend cannot be built here")
    assert native.load() is not None, f"native extension failed to build: {native._error}"


def interpreted_triton_kernels():
    """The Triton kernel module compiled for triton's CPU interpreter. TRITON_INTERPRET=1 is
    set only while it is imported (triton reads it when the kernels are decorated) and then
    restored, so other test files in this process are unaffected; a module already compiled
    for a GPU is reloaded (useless on the CPU)."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        name = "lstmkit.backends._triton_kernels"
        if name in sys.modules and not sys.modules[name].INTERPRETED:
            return importlib.reload(sys.modules[name])
        return importlib.import_module(name)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
