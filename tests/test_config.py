"""The typed config: rules beside the fields, bounds, per-task sections, format-1 runs."""

import json

import pytest

from lstmkit import data as tasks
from lstmkit.cli import main
from lstmkit.config import (
    SECTIONS,
    RunConfig,
    choices_of,
    flag_of,
    from_dict,
    load_toml,
    validate,
)
from lstmkit.errors import ConfigError
from lstmkit.limits import MAX_SIZE, MAX_TRAIN_SEED


@pytest.mark.parametrize(
    "d, message",
    [
        ({"model": {"hidden_size": 10**30}}, f"model.hidden_size must be in [1, {MAX_SIZE}]"),
        ({"train": {"seed": 2**64}}, f"train.seed must be in [0, {MAX_TRAIN_SEED}]"),
        ({"train": {"seed": -1}}, "train.seed must be in [0,"),
        ({"train": {"epochs": 0}}, "train.epochs must be in [1,"),
        ({"train": {"lr": 1e300}}, "train.lr must be > 0 and <= 1000"),
        ({"train": {"max_time": 10**400}}, "train.max_time must be a number"),
        ({"model": {"num_layers": 65}}, "model.num_layers must be in [1, 64]"),
        ({"csv": {"test_size": -1}}, "csv.test_size must be in [0,"),
        ({"csv": {"fill": "mean"}}, "csv.fill must be one of none, ffill, interpolate, drop"),
        ({"counting": {"low": 5, "high": 2}}, "counting.low must be <= counting.high"),
        (
            {"data": {"csv": "x.csv"}},
            "data.csv is now csv.file (a [csv] table in TOML, flag --csv)",
        ),
        ({"data": {"task": "nope"}}, "data.task must be one of counting, sine, csv"),
        ({"model": {"hidden_size": [[[1]]]}}, "model.hidden_size must be an integer"),
        ({"model": {"x" * 5000: 1}}, "unknown key model.'xxxx"),
    ],
)
def test_values_outside_their_rules_are_one_line_errors(d, message):
    with pytest.raises(ConfigError) as e:
        from_dict(d)
    text = str(e.value)
    assert message in text and "\n" not in text and len(text) < 400


def test_every_rule_sits_beside_its_field():
    assert choices_of("train", "optimizer") == ("adam", "adamw")
    assert choices_of("model", "hidden_size") is None
    assert flag_of("csv", "file") == "csv" and flag_of("model", "hidden_size") == "hidden-size"
    for section, cls in SECTIONS.items():  # every default passes its own rules
        assert validate(RunConfig(**{section: cls()}))


def test_an_option_of_another_task_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--column", "x"]) == 2
    err = capsys.readouterr().err
    assert "csv.column (--column) is an option of the csv task" in err and "'counting'" in err
    assert main(["train", "--out", str(out), "--task", "adding", "--period", "4"]) == 2
    assert "data.period applies to series tasks" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--embedding-dim", "8"]) == 2
    assert "model.embedding_dim applies to token tasks" in capsys.readouterr().err
    assert not out.exists()


def test_deeply_nested_toml_is_a_one_line_error(tmp_path):
    p = tmp_path / "deep.toml"
    p.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nests its tables or arrays too deeply|not valid TOML"):
        load_toml(p)


def test_a_task_section_in_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\ntask = "csv"\n[csv]\ntest_size = 12\nfill = "ffill"\n')
    cfg = load_toml(p)
    assert (cfg.data.task, cfg.csv.test_size, cfg.csv.fill) == ("csv", 12, "ffill")
    assert tasks.resolve(cfg).csv.horizon == 12  # the test size, as before


def test_a_format_1_run_directory_still_loads(tmp_path, capsys):
    out = tmp_path / "old"
    assert main(["train", "--out", str(out), "--epochs", "1", "--high", "7"]) == 0
    saved = json.loads((out / "config.json").read_text())
    # the layout of format 1: every task's options in [data]
    counting = saved["config"].pop("counting")
    for section in ("csv", "text"):
        saved["config"].pop(section)
    saved["config"]["data"].update(
        counting, csv="", column="", date_column="", test_size=None, horizon=None, fill="none"
    )
    saved["config"]["data"].update(rows=0, text="")
    saved["format_version"] = 1
    (out / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] > 0
    assert main(["predict", "--run", str(out), "5", "6", "7", "8"]) == 0
