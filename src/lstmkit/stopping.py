"""SIGINT and SIGTERM during training: stop at once, except inside a save.

While :class:`Signals` is installed, either signal raises :class:`Stop` where the program is,
so Ctrl-C in the first second stops as promptly as Ctrl-C mid-epoch. Inside :meth:`held`
(a checkpoint, the overwrite swap) the signal waits until the block ends, so the message the
trainer prints afterwards knows exactly which checkpoint is on disk.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

CAUGHT = (signal.SIGINT, signal.SIGTERM)


class Stop(BaseException):
    """A signal arrived; the trainer turns this into :class:`lstmkit.errors.Interrupted`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class Signals:
    """:meth:`install` SIGINT/SIGTERM handlers; :meth:`restore` the previous ones. Outside
    the main thread (where Python cannot set handlers) both do nothing."""

    def __init__(self) -> None:
        self.hold = 0
        self.pending: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in CAUGHT:
                if signal.getsignal(s) is signal.SIG_IGN:
                    continue  # ignored by whoever started us (nohup, a background job): keep so
                self._previous[s] = signal.signal(s, self._handle)

    def restore(self, deliver: bool) -> None:
        """Put the previous handlers back; ``deliver``: a signal that waited (the run had
        finished when it came) now goes to them, as if lstmkit had not been there."""
        self.hold += 1  # from here on a signal only waits
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        if deliver and self.pending is not None:
            signal.raise_signal(self.pending)

    def _handle(self, signum: int, frame) -> None:
        if self.hold:
            if self.pending is None:
                self.pending = signum
            return
        raise Stop(signum)

    @contextmanager
    def held(self):
        """Signals wait until the block has ended normally, then stop."""
        self.hold += 1
        try:
            yield
        finally:
            self.hold -= 1
        if not self.hold and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Stop(signum)

    def ignore_from_now(self) -> None:
        """From now on a signal only waits (cleaning up after a stop or an error)."""
        self.hold += 1
