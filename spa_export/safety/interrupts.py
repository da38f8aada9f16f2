"""Ctrl-C (SIGINT) and a CI runner's cancel (SIGTERM), as exceptions that leave nothing half-written.

While a command runs, both signals raise in the main thread: SIGINT as
:class:`KeyboardInterrupt`, SIGTERM as :class:`Terminated` (a subclass, so
every ``except BaseException`` clean-up runs for both). Two places hold them
back for a moment:

* an import in progress: an exception raised inside a C extension's
  initialisation (numpy's, torch's, onnx's) can come out as an ImportError
  that optional-import guards swallow, leaving the library half-initialised.
  The signal is raised again 50 ms later, until the import is done;
* publication (:func:`deferred`): the output is swapped in as one step; a
  signal that arrives meanwhile takes effect afterwards as
  :class:`InterruptedAfterPublish`, whose message says the output is complete.

An exception raised by the handler inside a C extension's call (a
safetensors or torch loader) can likewise come out as another error; the
signals :func:`raised` raised are recorded, so that the command can report
the interrupt, not the error it caused (:func:`stop_for`).

Exit codes: 130 for SIGINT, 143 for SIGTERM (128 + the signal's number).
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI runner cancelling the job, ``kill``): handled like Ctrl-C, exit 143."""

    signum = signal.SIGTERM


class InterruptedAfterPublish(KeyboardInterrupt):
    """A signal that arrived once the output was already published in full."""

    def __init__(self, out: object, signum: int = signal.SIGINT) -> None:
        super().__init__(f"{'terminated' if signum == signal.SIGTERM else 'interrupted'}: "
                         f"{out} was already written in full")
        self.out = out
        self.signum = signum


def exit_code(err: BaseException) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + int(getattr(err, "signum", signal.SIGINT))


def message(err: BaseException) -> str:
    if isinstance(err, InterruptedAfterPublish):
        return str(err)
    if getattr(err, "signum", signal.SIGINT) == signal.SIGTERM:
        return "terminated (SIGTERM): nothing was written"
    return "interrupted: nothing was written"


def stop_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal raises: :class:`Terminated` for SIGTERM, KeyboardInterrupt for SIGINT."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


def _ours_to_set(signum: int) -> bool:
    current = signal.getsignal(signum)
    if signum == signal.SIGINT:
        return current is signal.default_int_handler
    return current == signal.SIG_DFL


@contextlib.contextmanager
def raised(fired: list[int] | None = None) -> Iterator[None]:
    """SIGINT and SIGTERM raise (after any import in progress) while the block runs.

    ``fired``: each signal raised is appended to it. Left alone: a thread
    other than the main one, a signal that is ignored (a background job's
    SIGINT) or that a caller already handles.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    active = True

    def handler(signum: int, frame: FrameType | None) -> None:
        if active and _importing(frame):
            def again() -> None:
                if active:
                    _thread.interrupt_main(signum)  # runs this handler again in the main thread
            timer = threading.Timer(0.05, again)
            timer.daemon = True
            timer.start()
            return
        if fired is not None:
            fired.append(signum)
        raise stop_for(signum)

    previous = {s: signal.getsignal(s) for s in SIGNALS if _ours_to_set(s)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        active = False
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred(out: object) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs; one that arrived is raised afterwards.

    It is raised as :class:`InterruptedAfterPublish` naming ``out``: the block
    (publication) completed. Signals that were ignored before stay ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    live = [s for s in received if previous[s] != signal.SIG_IGN]
    if live:
        raise InterruptedAfterPublish(out, live[0])
