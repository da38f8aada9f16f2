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


def test_an_error_without_a_message_is_named_by_its_type() -> None:
    from spa_export.safety.errors import error_line, first_line

    assert first_line(AssertionError()) == "AssertionError" and error_line(AssertionError()) == "AssertionError"
    assert first_line(ValueError("  bad\nmore")) == "bad" and error_line(ValueError("x" * 300), 5) == "ValueError: xxxxx"


def test_inputs_that_trip_an_assert_in_the_network_are_a_clear_error() -> None:
    import pytest
    import torch

    from spa_export.nets.metrics import checked_macs
    from spa_export.runtime.inputs import as_inputs
    from spa_export.safety.errors import InputError

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] != 256:   # a network's bare assert (pytest would add a message to one written here)
                raise AssertionError()
            return x

    with pytest.raises(InputError, match=r"--input-shape 1,3,64,64 does not fit 'a:b': AssertionError$"):
        checked_macs(Fixed(), as_inputs((1, 3, 64, 64)), "a:b")
