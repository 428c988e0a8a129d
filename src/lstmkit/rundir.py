"""Who may write a run directory, and how a new run replaces an old one without losing files.

- **Lock.** The one process writing OUT holds ``OUT/.lstmkit-lock`` (``flock``, exclusive):
  the kernel releases it when the process ends, however it ends, so a dead writer never
  blocks. The file records the holder (pid, host, start time) for a second writer's error.
- **Unfinished start.** A new run directory carries ``.lstmkit-new`` until its first
  checkpoint is committed; a directory with it and no training state holds only what that
  start wrote, so a rerun may clear those files (and nothing else) and begin again.
- **Overwrite.** The new run trains in a hidden sibling ``.lstmkit-staging-XXXXXXXX`` and
  replaces OUT only once it has finished (one atomic exchange where the system has it). The
  old run is marked ``.lstmkit-discard`` just before, and deleted after. A sibling is only
  ever deleted when it has lstmkit's name, lstmkit's marker naming OUT, and no live holder:
  lstmkit never removes a file or folder it did not create.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import secrets
import shlex
import shutil
import socket
import time
from pathlib import Path

from lstmkit.errors import DiskError, RunDirError

LOCK, NEW = ".lstmkit-lock", ".lstmkit-new"
STAGING, DISCARD = ".lstmkit-staging", ".lstmkit-discard"
SIBLING_PREFIX = ".lstmkit-staging-"
# Files a run's training writes; an unfinished start may only ever have written these.
RUN_FILES = (
    "config.json",
    "scaler.json",
    "model.safetensors",
    "metrics.csv",
    "train_state.pt",
    "intervals.json",
)


def disk_error(e: OSError, what: str) -> DiskError:
    """``e`` (ENOSPC, EROFS, EACCES, ...) as one line naming the file and the cause."""
    return DiskError(f"cannot write {what}: {e.strerror or e}")


class Lock:
    """An exclusive ``flock`` on ``folder/.lstmkit-lock``, held until :meth:`release`."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self.fd = _acquire(self.path)

    def release(self, remove: bool = False) -> None:
        """Let go; ``remove``: delete the lock file too (still holding it, so a process
        waiting on the old file notices it is gone and retries)."""
        if self.fd is None:
            return
        try:
            if remove:
                self.path.unlink(missing_ok=True)
            else:
                os.ftruncate(self.fd, 0)  # a finished run's lock file is empty
        except OSError:
            pass  # a read-only disk: the kernel still drops the lock below
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None


