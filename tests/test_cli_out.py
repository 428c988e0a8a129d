"""`--out` is a directory in every command; --png / --onnx name one file; the older
`--out FILE.csv|.png|.onnx` form keeps working with one note on stderr."""

from __future__ import annotations

import errno

import pytest

from lstmkit.cli import main

SMALL = ["--epochs", "1", "--num-train", "32", "--hidden-size", "4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "run"
    assert main(["train", "--out", str(out), *SMALL]) == 0
    return out


def _one(capsys, code_expected, argv):
    capsys.readouterr()
    assert main(argv) == code_expected
    return capsys.readouterr()


@pytest.mark.parametrize(
    "command, name, extra",
    [
        (["inspect"], "gates.png", ["1", "2", "3"]),
        (["export"], "model.onnx", []),
        (["predict", "--horizon", "2"], "forecast.csv", ["5", "6"]),
    ],
)
@pytest.mark.parametrize("exists", [True, False])
def test_out_dir_gets_the_fixed_name(run, tmp_path, capsys, command, name, extra, exists):
    out = tmp_path / "results"
    if exists:
        out.mkdir()
    res = _one(capsys, 0, [*command, "--run", str(run), "--out", str(out), *extra])
    assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert str(out / name) in res.out and res.err == ""
    assert sorted(p.name for p in out.iterdir()) == [name]


@pytest.mark.parametrize(
    "command, legacy, extra, new_form",
    [
        (["inspect"], "g.png", ["1", "2"], "--png FILE"),
        (["export"], "m.onnx", [], "--onnx FILE"),
        (["predict", "--horizon", "2"], "f.csv", ["5", "6"], "--out DIR"),
    ],
)
def test_older_out_file_form_still_works_with_one_note(
    run, tmp_path, capsys, command, legacy, extra, new_form
):
    target = tmp_path / legacy
    res = _one(capsys, 0, [*command, "--run", str(run), "--out", str(target), *extra])
    assert target.is_file() and target.stat().st_size > 0
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lstmkit: note: --out now takes a directory")
    assert new_form in lines[0]


def test_a_directory_named_like_a_file_is_a_directory(run, tmp_path, capsys):
    d = tmp_path / "pics.png"
    d.mkdir()
    _one(capsys, 0, ["inspect", "--run", str(run), "--out", str(d), "1", "2"])
    assert (d / "gates.png").is_file()


@pytest.mark.parametrize(
    "command, flag, name, extra",
    [(["inspect"], "--png", "my.png", ["1", "2"]), (["export"], "--onnx", "my.onnx", [])],
)
def test_file_flags_write_exactly_that_file(run, tmp_path, capsys, command, flag, name, extra):
    res = _one(capsys, 0, [*command, "--run", str(run), flag, str(tmp_path / name), *extra])
    assert (tmp_path / name).is_file() and res.err == ""
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_defaults_write_into_the_run(run, capsys):
    assert _one(capsys, 0, ["inspect", "--run", str(run), "1", "2"]).out.strip() == str(
        run / "gates.png"
    )
    assert _one(capsys, 0, ["export", "--run", str(run)]).out.strip() == str(run / "model.onnx")


def test_full_disk_is_one_line_naming_the_file_and_leaves_no_folder(
    run, tmp_path, capsys, monkeypatch
):
    """A write that fails with ENOSPC (simulated: the system names no path) is one line that
    names the file, exit 1, and the folder created for it is gone again."""
    import lstmkit.checkpoint

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lstmkit.checkpoint, "atomic_write", full)
    out = tmp_path / "new"
    res = _one(capsys, 1, ["predict", "--run", str(run), "--horizon", "2", "--out", str(out), "5"])
    assert res.err.strip() == f"lstmkit: error: No space left on device: {out / 'forecast.csv'}"
    assert res.out == "" and not out.exists()


def test_a_picture_is_replaced_whole_or_not_at_all(run, tmp_path, capsys, monkeypatch):
    """inspect renders in memory and renames into place: a failed write keeps the old file."""
    import lstmkit.checkpoint

    png = tmp_path / "g.png"
    png.write_bytes(b"the previous picture")

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lstmkit.checkpoint, "atomic_write", full)
    _one(capsys, 1, ["inspect", "--run", str(run), "--png", str(png), "1", "2"])
    assert png.read_bytes() == b"the previous picture"
