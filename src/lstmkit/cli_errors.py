"""Every error that reaches the command line as one line and an exit code, never a traceback:

- an ``lstmkit.errors.LstmkitError`` (bad input, explained): its message, exit 2;
- ``TrainingError`` (a run that could not go on): its message, exit 1;
- Ctrl-C: "interrupted" (or the message the interrupted code attached), exit 130;
- an ``OSError`` (full disk, permission denied, read-only file system): the system's reason
  and the path, exit 1; a closed stdout (``| head``) ends quietly;
- ``RecursionError`` / ``MemoryError``: what ran out, exit 1;
- anything else is a bug of lstmkit: its type and first line, exit 1. ``LSTMKIT_DEBUG=1`` in
  the environment lets every error through with its traceback instead.
"""

from __future__ import annotations

import errno
import os
import sys

from lstmkit.errors import LstmkitError, TrainingError

EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
MAX_LINE = 1000  # characters: a message echoing a hostile value stays readable


def one_line(text: str) -> str:
    """``text`` on one line: its lines joined, cut at :data:`MAX_LINE` characters."""
    joined = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return joined if len(joined) <= MAX_LINE else joined[:MAX_LINE] + "..."


def failure(e: BaseException) -> tuple[int, str]:
    """(exit code, the line to print after "lstmkit: "; "" prints nothing) for error ``e``."""
    if isinstance(e, LstmkitError):
        return EXIT_BAD_INPUT, "error: " + one_line(str(e))
    if isinstance(e, TrainingError):
        return EXIT_FAILED, "error: " + one_line(str(e))
    if isinstance(e, KeyboardInterrupt):
        code = getattr(e, "exit_code", EXIT_INTERRUPTED)  # errors.Interrupted: 128 + signal
        return code, one_line(str(e)) or "interrupted"
    if isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == errno.EPIPE):
        _silence_stdout()  # the reader went away (| head): nothing left to say to it
        return EXIT_FAILED, ""
    if isinstance(e, OSError):
        return EXIT_FAILED, "error: " + os_error(e)
    if isinstance(e, RecursionError):
        return EXIT_FAILED, "error: input nested too deeply to process (recursion limit reached)"
    if isinstance(e, MemoryError) or _out_of_memory(e):
        first = one_line(str(e).split("\n", 1)[0])[:300]
        return EXIT_FAILED, f"error: out of memory (the input or the model is too large): {first}"
    first = one_line(str(e).strip().split("\n", 1)[0]) if str(e).strip() else ""
    return EXIT_FAILED, (
        f"internal error: {type(e).__name__}: {first} "
        "(a bug: rerun with LSTMKIT_DEBUG=1 for the traceback and report it)"
    )


def _out_of_memory(e: BaseException) -> bool:
    """torch's allocation failures: ``torch.OutOfMemoryError`` on a GPU, a RuntimeError
    from the CPU allocator (matched by name and text: this module does not import torch)."""
    return type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def os_error(e: OSError) -> str:
    """The system's reason and the path(s) it names: ``No space left on device: runs/x``."""
    reason = e.strerror or (os.strerror(e.errno) if e.errno else "") or type(e).__name__
    paths = [os.fsdecode(p) for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(no path given by the system)"
    return one_line(f"{reason}: {where}")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (tests capture it): nothing to flush
        pass
