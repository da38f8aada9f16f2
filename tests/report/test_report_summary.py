"""summary.md: the tasks side by side, in the recipe's order, saying why channels stay beyond the masks."""

from __future__ import annotations

from spa_export.report.summary import render_summary


def _report(extra: int, whole: list[dict]) -> dict:
    return {"params": {"dense": 1000, "pruned": 400}, "macs": {"dense": 10_000, "pruned": 3000},
            "verification": {"passed": True}, "learned_params": {"total": 50}, "spa_bytes": 2048,
            "groups": [{"kept": 12, "channels": 32}, {"kept": 8, "channels": 16}],
            "rounding": {"requested": "auto", "multiple": 16, "extra_channels": extra},
            "groups_kept_whole": whole}


def test_tasks_in_recipe_order_with_the_reasons_for_channels_kept() -> None:
    manifest = {"content": {"recipe": {"tasks": ["zeta", "alpha", "mid"]}, "base": {"bytes": 8192}}}
    reports = {"alpha": _report(0, []), "zeta": _report(6, [{"id": "stem.0", "reason": "reaches the network output"}]),
               "mid": _report(0, [])}
    text = render_summary(manifest, reports)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "Task" not in line and "---" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["zeta", "alpha", "mid"]
    assert "20 (41.7%) (1)" in rows[0] and "(1)" not in rows[1] and "20 (41.7%) |" in rows[1]
    assert ("1. zeta: 6 channel(s) kept to round groups to multiples of 16 (auto: faster on this target); "
            "1 group(s) kept whole, such as stem.0: reaches the network output.") in text
    assert "2. " not in text


def test_the_summary_says_how_many_threads_timed_the_tasks(monkeypatch) -> None:
    manifest = {"content": {"recipe": {"tasks": ["a", "b"]}}}
    reports = {name: {**_report(0, []), "latency": [{"device": "cpu", "threads": 1, "model": "dense", "batch": 1}]}
               for name in ("a", "b")}
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    text = render_summary(manifest, reports)
    assert ("CPU latencies were timed with 1 intra-op thread(s) per task, fewer than this machine's 2 CPUs: `-j` "
            "workers share the CPUs, so compare these latencies only with a build made with the same `-j`.") in text
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert "CPU latencies were timed with 1 intra-op thread(s) per task." in render_summary(manifest, reports)
    assert "intra-op" not in render_summary(manifest, {"a": _report(0, [])})


def test_the_summary_shows_a_settled_timing_or_says_it_is_noise() -> None:
    manifest = {"content": {"recipe": {"tasks": ["a"]}}}
    rows = [{"device": "cpu", "batch": 1, "dense_p50_ms": 2.0, "pruned_p50_ms": 3.0, "speedup": 0.67, "stable": False},
            {"device": "cpu", "batch": 64, "dense_p50_ms": 9.0, "pruned_p50_ms": 3.0, "speedup": 3.0, "stable": True}]
    text = render_summary(manifest, {"a": {**_report(0, []), "speedup": rows}})
    assert "9 -> 3 ms (x3.00, cpu batch 64)" in text and "noise" not in text
    text = render_summary(manifest, {"a": {**_report(0, []), "speedup": rows[:1]}})
    assert "2 -> 3 ms (x0.67, cpu batch 1; **not stable: noise**)" in text
