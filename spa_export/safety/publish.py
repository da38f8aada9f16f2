"""Atomic publication of an output directory, and atomic single files.

A build writes into a staging directory beside its output and publishes it
with renames only when every stage has succeeded, so a failed or interrupted
build leaves the output as it was. What may be replaced at all is decided by
:mod:`spa_export.safety.ownership`: publication checks it once more right before the
swap, and marks the new output as spa-export's own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from spa_export import __version__
from spa_export.safety.errors import InputError, os_error_message
from spa_export.safety.interrupts import deferred
from spa_export.safety.ownership import absolute, foreign_contents, nearest_existing, write_marker


def staging_dir(out: Path) -> Path:
    """A fresh hidden directory beside ``out``, or in its nearest existing ancestor.

    Missing parents of ``out`` are created only by :func:`publish`, so a failed
    or interrupted build leaves no empty directories behind. The ancestor is on
    the same file system as the parents created below it: the rename stays atomic.
    The name is cut so that it fits the file system whatever ``out``'s length.
    """
    out = absolute(out)
    parent = nearest_existing(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:64]}.staging-", dir=parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0o700 would become the published folder's mode
    return staging


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


def publish(staging: Path, out: Path, *, option: str = "--out") -> None:
    """Move ``staging`` to ``out``: the old ``out`` (spa-export's own, or empty) is replaced as a whole.

    ``out`` is checked again first: if a file that spa-export did not write
    appeared there while the build ran, nothing is replaced. Where the kernel
    can, an existing ``out`` is swapped with ``staging`` in one atomic step (the
    old contents then sit in ``staging`` and are removed), so even a process
    killed mid-publish leaves either the old or the new ``out``, never none.
    Elsewhere the old ``out`` is renamed aside first.
    """
    out = absolute(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{option} {out}: became a link or a file while the build ran; nothing was replaced")
    if out.is_dir():
        problem = foreign_contents(out)
        if problem is not None:
            raise InputError(f"{option} {out}: {problem} (it changed while the build ran); "
                             "nothing was replaced")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir() and _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)
        return
    old = None
    if out.exists():
        old = out.parent / f".{out.name[:64]}.old-{os.getpid()}"
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish_whole(staging: Path, out: Path, *, kind: str = "build", option: str = "--out") -> None:
    """Mark ``staging`` as spa-export's output and :func:`publish` it, as one step signals cannot split.

    A Ctrl-C or SIGTERM during publication takes effect once it is done, as
    :class:`~spa_export.safety.interrupts.InterruptedAfterPublish`: the output is
    complete and the message says so, rather than "nothing was written".
    """
    write_marker(staging, kind, __version__)
    with deferred(out):
        publish(staging, out, option=option)


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def staged(out: Path, *, option: str = "--out") -> Iterator[Path]:
    """A staging directory for ``out``, removed on any failure or signal.

    A write that fails there (a full disk, a quota) is reported as a failure
    to write ``out``, which is what it is for the user; nothing was published.
    """
    staging = staging_dir(out)
    try:
        yield staging
    except OSError as err:
        discard(staging)
        inside = err.filename is None or str(err.filename).startswith(str(staging))
        if inside and not isinstance(err, FileNotFoundError):
            raise InputError(f"{option} {out}: cannot write the output: {os_error_message(err)}; "
                             "nothing was written") from err
        raise
    except BaseException:
        discard(staging)  # a no-op once published
        raise


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file through ``write(fh)`` into a temporary file beside ``path``, then rename it.

    Missing folders above ``path`` are created. A failure or a signal at any
    point removes the temporary file and the folders created for it: ``path``
    is either as it was or complete. The caller has checked that ``path`` may
    be replaced (:func:`spa_export.safety.ownership.check_out_file`).
    """
    path = absolute(path)
    created = []
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    tmp = path.parent / f".{path.name[:64]}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    try:
        for folder in reversed(created):
            folder.mkdir()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(tmp, flags, 0o666)  # 0o666: the umask decides, as for open()
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    with contextlib.suppress(OSError):  # persist the rename; not possible everywhere
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))
