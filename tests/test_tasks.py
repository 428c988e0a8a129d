"""Every task's data: shapes, masks, determinism, baselines; the loaders' errors; the
seasonal scaler; task defaults."""

import math

import pytest
import torch

from lstmkit import data as tasks
from lstmkit.config import DataConfig, RunConfig, from_dict
from lstmkit.data import adding, copy, csv, text
from lstmkit.errors import ConfigError, DataError
from lstmkit.metrics import classes, series
from lstmkit.scaling import Scaler

AIRLINE_SUM, AIRLINE_N = 40363, 144


def _data(task: str, **kw) -> RunConfig:
    """The resolved config of ``task`` with options ``kw``, named as a format-1 [data] table
    (csv=, text=, test_size=): ``legacy`` moves each to its section."""
    return tasks.resolve(from_dict({"data": {"task": task, **kw}}, legacy=True))


@pytest.fixture
def shakespeare_like(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("To be, or not to be: that is the question.\n" * 40, encoding="utf-8")
    return p


def _make(task, tmp=None, **kw):
    return tasks.make(_data(task, **kw), 0)


SMALL = {
    "counting": {},
    "sine": {"length": 20, "num_train": 16, "num_val": 8, "num_test": 8},
    "adding": {"length": 30, "num_train": 16, "num_val": 8, "num_test": 8},
    "copy": {"length": 5, "num_train": 16, "num_val": 8, "num_test": 8},
    "csv": {},
}


@pytest.mark.parametrize("task", sorted(SMALL))
def test_shapes_masks_and_kinds(task):
    td = _make(task, **SMALL[task])
    for split in (td.train, td.val, td.test):
        N, T = split.mask.shape
        assert split.mask.dtype == torch.bool and split.mask.any()
        if td.tokens:
            assert split.x.shape == (N, T) and split.x.dtype == torch.long
            assert split.x.max() < td.input_size
        else:
            assert split.x.shape == (N, T, td.input_size)
        if td.kind == "classification":
            assert split.y.shape == (N, T) and split.y.max() < td.output_size
        else:
            assert split.y.shape == (N, T, td.output_size)


@pytest.mark.parametrize("task", ["sine", "adding", "copy", "counting"])
def test_same_seed_same_data_other_seed_other_data(task):
    cfg = _data(task, **SMALL[task])
    a, b, c = tasks.make(cfg, 3), tasks.make(cfg, 3), tasks.make(cfg, 4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_task_defaults_fill_only_unset_fields():
    cfg = tasks.resolve(RunConfig(data=DataConfig(task="adding")))
    assert (cfg.data.length, cfg.model.hidden_size) == (100, adding.DEFAULTS["model.hidden_size"])
    mine = RunConfig(data=DataConfig(task="adding", length=7))
    mine.train.lr = 0.123
    cfg = tasks.resolve(mine)
    assert (cfg.data.length, cfg.train.lr) == (7, 0.123)
    assert tasks.resolve(RunConfig()).data.length == 4  # counting keeps the tutorial's
    with pytest.raises(ConfigError, match="unresolved"):
        tasks.make(RunConfig(), 0)


def test_adding_problem_structure_and_constant_baseline():
    td = _make("adding", length=40, num_train=8, num_val=8, num_test=4000)
    x, y, m = td.test.x, td.test.y, td.test.mask
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((4000,), 2.0))
    assert (markers[:, :20].sum(1) == 1).all() and (markers[:, 20:].sum(1) == 1).all()
    torch.testing.assert_close(y[:, -1, 0], (x[..., 0] * markers).sum(1))
    assert m[:, -1].all() and not m[:, :-1].any()
    const = adding.TASK.baselines(td, None)["constant 1.0"]
    assert abs(adding.TASK.score(const, y, m)["mse"] - 1 / 6) < 0.01


def test_copy_task_structure_and_uniform_baseline():
    td = _make("copy", length=7, num_test=64)
    x, y, m = td.test.x, td.test.y, td.test.mask
    assert x.shape == (64, 27)
    torch.testing.assert_close(y[:, -10:], x[:, :10])
    assert (x[:, 16] == copy.DELIMITER).all() and m.sum() == 640 and m[:, -10:].all()
    assert ((x[:, :10] >= 1) & (x[:, :10] <= 8)).all()
    ((name, logits),) = copy.TASK.baselines(td, None).items()
    assert abs(classes(logits, y, m)["cross_entropy"] - math.log(8)) < 1e-6


def test_sine_waves_are_noisy_sines_in_range():
    td = _make("sine", **SMALL["sine"])
    assert td.train.x.abs().max() < 1.6
    torch.testing.assert_close(td.train.x[:, 1:], td.train.y[:, :-1])  # y is x shifted


def test_csv_builtin_airline_split_in_time_order():
    td = _make("csv")
    v = torch.tensor(csv.read_series(""))
    assert len(v) == AIRLINE_N and v.sum() == AIRLINE_SUM
    torch.testing.assert_close(td.test.y[td.test.mask][:, 0], v[-24:])
    torch.testing.assert_close(td.val.y[:, -1, 0], v[-48:-24])
    assert td.train.y.max() == v[:-48].max()  # train windows stay before validation
    assert td.meta["test_start"] == "1959-01" and td.meta["column"] == "passengers"


def test_csv_seasonal_naive_matches_the_reference_figures():
    cfg = _data("csv")
    td = tasks.make(cfg, 0)
    base = csv.TASK.baselines(td, cfg)
    sn = series(base["seasonal naive (12)"], td.test.y, td.test.mask)
    assert abs(math.sqrt(sn["mse"]) - 77.0) < 0.05 and sn["mae"] == pytest.approx(71.25)
    assert math.sqrt(series(base["last value"], td.test.y, td.test.mask)["mse"]) == (
        pytest.approx(137.33, abs=0.01)
    )


def test_series_baselines_last_value_and_seasonal():
    td = _make("sine", length=20, num_train=4, num_val=4, num_test=4, period=5)
    b = tasks.series_baselines(td.test.x, 5)
    torch.testing.assert_close(b["last value"], td.test.x)
    torch.testing.assert_close(b["seasonal naive (5)"][:, 4:], td.test.x[:, :-4])
    assert torch.isnan(b["seasonal naive (5)"][:, :4]).all()


def test_text_vocab_split_and_unigram(shakespeare_like):
    cfg = _data("text", text=str(shakespeare_like), length=16, num_train=32)
    td = tasks.make(cfg, 0)
    body = shakespeare_like.read_text()
    assert td.meta["vocab"] == "".join(sorted(set(body)))
    assert td.meta["chars"] == len(body) and td.input_size == td.output_size == len(set(body))
    cut = int(len(body) * 0.9)
    vocab = td.meta["vocab"]
    first_val = "".join(vocab[i] for i in td.val.x[0])
    assert first_val == body[cut : cut + 16]
    assert td.train.x.shape == (32, 16) and td.test is td.val
    (logits,) = text.TASK.baselines(td, cfg).values()
    bpc = text.TASK.score(logits, td.test.y, td.test.mask)["bits_per_char"]
    assert 3.0 < bpc < 4.5  # the unigram entropy of this line, about 3.6 bits


# ---- loaders' errors ---------------------------------------------------------------------


def _csv_file(tmp_path, body: str, name="s.csv"):
    p = tmp_path / name
    p.write_text(body, encoding="utf-8")
    return str(p)


@pytest.mark.parametrize(
    "body, kw, message",
    [
        ("", {}, "is empty"),
        ("a,b\n", {}, "has a header (a, b) but no data rows"),
        ("d,v\n2000-01,1\n", {"column": "w"}, "no column 'w' (--column); its columns are 'd', 'v'"),
        ("d,v\n2000-01,1\n2000-02,x2\n", {}, "line 3, column 'v': expected a number, got 'x2'"),
        ("d,v\n2000-01,1\n2000-02,\n", {}, "line 3, column 'v': missing value ''; pass --fill"),
        ("d,v\n2000-01,nan\n", {}, "line 2, column 'v': missing value 'nan'; pass --fill"),
        ("d,v\n2000-01,inf\n", {}, "expected a finite number within float32's range"),
        ("d,v\n2000-01,1e39\n", {}, "within float32's range (|x| <= 3.4e38), got '1e39'"),
        ("d,v,v\n2000-01,1,2\n", {}, "two columns named 'v' (columns 2 and 3)"),
        ("v\n1\n2\n\n4\n", {}, "line 4, column 'v': missing value ''; pass --fill"),
        ("d,v\n" + "2000-01,1\n" * 5, {}, "has 5 values in column 'v'"),
        ("a,b\n1,2\n", {}, "pass --column, one of 'a', 'b'"),
        (
            "d,v\n2000-02,1\n2000-01,2\n",
            {"date_column": "d"},
            "line 3: dates must increase, got '2000-01' after '2000-02'",
        ),
        ("d,v\nmonday,1\n", {"date_column": "d"}, "expected an ISO date"),
    ],
)
def test_csv_errors_name_expected_and_actual(tmp_path, body, kw, message):
    path = _csv_file(tmp_path, body)
    with pytest.raises((DataError, ConfigError)) as e:
        tasks.make(_data("csv", csv=path, length=3, test_size=2, **kw), 0)
    assert message in str(e.value)


def test_csv_blank_lines_at_the_end_are_not_values(tmp_path):
    path = _csv_file(tmp_path, "v\n" + "".join(f"{i}\n" for i in range(12)) + "\n\n")
    s = csv.read(path)
    assert s.values == [float(i) for i in range(12)]
    filled = csv.read(_csv_file(tmp_path, "v\n1\n\n3\n\n", "g.csv"), fill="interpolate")
    assert filled.values == [1.0, 2.0, 3.0]  # the blank between rows is a gap, not skipped


def test_csv_missing_and_binary_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        tasks.make(_data("csv", csv=str(tmp_path / "nope.csv")), 0)
    p = tmp_path / "bin.csv"
    p.write_bytes(b"v\n\xff\xfe1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        tasks.make(_data("csv", csv=str(p)), 0)


def test_text_errors(tmp_path):
    with pytest.raises(ConfigError, match="--text FILE"):
        tasks.make(_data("text"), 0)
    with pytest.raises(DataError, match="does not exist"):
        tasks.make(_data("text", text=str(tmp_path / "none.txt")), 0)
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        tasks.make(_data("text", text=str(tmp_path / "e.txt")), 0)
    (tmp_path / "b.txt").write_bytes(b"abc\xff")
    with pytest.raises(DataError, match="not UTF-8 text: byte 3 is 0xff"):
        tasks.make(_data("text", text=str(tmp_path / "b.txt")), 0)
    (tmp_path / "s.txt").write_text("short")
    with pytest.raises(DataError, match="has 5 characters"):
        tasks.make(_data("text", text=str(tmp_path / "s.txt")), 0)


# ---- the seasonal scaler -------------------------------------------------------------------


def test_seasonal_scaler_round_trips_and_saves():
    td = _make("csv")
    s = Scaler("seasonal", period=12).fit(td.train.x)
    assert s.log and s.scale > 0
    xs, ys = s.encode(td.train.x, td.train.y)
    assert (xs[:, :12] == 0).all() and torch.isfinite(ys).all()
    back = s.decode(ys, td.train.x)
    torch.testing.assert_close(back[:, 11:], td.train.y[:, 11:], rtol=1e-4, atol=1e-3)
    assert torch.isnan(back[:, :11]).all()  # the reference lies before the window
    assert s.defined(24).tolist() == [False] * 12 + [True] * 12
    again = Scaler.from_dict(s.to_dict())
    assert again.to_dict() == s.to_dict() == {**s.to_dict(), "period": 12, "log": True}


def test_seasonal_scaler_without_logs_for_non_positive_data():
    x = torch.randn(8, 30, 1)
    s = Scaler("seasonal", period=4).fit(x)
    assert not s.log
    xs, ys = s.encode(x, x)
    assert torch.isfinite(xs).all()
    with pytest.raises(ConfigError, match="data.length must be > 12, got 10"):
        Scaler("seasonal", period=12).fit(x[:, :10])
    logs = Scaler("seasonal", period=4).fit(x.abs() + 1)
    with pytest.raises(DataError, match="needs positive values, got -"):
        logs.encode(-x.abs())
