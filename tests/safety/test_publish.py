"""Atomic publication of an output folder and of single files (spa_export.safety.publish)."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from spa_export.safety import publish as pub
from spa_export.safety.errors import InputError
from spa_export.safety.interrupts import InterruptedAfterPublish
from spa_export.safety.ownership import MARKER


def _staged(parent: Path, out: Path, files: dict[str, bytes]) -> Path:
    staging = pub.staging_dir(out)
    assert staging.parent == parent and staging.name.startswith(f".{out.name}.staging-")
    for name, data in files.items():
        (staging / name).write_bytes(data)
    return staging


def _contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != MARKER}


def test_publish_creates_missing_parents_only_when_publishing(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    staging = _staged(tmp_path, out, {"model.onnx": b"new"})   # staged in the nearest existing ancestor
    assert not (tmp_path / "a").exists()
    pub.publish_whole(staging, out)
    assert _contents(out) == {"model.onnx": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_published_folder_is_marked_and_takes_the_umask(tmp_path: Path) -> None:
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        pub.publish_whole(_staged(tmp_path, out, {"model.onnx": b"abc"}), out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755   # not mkdtemp's 0o700
    marker = json.loads((out / MARKER).read_text())
    assert marker["tool"] == "spa-export" and marker["kind"] == "build"
    assert marker["files"] == {"model.onnx": {
        "size": 3, "sha256": "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}}


def test_publish_replaces_its_own_earlier_output_as_a_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pub.publish_whole(_staged(tmp_path, out, {"model.onnx": b"old", "dense.onnx": b"old dense"}), out)
    pub.publish_whole(_staged(tmp_path, out, {"model.onnx": b"new", "report.json": b"{}"}), out)
    assert _contents(out) == {"model.onnx": b"new", "report.json": b"{}"}   # dense.onnx gone with the old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_publish_refuses_a_file_that_appeared_during_the_build(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pub.publish_whole(_staged(tmp_path, out, {"model.onnx": b"old"}), out)
    staging = _staged(tmp_path, out, {"model.onnx": b"new"})
    (out / "notes.txt").write_bytes(b"written by the user while the build ran")
    with pytest.raises(InputError, match="holds files spa-export did not write: notes.txt"):
        pub.publish_whole(staging, out)
    assert (out / "notes.txt").read_bytes() == b"written by the user while the build ran"
    assert (out / "model.onnx").read_bytes() == b"old"


def test_signal_during_publication_waits_for_it_and_says_the_output_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    pub.publish_whole(_staged(tmp_path, out, {"model.onnx": b"old"}), out)
    staging = _staged(tmp_path, out, {"model.onnx": b"new"})
    real = pub.publish

    def interrupted_midway(staging: Path, out: Path, **kw: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)   # the handler runs at once, in this thread
        real(staging, out, **kw)

    monkeypatch.setattr(pub, "publish", interrupted_midway)
    with pytest.raises(InterruptedAfterPublish) as caught:
        pub.publish_whole(staging, out)
    assert caught.value.out == out and caught.value.signum == signal.SIGTERM
    assert str(caught.value) == f"terminated: {out} was already written in full"
    assert _contents(out) == {"model.onnx": b"new"}
    assert not staging.exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_publication_without_a_signal_returns_quietly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pub.publish_whole(_staged(tmp_path, out, {"x": b"1"}), out)
    assert _contents(out) == {"x": b"1"}


def test_an_ignored_sigint_stays_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    staging = _staged(tmp_path, out, {"x": b"1"})
    real = pub.publish

    def interrupted_midway(staging: Path, out: Path, **kw: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real(staging, out, **kw)

    monkeypatch.setattr(pub, "publish", interrupted_midway)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pub.publish_whole(staging, out)   # a background job ignores SIGINT: no error
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _contents(out) == {"x": b"1"}


def test_staging_name_fits_the_file_system_whatever_the_output_name(tmp_path: Path) -> None:
    out = tmp_path / ("n" * 250)    # a legal name; ".<name>.staging-XXXX" would not be
    staging = pub.staging_dir(out)
    assert len(staging.name) < 100
    pub.publish_whole(staging, out)
    assert out.is_dir()


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_bytes(b"before")

    def fails(fh: object) -> None:
        fh.write(b"half")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        pub.atomic_write(target, fails)
    assert target.read_bytes() == b"before"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    pub.atomic_write_bytes(target, b"after")
    assert target.read_bytes() == b"after"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
