"""Bad input to lstmkit.LSTM raises an error naming what was expected and what arrived."""

import pytest
import torch

import lstmkit

M = {"input_size": 3, "hidden_size": 4, "num_layers": 2}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"hidden_size": 0}, ValueError, "hidden_size must be a positive integer, got 0"),
        ({"hidden_size": -2}, ValueError, "hidden_size must be a positive integer, got -2"),
        ({"input_size": 2.5}, ValueError, "input_size must be a positive integer, got 2.5"),
        ({"num_layers": 0}, ValueError, "num_layers must be a positive integer, got 0"),
        ({"dropout": 1.5}, ValueError, "dropout must be a number in [0, 1], got 1.5"),
        ({"dropout": -0.1}, ValueError, "dropout must be a number in [0, 1], got -0.1"),
        ({"proj_size": 4}, ValueError, "proj_size must be smaller than hidden_size (4), got 4"),
        ({"proj_size": -1}, ValueError, "proj_size must be >= 0, got -1"),
        ({"backend": "cuda-magic"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_constructor(kwargs, error, message):
    with pytest.raises(error) as e:
        lstmkit.LSTM(**{**M, **kwargs})
    assert message in str(e.value)


def _call(x, hx=None, lengths=None, **kw):
    return lstmkit.LSTM(**{**M, **kw})(x, hx, lengths=lengths)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: _call(torch.randn(5, 2, 7)), ValueError, "input.size(-1) must be 3, got 7"),
        (lambda: _call(torch.randn(5)), ValueError, "input must be 3-D (T, B, I)"),
        (lambda: _call(torch.randn(1, 5, 2, 3)), ValueError, "got 4-D with shape (1, 5, 2, 3)"),
        (lambda: _call(torch.ones(5, 2, 3, dtype=torch.long)), TypeError, "floating-point"),
        (lambda: _call([[1.0, 2.0, 3.0]]), TypeError, "input must be a Tensor or PackedSequence"),
        (lambda: _call(torch.randn(0, 2, 3)), ValueError, "at least one step"),
        (
            lambda: _call(torch.randn(5, 2, 3), (torch.zeros(2, 2, 5), torch.zeros(2, 2, 4))),
            ValueError,
            "h_0 must have shape (2, 2, 4), got (2, 2, 5)",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4))),
            ValueError,
            "c_0 must have shape (2, 2, 4), got (1, 2, 4)",
        ),
        (
            lambda: _call(torch.randn(5, 3), (torch.zeros(2, 1, 4), torch.zeros(2, 4))),
            ValueError,
            "h_0 must have shape (2, 4), got (2, 1, 4)",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), torch.zeros(2, 2, 4)),
            TypeError,
            "hx must be a tuple",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), lengths=[5, 6]),
            ValueError,
            "lengths must be at most the sequence length 5, got max 6",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), lengths=[5, 0]),
            ValueError,
            "lengths must be positive, got min 0",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), lengths=[5, 2, 3]),
            ValueError,
            "lengths must have shape (2,), one per sequence, got (3,)",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), lengths=torch.tensor([1.5, 2.0])),
            TypeError,
            "lengths must hold integers, got dtype torch.float32",
        ),
        (
            lambda: _call(torch.randn(5, 2, 3), lengths=["a", 2]),
            TypeError,
            "lengths must be a sequence of integers",
        ),
        (
            lambda: _call(torch.nn.utils.rnn.pack_sequence([torch.randn(3, 3)]), lengths=[3]),
            ValueError,
            "lengths must be None when input is a PackedSequence",
        ),
    ],
)
def test_bad_forward(call, error, message):
    with pytest.raises(error) as e:
        call()
    assert message in str(e.value)


def test_backend_by_name_that_cannot_run_names_backend_and_feature():
    m = lstmkit.LSTM(3, 4, backend="cudnn")
    with pytest.raises(lstmkit.BackendError) as e:
        m(torch.randn(2, 1, 3))
    assert "'cudnn'" in str(e.value)
