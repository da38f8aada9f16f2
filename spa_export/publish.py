"""Atomic publication of a build's output directory.

A build writes into a staging directory beside ``--out`` and publishes it
with renames only when every stage has succeeded, so a failed or interrupted
build leaves ``--out`` as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from spa_export.errors import InputError


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


def staging_dir(out: Path) -> Path:
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.resolve().parent))


def publish(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``: the old ``out`` (if any) is replaced as a whole."""
    out = out.resolve()
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


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
