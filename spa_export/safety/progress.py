"""Stage progress on stderr: one line per stage, quiet on request.

Nothing of it enters report files; stage times are recorded separately.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StageProgress:
    """Prints ``[i/n] stage ...`` and ``done in X s`` lines; silent when ``quiet``."""

    def __init__(self, stages: list[str], *, quiet: bool = False, stream: TextIO | None = None,
                 prefix: str = "") -> None:
        self.stages = stages
        self.quiet = quiet
        self.prefix = prefix
        self.stream = stream if stream is not None else sys.stderr
        self.times: list[dict] = []

    def _line(self, text: str) -> None:
        """One whole line in one write: ``print`` writes the text and its newline apart, and a signal
        handled between the two (Ctrl-C raises in the handler) left the line open, so the
        interrupt's own message was glued to it (``[1/8] load ...interrupted: ...``)."""
        self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        if not self.quiet:
            self._line(f"      {self.prefix}{message}")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        index = self.stages.index(name) + 1 if name in self.stages else len(self.times) + 1
        if not self.quiet:
            self._line(f"[{index}/{len(self.stages)}] {self.prefix}{name} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.times.append({"name": name, "seconds": round(seconds, 4)})
        if not self.quiet:
            self._line(f"      {self.prefix}{name} done in {seconds:.2f} s")
