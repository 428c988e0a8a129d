"""Property tests: random valid shapes agree with torch.nn.LSTM; random invalid ones raise the
documented errors; the predict argument parser takes any string without crashing."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lstmkit
from lstmkit.cli import _numbers
from lstmkit.errors import DataError

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_cases(draw):
    H = draw(st.integers(1, 6))
    return {
        "I": draw(st.integers(1, 5)),
        "H": H,
        "L": draw(st.integers(1, 3)),
        "bi": draw(st.booleans()),
        "proj": draw(st.integers(0, H - 1)),
        "bias": draw(st.booleans()),
        "bf": draw(st.booleans()),
        "T": draw(st.integers(1, 6)),
        "B": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**16)),
    }


@FAST
@given(valid_cases())
def test_random_valid_shapes_agree_with_torch(c):
    torch.manual_seed(c["seed"])
    kw = {
        "num_layers": c["L"],
        "bidirectional": c["bi"],
        "proj_size": c["proj"],
        "bias": c["bias"],
        "batch_first": c["bf"],
        "dtype": torch.float64,
    }
    theirs = torch.nn.LSTM(c["I"], c["H"], **kw)
    ours = lstmkit.LSTM(c["I"], c["H"], **kw)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(
        (c["B"], c["T"], c["I"]) if c["bf"] else (c["T"], c["B"], c["I"]), dtype=torch.float64
    )
    a, (ha, ca) = theirs(x)
    b, (hb, cb) = ours(x)
    for mine, ref in ((b, a), (hb, ha), (cb, ca)):
        torch.testing.assert_close(mine, ref, atol=1e-10, rtol=1e-10)


@FAST
@given(
    st.integers(-3, 6),
    st.integers(-3, 6),
    st.integers(-2, 3),
    st.one_of(st.floats(-1, 2), st.just(float("nan"))),
    st.integers(-2, 7),
)
def test_random_constructor_arguments_build_or_raise_the_documented_error(I, H, L, p, proj):
    try:
        m = lstmkit.LSTM(I, H, L, dropout=p, proj_size=proj)
    except ValueError as e:
        msg = str(e)
        assert "must be" in msg and "got" in msg, msg
        return
    assert I > 0 and H > 0 and L > 0 and 0 <= p <= 1 and 0 <= proj < H
    assert sum(t.numel() for t in m.parameters()) > 0


@FAST
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.integers(1, 4),
    st.integers(1, 3),
    st.lists(st.integers(-2, 8), min_size=0, max_size=4),
)
def test_random_input_shapes_run_or_raise_the_documented_error(shape, I, B, lengths):
    m = lstmkit.LSTM(I, 3)
    x = torch.randn(shape)
    try:
        out, (h, c) = m(x, lengths=lengths or None)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert "must" in msg and ("got" in msg or "None" in msg), msg
        return
    assert x.dim() in (2, 3) and x.size(-1) == I
    assert out.shape[:-1] == x.shape[:-1] and out.size(-1) == 3


@FAST
@given(st.lists(st.text(max_size=12), max_size=6))
def test_predict_values_parser_returns_floats_or_data_error(raw):
    try:
        values = _numbers(raw)
    except DataError as e:  # not a number, or a finite one beyond float32 ("1E100")
        msg = str(e)
        assert "values must be numbers, got" in msg or "within float32's range" in msg, msg
        return
    assert len(values) == len(raw) and all(isinstance(v, float) for v in values)


@pytest.mark.parametrize("raw", [["1e400"], ["nan"], ["-inf"]])
def test_predict_parser_passes_non_finite_to_the_model_check(raw):
    """float() accepts these; the model-side check (forecast._context) refuses them."""
    assert len(_numbers(raw)) == 1


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(
            alphabet=st.sampled_from(list('v,d;"\n\r\t 0123456789.-eEnaif\x00x')), max_size=120
        ).map(lambda t: t.encode()),
        st.lists(st.text(max_size=8), min_size=1, max_size=6).map(
            lambda cells: ("v,d\n" + "\n".join(f"{c},2000-01" for c in cells)).encode()
        ),
    ),
    st.sampled_from(["", "v", "d", "nope"]),
    st.sampled_from(["", "d"]),
)
def test_csv_parser_returns_series_or_data_error(raw, column, date_column):
    from lstmkit.data.csv import parse
    from lstmkit.errors import LstmkitError

    try:
        values, dates, col = parse(raw, "fuzz.csv", column, date_column)
    except LstmkitError as e:
        assert "fuzz.csv" in str(e) or "--column" in str(e), str(e)
        return
    assert values and all(
        isinstance(v, float) and v == v and abs(v) != float("inf") for v in values
    )
    assert col
    assert len(dates) == (len(values) if date_column else 0)
