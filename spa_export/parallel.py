"""Tasks of a recipe built side by side in worker processes (``spa-export build RECIPE -j N``).

The base is read and digest-checked once, in the parent; its tensors are
moved to shared memory and handed to the workers, which map them rather than
copy them, so the base is in memory once however many workers run. Each
worker builds one task at a time into its folder of the staging directory
and returns the report. Ctrl-C and SIGTERM reach the parent, which stops the
workers (they ignore Ctrl-C themselves) and leaves nothing behind; the first
error of any task stops the whole build.
"""

from __future__ import annotations

import signal
from pathlib import Path

from spa_export.load import Base
from spa_export.memory import release
from spa_export.pipeline import BuildOptions, run_task, stage_names
from spa_export.progress import StageProgress

Job = tuple[str, BuildOptions, Path]


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides and stops the workers


def _work(args: tuple[str, BuildOptions, Path, Base, int, int]) -> tuple[str, dict]:
    name, opts, folder, base, index, total = args
    folder.mkdir()
    progress = StageProgress(stage_names(opts), quiet=opts.quiet, prefix=f"{name} ({index}/{total}) ")
    return name, run_task(opts, base, folder, progress)


def build_in_parallel(base: Base, jobs_list: list[Job], *, jobs: int, quiet: bool) -> dict[str, dict]:
    """Run :func:`~spa_export.pipeline.run_task` for every job in up to ``jobs`` processes."""
    import torch.multiprocessing as tmp

    assert base.state is not None  # our own invariant: the package keeps the base for every task
    for tensor in base.state.values():
        tensor.share_memory_()
    ctx = tmp.get_context("spawn")
    total = len(jobs_list)
    work = [(name, opts, folder, base, i, total) for i, (name, opts, folder) in enumerate(jobs_list, 1)]
    reports: dict[str, dict] = {}
    pool = ctx.Pool(processes=min(jobs, total), initializer=_ignore_interrupts)
    try:
        for name, report in pool.imap_unordered(_work, work):
            reports[name] = report
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
        del pool
        release()  # the pool's locks and queues, before an exit that may skip interpreter clean-up
    return {name: reports[name] for name, _, _ in jobs_list}
