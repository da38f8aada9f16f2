"""Adaptive latency timing, and fair comparison of models on a noisy machine.

One configuration (a model at a batch size) is warmed up, then run in blocks
until the median latency is stable (its relative spread over the last few blocks
is under ``rel_tol``) or the time budget is spent, and never fewer than
``min_iterations`` runs.

:func:`compare` times several models (``dense``, ``pruned``) by alternating
them in blocks in the same process, with one untimed run after each switch, so
that drifts of the machine (frequency scaling, other load) hit both alike and
their ratio stays fair. Before anything is timed, every model's outputs are
checked to be finite: a timing of a model that produces infinities means nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spa_export.runtime.runner import Feed, Runner
from spa_export.safety.errors import InputError

Progress = Callable[[str], None]


class NonFiniteOutputError(InputError):
    """A model whose outputs contain inf or NaN on the benchmark's inputs."""


@dataclass(frozen=True)
class TimingConfig:
    """How long and how finely to time each configuration."""

    #: Seconds of timed runs per model and batch size (``compare`` of two models
    #: spends twice this per batch size), unless stable earlier.
    budget_s: float = 2.0
    #: Untimed runs of each model before timing.
    warmup_runs: int = 3
    #: Timed runs of each model never fewer than this, whatever the budget.
    min_iterations: int = 10
    #: A block ends after this many runs ...
    block_runs: int = 20
    #: ... or this many seconds, whichever comes first.
    block_s: float = 0.1
    #: Stable when the medians after the last ``stable_blocks`` blocks differ by less
    #: than this fraction of the latest one.
    rel_tol: float = 0.01
    stable_blocks: int = 3

    def __post_init__(self) -> None:
        if not self.budget_s > 0:
            raise InputError(f"the time budget must be positive, got {self.budget_s}")
        for name in ("warmup_runs",):
            if getattr(self, name) < 0:
                raise InputError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("min_iterations", "block_runs", "stable_blocks"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.block_s > 0 or not self.rel_tol > 0:
            raise InputError("block_s and rel_tol must be positive")


@dataclass
class Stats:
    """Latency statistics of one model at one batch size, in milliseconds."""

    batch: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    throughput_per_s: float
    stable: bool
    #: Medians of extra stages the runner reports (``h2d_ms``, ``d2h_ms``).
    extras_ms: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch": self.batch,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "std_ms": self.std_ms,
            "iterations": self.iterations,
            "throughput_per_s": self.throughput_per_s,
            "stable": self.stable,
        }
        out.update(self.extras_ms)
        return out


def summarize(
    samples_s: Sequence[float],
    batch: int,
    *,
    extras_s: Mapping[str, Sequence[float]] | None = None,
    stable: bool = False,
) -> Stats:
    """Statistics of per-run latencies given in seconds."""
    if len(samples_s) == 0:
        raise ValueError("no samples to summarize")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    mean = float(ms.mean())
    extras = {
        key: float(np.median(np.asarray(values, dtype=np.float64) * 1e3))
        for key, values in (extras_s or {}).items()
        if len(values)
    }
    return Stats(
        batch=batch,
        iterations=int(ms.size),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        std_ms=float(ms.std()),
        throughput_per_s=batch * 1e3 / mean if mean > 0 else float("inf"),
        stable=stable,
        extras_ms=extras,
    )


def check_finite(name: str, outputs: Mapping[str, np.ndarray], *, batch: int | None = None) -> None:
    """Raise :class:`NonFiniteOutputError` if any output holds inf or NaN."""
    for out_name, value in outputs.items():
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.inexact):
            continue
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            where = f" at batch {batch}" if batch is not None else ""
            raise NonFiniteOutputError(
                f"model '{name}': output '{out_name}' has {bad} non-finite value(s) "
                f"(inf or NaN) of {array.size}{where}; refusing to time a model whose "
                "outputs are not finite"
            )


def _is_stable(medians: list[float], config: TimingConfig) -> bool:
    if len(medians) < config.stable_blocks:
        return False
    recent = medians[-config.stable_blocks:]
    latest = recent[-1]
    if latest <= 0:
        return True
    return (max(recent) - min(recent)) / latest < config.rel_tol


class _Series:
    """Samples of one runner at one batch size."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.extras: dict[str, list[float]] = {}
        self.medians: list[float] = []

    def add(self, seconds: float, extras: Mapping[str, float]) -> None:
        self.samples.append(seconds)
        for key, value in extras.items():
            self.extras.setdefault(key, []).append(value)


def _run_block(
    runner: Runner, feed: Feed, series: _Series, config: TimingConfig, deadline: float
) -> None:
    start = time.perf_counter()
    runs = 0
    while True:
        _, seconds, extras = runner.infer_timed(feed)
        series.add(seconds, extras)
        runs += 1
        now = time.perf_counter()
        if runs >= config.block_runs or now - start >= config.block_s or now >= deadline:
            return


def _time_batch(
    runners: Mapping[str, Runner], feed: Feed, batch: int, config: TimingConfig
) -> dict[str, Stats]:
    for name, runner in runners.items():
        check_finite(name, runner.infer(feed), batch=batch)
    for runner in runners.values():
        for _ in range(config.warmup_runs):
            runner.infer(feed)

    series = {name: _Series() for name in runners}
    alternate = len(runners) > 1
    deadline = time.perf_counter() + config.budget_s * len(runners)
    while True:
        for name, runner in runners.items():
            if alternate:
                runner.infer(feed)  # untimed: the first run after a switch pays for it
            _run_block(runner, feed, series[name], config, deadline)
            series[name].medians.append(float(np.median(series[name].samples)))
        enough = all(len(s.samples) >= config.min_iterations for s in series.values())
        stable = all(_is_stable(s.medians, config) for s in series.values())
        if enough and (stable or time.perf_counter() >= deadline):
            break
    return {
        name: summarize(
            s.samples, batch, extras_s=s.extras, stable=_is_stable(s.medians, config)
        )
        for name, s in series.items()
    }


def compare(
    runners: Mapping[str, Runner],
    feeds_by_batch: Mapping[int, Feed],
    *,
    config: TimingConfig | None = None,
    progress: Progress | None = None,
) -> dict[int, dict[str, Stats]]:
    """Time every runner at every batch size, alternating runners in blocks.

    ``runners`` must be active and accept the same feed; returns
    ``{batch: {runner label: Stats}}``.
    """
    if not runners:
        raise InputError("nothing to time: no runners given")
    config = config if config is not None else TimingConfig()
    results: dict[int, dict[str, Stats]] = {}
    for batch, feed in feeds_by_batch.items():
        results[batch] = _time_batch(runners, feed, batch, config)
        if progress is not None:
            parts = [
                f"{name} p50 {s.p50_ms:.3f} ms ({s.iterations} runs)"
                for name, s in results[batch].items()
            ]
            progress(f"batch {batch}: " + ", ".join(parts))
    return results


def time_runner(
    runner: Runner, feed: Feed, *, batch: int, config: TimingConfig | None = None
) -> Stats:
    """Time one active runner on one feed."""
    return compare({runner.name: runner}, {batch: feed}, config=config)[batch][runner.name]
