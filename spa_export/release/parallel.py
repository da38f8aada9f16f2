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

from spa_export.safety.memory import release
from spa_export.safety.progress import StageProgress
from spa_export.stages.load import Base
from spa_export.stages.pipeline import BuildOptions, run_task, stage_names

Job = tuple[str, BuildOptions, Path]


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _start_worker(counter: object, jobs: int) -> None:
    """Ignore Ctrl-C (the parent decides), exit cleanly on SIGTERM, and take this worker's share of the CPUs.

    The parent stops workers with SIGTERM (``Pool.terminate``). Killed by the
    default handler, a worker would skip its clean-up, and the locks that the
    libraries it ran had made (torch.fx's progress bar makes one through
    tqdm) would be reported as leaked by multiprocessing's resource tracker,
    on the user's terminal, after the parent's last line. Raised as
    ``SystemExit`` instead, the worker's exit runs its finalizers first.

    Without a share, every worker would run as many threads as the machine has
    cores, and N workers would fight over them: slower than one process.
    ONNX Runtime's thread count follows the affinity mask, torch's is set here.
    """
    import os

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with counter.get_lock():  # type: ignore[attr-defined]
        index = counter.value  # type: ignore[attr-defined]
        counter.value += 1  # type: ignore[attr-defined]
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return
    share = [c for k, c in enumerate(cpus) if k % jobs == index % jobs] or cpus
    try:
        os.sched_setaffinity(0, share)
    except OSError:
        return
    torch.set_num_threads(len(share))


def _work(args: tuple[str, BuildOptions, Path, Base, int, int]) -> tuple[str, dict]:
    name, opts, folder, base, index, total = args
    folder.mkdir()
    progress = StageProgress(stage_names(opts), quiet=opts.quiet, prefix=f"{name} ({index}/{total}) ")
    return name, run_task(opts, base, folder, progress)


def build_in_parallel(base: Base, jobs_list: list[Job], *, jobs: int, quiet: bool) -> dict[str, dict]:
    """Run :func:`~spa_export.stages.pipeline.run_task` for every job in up to ``jobs`` processes."""
    import torch.multiprocessing as tmp

    assert base.state is not None  # our own invariant: the package keeps the base for every task
    for tensor in base.state.values():
        tensor.share_memory_()
    ctx = tmp.get_context("spawn")
    total = len(jobs_list)
    work = [(name, opts, folder, base, i, total) for i, (name, opts, folder) in enumerate(jobs_list, 1)]
    reports: dict[str, dict] = {}
    workers = min(jobs, total)
    pool = ctx.Pool(processes=workers, initializer=_start_worker, initargs=(ctx.Value("i", 0), workers))
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
