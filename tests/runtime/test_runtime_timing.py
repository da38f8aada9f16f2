"""Adaptive timing and the alternating comparison, on deterministic fake runners."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spa_export.runtime.onnxrt import OnnxRuntimeRunner
from spa_export.runtime.runner import Feed, InputMetadata, Runner
from spa_export.runtime.timing import (
    NonFiniteOutputError,
    TimingConfig,
    check_finite,
    compare,
    summarize,
    time_runner,
)
from spa_export.safety.errors import InputError


class FakeRunner(Runner):
    """Reports a fixed latency and logs every call (shared log across runners)."""

    def __init__(self, name: str, log: list[tuple[str, str]], seconds: float = 1e-3,
                 value: float = 1.0, extras: Mapping[str, float] | None = None) -> None:
        super().__init__(name)
        self.log, self.seconds, self.value = log, seconds, value
        self.extras = dict(extras or {})

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        self.log.append((self.name, "untimed"))
        return {"y": np.full((2,), self.value, dtype=np.float32)}

    def infer_timed(self, feed: Feed) -> tuple[dict[str, np.ndarray], float, dict[str, float]]:
        self._require_active()
        self.log.append((self.name, "timed"))
        return {"y": np.ones(2, np.float32)}, self.seconds, dict(self.extras)

    def _input_metadata(self) -> InputMetadata:
        return {"x": (np.dtype(np.float32), (None, 2))}


FEED = {"x": np.zeros((1, 2), np.float32)}


def test_summarize_percentiles_ordered() -> None:
    samples = list(np.random.default_rng(0).exponential(1e-3, size=500))
    stats = summarize(samples, batch=4, extras_s={"h2d_ms": [1e-4] * 10})
    assert stats.iterations == 500
    assert stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.p50_ms == pytest.approx(np.median(samples) * 1e3)
    assert stats.mean_ms == pytest.approx(np.mean(samples) * 1e3)
    assert stats.std_ms == pytest.approx(np.std(samples) * 1e3)
    assert stats.throughput_per_s == pytest.approx(4 * 1e3 / stats.mean_ms)
    assert stats.extras_ms == {"h2d_ms": pytest.approx(0.1)}
    assert stats.as_dict()["h2d_ms"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        summarize([], batch=1)


def test_stable_latency_stops_after_stable_blocks() -> None:
    log: list[tuple[str, str]] = []
    config = TimingConfig(budget_s=30.0, warmup_runs=2, min_iterations=5, block_runs=7,
                          stable_blocks=3)
    with FakeRunner("a", log) as runner:
        stats = time_runner(runner, FEED, batch=1, config=config)
    # constant latency: the median is stable once three blocks have run
    assert stats.iterations == 3 * 7
    assert stats.stable and stats.p50_ms == pytest.approx(1.0)
    assert stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    # one finiteness check + two warm-up runs before anything timed; no switch runs alone
    assert log[:3] == [("a", "untimed")] * 3
    assert all(kind == "timed" for _, kind in log[3:])


def test_min_iterations_beat_the_budget() -> None:
    log: list[tuple[str, str]] = []
    config = TimingConfig(budget_s=1e-6, warmup_runs=0, min_iterations=25, block_runs=4)
    with FakeRunner("a", log) as runner:
        stats = time_runner(runner, FEED, batch=2, config=config)
    assert stats.iterations >= 25


def test_compare_alternates_blocks_with_untimed_switch_runs() -> None:
    log: list[tuple[str, str]] = []
    config = TimingConfig(budget_s=30.0, warmup_runs=1, min_iterations=5, block_runs=5,
                          stable_blocks=2)
    runners = {"dense": FakeRunner("dense", log, 2e-3), "pruned": FakeRunner("pruned", log, 1e-3)}
    for r in runners.values():
        r.activate()
    messages: list[str] = []
    results = compare(runners, {1: FEED, 4: FEED}, config=config, progress=messages.append)
    assert set(results) == {1, 4}
    for batch in (1, 4):
        assert results[batch]["dense"].p50_ms == pytest.approx(2.0)
        assert results[batch]["pruned"].p50_ms == pytest.approx(1.0)
        assert results[batch]["dense"].iterations == results[batch]["pruned"].iterations == 10
    assert len(messages) == 2 and "dense p50" in messages[0]
    # After the untimed checks and warm-ups, runs come in blocks: each block is
    # preceded by one untimed run of the same model, and models alternate.
    timed_blocks: list[str] = []
    previous = None
    for i, (name, kind) in enumerate(log):
        if kind == "timed" and previous != (name, "timed"):
            assert log[i - 1] == (name, "untimed"), "a block must follow an untimed run"
            timed_blocks.append(name)
        previous = (name, kind)
    assert timed_blocks[:4] == ["dense", "pruned", "dense", "pruned"]


def test_extras_are_reported_in_ms() -> None:
    with FakeRunner("gpu", [], extras={"h2d_ms": 5e-4, "d2h_ms": 2e-4}) as runner:
        stats = time_runner(runner, FEED, batch=1,
                            config=TimingConfig(budget_s=1.0, min_iterations=3, block_runs=3))
    assert stats.extras_ms == {"h2d_ms": pytest.approx(0.5), "d2h_ms": pytest.approx(0.2)}


def test_non_finite_outputs_refused_before_timing() -> None:
    log: list[tuple[str, str]] = []
    runners = {"ok": FakeRunner("ok", log), "bad": FakeRunner("bad", log, value=np.inf)}
    for r in runners.values():
        r.activate()
    with pytest.raises(NonFiniteOutputError, match="'bad'.*non-finite"):
        compare(runners, {1: FEED}, config=TimingConfig(budget_s=0.05))
    assert all(kind == "untimed" for _, kind in log)
    check_finite("ints", {"y": np.array([1, 2])})  # integer outputs are always finite
    with pytest.raises(NonFiniteOutputError):
        check_finite("nan", {"y": np.array([0.0, np.nan])})


def test_onnx_model_producing_inf_is_refused(tmp_path: Path) -> None:
    zeros = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    graph = helper.make_graph(
        [helper.make_node("Div", ["x", "zero"], ["y"])], "inf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [zeros])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "inf.onnx"
    onnx.save(model, str(path))
    feed = {"x": np.ones((2, 4), np.float32)}
    with OnnxRuntimeRunner(path, threads=1) as runner, \
            pytest.raises(NonFiniteOutputError, match="inf or NaN"):
        time_runner(runner, feed, batch=2, config=TimingConfig(budget_s=0.05))


def test_config_validation() -> None:
    with pytest.raises(InputError):
        TimingConfig(budget_s=0)
    with pytest.raises(InputError):
        TimingConfig(min_iterations=0)
    with pytest.raises(InputError):
        compare({}, {1: FEED})
