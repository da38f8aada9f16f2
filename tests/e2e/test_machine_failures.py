"""The machine's own failures: a full disk leaves nothing behind and says so (exit 2).

The real case mounts a small tmpfs (root only; skipped elsewhere, with the
reason) and builds into it: the file system fills up while the build writes.
The simulated case runs everywhere: the export stage fails with ENOSPC.
SIGTERM is covered with the other signals in ``test_interrupt.py``.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bad_inputs import EXAMPLE_BASE, EXAMPLE_SPA, invoke, tree


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB file system: room for one small model, not for a build with dense.onnx besides."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the simulated full-disk test runs instead)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _args(out: Path, *extra: str) -> list[str]:
    return ["build", "--base", str(EXAMPLE_BASE), "--spa", str(EXAMPLE_SPA), "--input-shape", "1,3,32,32",
            "--out", str(out), "-q", *extra]


def test_full_disk_leaves_the_earlier_output_and_nothing_else(small_disk: Path) -> None:
    out = small_disk / "out"
    first = invoke(_args(out))
    assert first.exit_code == 0, first.stderr
    before = tree(small_disk)
    result = invoke(_args(out, "--bench", "cpu", "--budget", "0.05", "--batch", "1"))  # dense.onnx too
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"error: --out {out}: cannot write the output: No space left on device")
    assert "nothing was written" in result.stderr and len(result.stderr.splitlines()) == 1
    assert tree(small_disk) == before     # the earlier build, whole; no staging directory left


def test_simulated_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spa_export.stages.export as export

    def full(model: object, shape: object, path: Path, **kw: object) -> None:
        path.write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(export, "export_onnx", full)
    out = tmp_path / "out"
    result = invoke(_args(out))
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith(f"error: --out {out}: cannot write the output: No space left on device (")
    assert result.stderr.rstrip().endswith("free some space or write elsewhere; nothing was written")
    assert list(tmp_path.iterdir()) == []
