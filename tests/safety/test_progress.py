"""Stage progress lines on stderr."""

from __future__ import annotations

import io

from spa_export.safety.progress import StageProgress


class Writes(io.StringIO):
    """A stream that records each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_line_is_one_write_with_its_newline() -> None:
    """A signal handled between a line's text and its newline (print writes them apart) would leave
    the line open, and the interrupt's message would be glued to it."""
    stream = Writes()
    progress = StageProgress(["load", "plan"], stream=stream)
    with progress.stage("load"):
        progress.note("base read")
    assert stream.calls == ["[1/2] load ...\n", "      base read\n", stream.calls[2]]
    assert stream.calls[2].startswith("      load done in ") and stream.calls[2].endswith(" s\n")
    assert [t["name"] for t in progress.times] == ["load"]


def test_quiet_writes_nothing() -> None:
    stream = Writes()
    progress = StageProgress(["load"], stream=stream, quiet=True)
    with progress.stage("load"):
        progress.note("x")
    assert stream.calls == [] and progress.times[0]["name"] == "load"