def _acquire(path: Path) -> int:
    for _ in range(20):  # a holder may delete the file between our open and our flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunDirError(f"{path} is a symbolic link; lstmkit made no such link") from None
            raise disk_error(e, f"the lock file {path}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _busy(path.parent, holder) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            _record_holder(fd)
            return fd
        os.close(fd)
    raise RunDirError(f"could not lock {path}: it keeps being replaced")


def _record_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname()[:100], "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # the lock holds without the note; a second writer's error says less


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        pid, host, since = int(info["pid"]), str(info["host"])[:100], float(info["since"])
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
        return f"pid {pid} on host {host!r}, since {when}"
    except (ValueError, KeyError, TypeError, OverflowError, OSError):
        return "holder unknown"


def _write_marker(path: Path, info: dict) -> None:
    from lstmkit.checkpoint import write_json

    write_json(path, {**info, "pid": os.getpid(), "created": time.time()})


def _read_marker(path: Path) -> dict:
    """A marker's JSON, or {} when it is missing, not a plain file, or not ours."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 4096:
            return {}
        d = json.loads(path.read_text(encoding="utf-8"))
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def holder_of(folder: Path) -> str | None:
    """Who holds ``folder``'s lock now ("pid … on host …"), or None; writes nothing."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (or not ours to read): nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)  # also drops the probe's own lock


def _busy(folder: Path, holder: str) -> RunDirError:
    return RunDirError(
        f"run directory {folder} is being written by another lstmkit process ({holder}); "
        "wait for it to end, or stop it"
    )


def _is_free(folder: Path) -> bool:
    """Whether nobody alive holds ``folder``'s lock (a dead overwrite's leftovers)."""
    return holder_of(folder) is None


def _siblings(out: Path):
    """lstmkit's hidden siblings of ``out``: (folder, marker name, marker) for each."""
    try:
        entries = list(out.parent.iterdir())
    except OSError:
        return
    for p in entries:
        if not p.name.startswith(SIBLING_PREFIX) or p.is_symlink() or not p.is_dir():
            continue
        for name in (DISCARD, STAGING):
            marker = _read_marker(p / name)
            if marker.get("for") == out.name:
                yield p, name, marker
                break


def clean_siblings(out: Path) -> None:
    """Delete the leftovers of overwrites of ``out`` that died (the caller holds out's lock),
    and the markers a kill may have left in ``out`` itself."""
    for p, _, _ in list(_siblings(out)):
        if _is_free(p):
            shutil.rmtree(p, ignore_errors=True)
    for name in (DISCARD, STAGING):
        if not (out / name).is_symlink():
            (out / name).unlink(missing_ok=True)


def recover_swap(out: Path) -> None:
    """When ``out`` is missing because a two-step swap was cut short, put its finished
    replacement in place."""
    if not out.exists() and not out.is_symlink():
        for p, name, marker in list(_siblings(out)):
            if name == STAGING and marker.get("finished") and _is_free(p):
                with contextlib.suppress(OSError):  # another writer may be doing the same
                    os.rename(p, out)
                    (out / STAGING).unlink(missing_ok=True)
                return


def new_staging(out: Path) -> tuple[Path, Lock]:
    """A hidden sibling of ``out`` to write its replacement into, locked and marked."""
    staging = out.parent / f"{SIBLING_PREFIX}{secrets.token_hex(4)}"
    try:
        staging.mkdir()
        lock = Lock(staging)
        _write_marker(staging / STAGING, {"for": out.name, "finished": False})
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise disk_error(e, f"a staging folder beside {out}") from None
    return staging, lock


def swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by the finished run in ``staging``; the old run is deleted. On an
    error ``out`` is the old run, whole."""
    try:
        _write_marker(staging / STAGING, {"for": out.name, "finished": True})
        _write_marker(out / DISCARD, {"for": out.name})  # the old run: lstmkit's to delete
        if not exchange(staging, out):
            _rename_twice(staging, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            (out / DISCARD).unlink(missing_ok=True)  # out is the old run, and stays
        raise disk_error(e, f"{out} (replacing it by the new run)") from None
    # staging's path now holds the old run; the new run's staging marker goes
    with contextlib.suppress(OSError):
        (out / STAGING).unlink(missing_ok=True)
    shutil.rmtree(staging, ignore_errors=True)


def _rename_twice(staging: Path, out: Path) -> None:
    """The swap without an atomic exchange. A kill between the two renames leaves ``out``
    missing and the finished run in its sibling, which the next lstmkit writer swaps in
    (:func:`recover_swap`); an error puts the old run back."""
    old = out.parent / f"{SIBLING_PREFIX}{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        os.rename(old, out)
        raise
    os.rename(old, staging)  # where the caller deletes it


_libc = None


def exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` in one atomic step (Linux renameat2 RENAME_EXCHANGE);
    False where the system or file system does not offer it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _temporary(name: str) -> bool:
    """Whether ``name`` is the temporary file of one of lstmkit's atomic writes."""
    mine = RUN_FILES + (NEW, STAGING, DISCARD)
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in mine)


def _ours_only(out: Path) -> list[Path]:
    """What ``out`` holds besides lstmkit's lock, markers and temporaries."""
    mine = (LOCK, NEW, STAGING, DISCARD)
    return [p for p in out.iterdir() if p.name not in mine and not _temporary(p.name)]


def _unfinished(out: Path) -> bool:
    """Whether ``out`` is a start that a kill cut short before its first checkpoint."""
    return (out / NEW).is_file() and not (out / "train_state.pt").exists()


def _clear_unfinished(out: Path) -> None:
    """Remove what an unfinished start wrote: lstmkit's run files and their temporaries,
    the marker last (a kill midway leaves a start that is still recognisably unfinished)."""
    for p in out.iterdir():
        ours = p.name in RUN_FILES or _temporary(p.name)
        if ours and (p.is_symlink() or p.is_file()):
            p.unlink(missing_ok=True)
    (out / NEW).unlink(missing_ok=True)


