"""Atomic publication of ``--out`` (spa_export.publish)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from spa_export import publish as pub
from spa_export.errors import InputError, InterruptedAfterPublish


def _staged(parent: Path, out: Path, files: dict[str, bytes]) -> Path:
    staging = pub.staging_dir(out)
    assert staging.parent == parent and staging.name.startswith(f".{out.name}.staging-")
    for name, data in files.items():
        (staging / name).write_bytes(data)
    return staging


def _contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_publish_creates_missing_parents_only_when_publishing(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    staging = _staged(tmp_path, out, {"model.onnx": b"new"})   # staged in the nearest existing ancestor
    assert not (tmp_path / "a").exists()
    pub.publish(staging, out)
    assert _contents(out) == {"model.onnx": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_publish_replaces_the_old_output_as_a_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    (out / "dense.onnx").write_bytes(b"old dense")              # not in the new build: must go
    staging = _staged(tmp_path, out, {"model.onnx": b"new", "report.json": b"{}"})
    pub.publish(staging, out)
    assert _contents(out) == {"model.onnx": b"new", "report.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ctrl_c_during_publication_waits_for_it_and_says_the_output_is_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    staging = _staged(tmp_path, out, {"model.onnx": b"new"})
    real = pub.publish

    def interrupted_midway(staging: Path, out: Path) -> None:
        os.kill(os.getpid(), signal.SIGINT)   # the handler runs at once, in this thread
        real(staging, out)

    monkeypatch.setattr(pub, "publish", interrupted_midway)
    with pytest.raises(InterruptedAfterPublish) as caught:
        pub.publish_whole(staging, out)
    assert caught.value.out == out
    assert str(caught.value) == f"interrupted: {out} was already written in full"
    assert _contents(out) == {"model.onnx": b"new"}
    assert not staging.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored


def test_publication_without_ctrl_c_returns_quietly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pub.publish_whole(_staged(tmp_path, out, {"x": b"1"}), out)
    assert _contents(out) == {"x": b"1"}


def test_an_ignored_sigint_stays_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    staging = _staged(tmp_path, out, {"x": b"1"})
    real = pub.publish

    def interrupted_midway(staging: Path, out: Path) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real(staging, out)

    monkeypatch.setattr(pub, "publish", interrupted_midway)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pub.publish_whole(staging, out)   # a background job ignores SIGINT: no error
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _contents(out) == {"x": b"1"}


@pytest.mark.parametrize("kind", ["file", "unwritable"])
def test_check_out_dir_refuses(tmp_path: Path, kind: str) -> None:
    if kind == "file":
        out = tmp_path / "out"
        out.write_text("x")
        expect = "exists and is not a directory"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write in a read-only directory")
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        out = ro / "out"
        expect = "cannot write in"
    with pytest.raises(InputError, match=expect):
        pub.check_out_dir(out)
