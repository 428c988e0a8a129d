"""Where a command writes its file. One rule for every command:

- ``--out DIR`` is always a directory: the command writes its file under its fixed name in
  DIR (``inspect``: DIR/gates.png, ``export``: DIR/model.onnx, ``predict``: DIR/forecast.csv).
  DIR is created when its parent folder exists (as ``train --out`` creates the run directory).
- a flag named after a format (``--png FILE``, ``--onnx FILE``) is always one file of it.
- an older form is kept: an ``--out`` value ending in the file's extension (``forecast.csv``)
  that is not an existing directory is still that file, with one note on stderr after it is
  written.

Paths are checked before any work is done, and a directory created for the file is removed
again if the command fails, so that a failed command leaves no trace."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from lstmkit.errors import LstmkitError


@dataclass(frozen=True)
class Target:
    """The file a command will write; ``make_dir``: DIR to create first (None: exists);
    ``note``: a line for stderr once the file is written (the older form was used)."""

    file: Path
    make_dir: Path | None = None
    note: str = ""

    @contextlib.contextmanager
    def writing(self):
        """The file's path, its directory created if needed; a directory created here is
        removed again (when still empty) if the command fails, so that it leaves no trace."""
        created = self.make_dir is not None and not self.make_dir.is_dir()
        if created:
            self.make_dir.mkdir()
        try:
            yield self.file
        except BaseException as e:
            if created and not any(self.make_dir.iterdir()):
                self.make_dir.rmdir()
            if isinstance(e, OSError) and e.filename is None:  # a write to an open file
                raise OSError(e.errno, e.strerror, str(self.file)) from e  # name the path
            raise

    def written(self) -> None:
        """Say on stderr that the older form was used (after the file is written)."""
        if self.note:
            print(self.note, file=sys.stderr)


def _as_file(path: Path, flag: str) -> Target:
    if path.is_dir():
        raise LstmkitError(f"{flag} {path} is a directory; expected a file to write")
    if not path.parent.is_dir():
        raise LstmkitError(f"{flag} {path}: folder {path.parent} does not exist")
    return Target(path)


def _as_dir(path: Path, name: str) -> Target:
    if path.is_dir():
        return Target(path / name)
    if path.exists() or path.is_symlink():
        raise LstmkitError(
            f"--out {path} is a file; --out takes a directory (the command writes "
            f"DIR/{name}); to name the file itself, see --help"
        )
    if not path.parent.is_dir():
        raise LstmkitError(f"--out {path}: folder {path.parent} does not exist")
    return Target(path / name, make_dir=path)


def resolve(out: str | None, file: str | None, name: str, file_flag: str | None) -> Target | None:
    """The target of ``--out out`` / ``FILE_FLAG file`` for a file called ``name`` (its
    extension marks the older ``--out FILE`` form); None when neither is given."""
    if out is not None and file is not None:
        raise LstmkitError(f"give --out DIR or {file_flag} FILE, not both")
    if file is not None:
        return _as_file(_checked(file, file_flag), file_flag)
    if out is None:
        return None
    path = _checked(out, "--out")
    suffix = Path(name).suffix
    if path.suffix.lower() == suffix and not path.is_dir():  # the older form: --out f.csv
        new = f"{file_flag} FILE" if file_flag else f"--out DIR (writes DIR/{name})"
        note = f"lstmkit: note: --out now takes a directory; wrote {path} as before ({new})"
        return Target(_as_file(path, "--out").file, note=note)
    return _as_dir(path, name)


def _checked(raw: str, flag: str) -> Path:
    if not raw or "\x00" in raw:
        raise LstmkitError(f"{flag} must be a path, got {raw[:40]!r}")
    return Path(raw)