def check_new(out: Path, overwrite: bool, locked: bool = False) -> None:
    """Refuse early (before any data is made) what :func:`open_new` would refuse; ``locked``:
    the caller holds out's lock already."""
    if overwrite and out.is_symlink():
        raise RunDirError(
            f"--out {out} is a symbolic link (to {os.readlink(out)}); --overwrite replaces "
            "neither a link nor what it points to: give the real folder as --out"
        )
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} exists and is not a directory")
    holder = holder_of(out) if out.is_dir() and not locked else None
    if holder:
        raise _busy(out, holder)
    if out.is_dir() and not _unfinished(out) and _ours_only(out):
        if not overwrite:
            raise RunDirError(
                f"run directory {out} already exists; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        if not any((out / f).exists() for f in ("config.json", "train_state.pt", NEW)):
            raise RunDirError(
                f"--overwrite replaces a run directory, and {out} is not one (no config.json): "
                "choose another --out, or empty it yourself"
            )


class Writer:
    """The right to write one run: ``work`` is ``out`` itself, or (--overwrite) a staging
    sibling that :meth:`finish` swaps in. ``pending``: its first checkpoint is not committed
    yet; ``fresh``: this process started it (so a failure before the commit removes it)."""

    def __init__(self, out, work, locks, created: bool, pending: bool, fresh: bool) -> None:
        self.out, self.work, self.locks = out, work, locks
        self.created, self.pending, self.fresh = created, pending, fresh

    @property
    def staged(self) -> bool:
        return self.work != self.out

    def committed(self) -> None:
        """The first training state is on disk: the run is resumable from here on."""
        if self.pending:
            (self.work / NEW).unlink(missing_ok=True)
            self.pending = False

    def finish(self) -> None:
        if self.staged:
            swap_in(self.work, self.out)
        self.release()

    def abort(self) -> None:
        """After a failure: drop what this process created and cannot be resumed."""
        try:
            if self.staged:
                shutil.rmtree(self.work, ignore_errors=True)
            elif self.pending and self.fresh:
                _clear_unfinished(self.work)
                self.release(remove=True)
                if self.created:
                    with contextlib.suppress(OSError):
                        self.work.rmdir()  # only when empty: nothing else was there
        finally:
            self.release()

    def release(self, remove: bool = False) -> None:
        for lock in self.locks:
            lock.release(remove)


def open_new(out: Path, overwrite: bool) -> Writer:
    """Lock ``out`` for a new run and say where to write it (see :class:`Writer`)."""
    check_new(out, overwrite)
    recover_swap(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(e, f"the run directory {out}") from None
    lock = Lock(out)
    try:
        clean_siblings(out)
        _remove_temporaries(out)
        if _unfinished(out):
            _clear_unfinished(out)
        check_new(out, overwrite, locked=True)  # again, now that we hold the lock
        if not _ours_only(out):
            _write_marker(out / NEW, {"for": out.name})
            return Writer(out, out, [lock], created, pending=True, fresh=True)
        staging, slock = new_staging(out)
        _write_marker(staging / NEW, {"for": out.name})
        return Writer(out, staging, [slock, lock], True, pending=True, fresh=True)
    except BaseException:
        lock.release(remove=created)
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def open_resume(out: Path) -> Writer:
    """Lock ``out`` to continue its run; ``pending`` when its first start never committed."""
    recover_swap(out)
    if not out.is_dir():
        raise RunDirError(
            f"run directory {out} has no train_state.pt to resume from (no such folder)"
        )
    lock = Lock(out)
    try:
        clean_siblings(out)
        _remove_temporaries(out)
        pending = _unfinished(out)
        if not pending and not _ours_only(out):
            raise RunDirError(
                f"run directory {out} has no train_state.pt to resume from (it is empty): "
                f"start a run with `lstmkit train --out {shlex.quote(str(out))}`"
            )
        if not pending and not (out / "train_state.pt").is_file():
            raise RunDirError(f"run directory {out} has no train_state.pt to resume from")
        if not pending:
            (out / NEW).unlink(missing_ok=True)  # a kill fell between commit and this
        return Writer(out, out, [lock], False, pending=pending, fresh=False)
    except BaseException:
        lock.release()
        raise


def _remove_temporaries(out: Path) -> None:
    """Temporary files of lstmkit's writes that a kill interrupted (never anyone else's)."""
    for p in out.iterdir():
        if _temporary(p.name) and (p.is_file() or p.is_symlink()):
            p.unlink(missing_ok=True)
