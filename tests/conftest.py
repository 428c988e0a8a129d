"""Test-wide settings. The tests use tiny tensors, where a second intra-op thread only adds
synchronisation (and stalls badly when the 2 cores are shared); results do not depend on it."""

import os
import shutil

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
