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

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"      {self.prefix}{message}", file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        index = self.stages.index(name) + 1 if name in self.stages else len(self.times) + 1
        if not self.quiet:
            print(f"[{index}/{len(self.stages)}] {self.prefix}{name} ...", file=self.stream, flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.times.append({"name": name, "seconds": round(seconds, 4)})
        if not self.quiet:
            print(f"      {self.prefix}{name} done in {seconds:.2f} s", file=self.stream, flush=True)
