"""Atomic publication of a build's output directory.

A build writes into a staging directory beside ``--out`` and publishes it
with renames only when every stage has succeeded, so a failed or interrupted
build leaves ``--out`` as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from spa_export.errors import InputError, InterruptedAfterPublish


def check_out_dir(out: Path) -> None:
    """Refuse an ``--out`` that is a file or whose parent cannot be written, before any work."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    parent = out.resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # missing parents are created when the build publishes
    if not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--out {out}: cannot write in {parent}")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def staging_dir(out: Path) -> Path:
    """A fresh hidden directory beside ``out``, or in its nearest existing ancestor.

    Missing parents of ``out`` are created only by :func:`publish`, so a failed
    or interrupted build leaves no empty directories behind. The ancestor is on
    the same file system as the parents created below it: the rename stays atomic.
    """
    parent = _existing_ancestor(out.resolve().parent)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=parent))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # file system or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(a))


def publish(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``: the old ``out`` (if any) is replaced as a whole.

    Where the kernel can, an existing ``out`` is swapped with ``staging`` in one
    atomic step (the old contents then sit in ``staging`` and are removed), so
    even a process killed mid-publish leaves either the old or the new ``out``,
    never none. Elsewhere the old ``out`` is renamed aside first.
    """
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[list[int]]:
    """Hold Ctrl-C while the block runs; the list says whether one arrived."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
        if previous is signal.SIG_IGN:
            received.clear()  # SIGINT was ignored before (a background job): it still is


def publish_whole(staging: Path, out: Path) -> None:
    """:func:`publish`, as one step that Ctrl-C cannot split.

    A Ctrl-C during publication takes effect once it is done, as
    :class:`~spa_export.errors.InterruptedAfterPublish`: the output is complete
    and the message says so, rather than "nothing was written".
    """
    with _interrupt_deferred() as received:
        publish(staging, out)
    if received:
        raise InterruptedAfterPublish(out)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
