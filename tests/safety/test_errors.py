"""Typed errors and the input-file check (spa_export.safety.errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spa_export.safety.errors import CheckpointError, InputError, not_a_file, require_file


def test_not_a_file_says_what_the_path_is(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert not_a_file(tmp_path / "f") is None
    assert not_a_file(tmp_path / "d") == "is a directory, not a file"
    assert not_a_file(tmp_path / "link") == "is a broken symbolic link"
    assert not_a_file(tmp_path / "nothing") == "no such file"


def test_require_file_raises_the_given_type_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"^{tmp_path}: is a directory, not a file$"):
        require_file(tmp_path, CheckpointError)
    with pytest.raises(InputError, match="no such file"):
        require_file(tmp_path / "nothing")
