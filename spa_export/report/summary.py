"""summary.md of a package: its tasks side by side, from the manifest and the tasks' reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spa_export.report.markdown import _table


def _pct(value: object) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "n/a"


def _fraction(part: object, whole: object) -> str:
    if not isinstance(part, (int, float)) or not isinstance(whole, (int, float)) or not whole:
        return "n/a"
    return f"{part:,} ({part / whole:.1%})"


def _bytes(n: object) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def channels_kept(report: Mapping[str, Any]) -> tuple[int, int]:
    """Channels kept and channels in all of the network's dependency groups."""
    groups = report.get("groups") or []
    return (sum(int(g.get("kept") or 0) for g in groups), sum(int(g.get("channels") or 0) for g in groups))


def _recipe_order(manifest: Mapping[str, Any], reports: Mapping[str, Any]) -> list[str]:
    """The tasks as the recipe lists them (then any other, by name)."""
    listed = [t for t in ((manifest.get("content") or {}).get("recipe") or {}).get("tasks") or [] if t in reports]
    return listed + sorted(set(reports) - set(listed))


def beyond_masks(report: Mapping[str, Any]) -> str:
    """Why a task keeps channels the masks remove: rounding, and groups kept whole (with the first reason)."""
    parts = []
    rounding = report.get("rounding") or {}
    extra = rounding.get("extra_channels")
    if isinstance(extra, int) and extra > 0:
        parts.append(f"{extra} channel(s) kept to round groups to multiples of {rounding.get('multiple')} "
                     f"({rounding.get('requested')}: faster on this target)")
    whole = report.get("groups_kept_whole") or []
    if whole:
        parts.append(f"{len(whole)} group(s) kept whole, such as {whole[0].get('id')}: {whole[0].get('reason')}")
    return "; ".join(parts)


def timing_threads(reports: Mapping[str, Mapping[str, Any]]) -> list[int]:
    """The intra-op thread counts the tasks' CPU timings ran with (sorted, once each)."""
    return sorted({int(e["threads"]) for r in reports.values() for e in r.get("latency") or []
                   if e.get("device") == "cpu" and isinstance(e.get("threads"), int)})


def _latency(report: Mapping[str, Any]) -> str:
    rows = [s for s in report.get("speedup") or [] if s.get("speedup")]
    if not rows:
        return "not timed"
    s = min(rows, key=lambda r: (r["device"] != "cpu", not r.get("stable", True), r["batch"]))
    int8 = f"; int8 {s['int8_p50_ms']:.3g} ms, x{s['int8_over_pruned']:.2f} over pruned" if "int8_p50_ms" in s else ""
    return (f"{s['dense_p50_ms']:.3g} -> {s['pruned_p50_ms']:.3g} ms (x{s['speedup']:.2f}, "
            f"{s['device']} batch {s['batch']}{int8}" + ("" if s.get("stable", True) else "; **not stable: noise**")
            + ")")


def _accuracy(report: Mapping[str, Any]) -> str:
    a = report.get("accuracy")
    if not isinstance(a, Mapping):
        return "no evaluation set"
    int8 = f" / {_pct(a['int8'])}" if isinstance(a.get("int8"), (int, float)) else ""
    return f"{_pct(a.get('reference'))} / {_pct(a.get('exported'))}{int8} (n={a.get('n')})"


def _any_int8(reports: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(isinstance(r.get("int8"), Mapping) for r in reports.values())


def render_summary(manifest: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]],
                   recipe_name: str | None = None) -> str:
    content = manifest.get("content") or {}
    base = content.get("base") or {}
    base_bytes = base.get("bytes")
    lines = [f"# Package summary{f': {recipe_name}' if recipe_name else ''}", ""]
    part = manifest.get("part")
    if part:
        lines += [f"A part of the recipe: tasks {', '.join(part['tasks'])} of {len(part['of'])} "
                  "(merge the parts with `spa-export assemble`).", ""]
    lines += [f"Base {base.get('digest', 'n/a')}" + (f", {_bytes(base_bytes)}" if base_bytes else "")
              + f"; tool {content.get('tool', {}).get('version', 'n/a')}; "
              f"content {manifest.get('content_sha256', 'n/a')}.", ""]
    rows, notes = [], []
    for name in _recipe_order(manifest, reports):
        r = reports[name]
        kept, total = channels_kept(r)
        why = beyond_masks(r)
        if why:
            notes.append(f"{len(notes) + 1}. {name}: {why}.")
        spa_bytes = r.get("spa_bytes")
        spa = _bytes(spa_bytes) + (f" ({spa_bytes / base_bytes:.2%} of base)"
                                   if isinstance(spa_bytes, int) and base_bytes else "")
        rows.append((name, spa, f"{(r.get('learned_params') or {}).get('total', 0):,}",
                     _fraction(r["params"]["pruned"], r["params"]["dense"]),
                     _fraction(r["macs"]["pruned"], r["macs"]["dense"]),
                     _fraction(kept, total) + (f" ({len(notes)})" if why else ""), _accuracy(r), _latency(r),
                     "yes" if r["verification"]["passed"] else "**no**"))
    lines += _table(("Task", "SPA file", "Learned params", "Params kept", "MACs kept", "Channels kept",
                     "Accuracy: reference / exported" + (" / int8" if _any_int8(reports) else ""),
                     "Latency p50: dense -> pruned", "Verified"), rows)
    if notes:
        lines += ["", "Channels kept beyond what the masks remove, and why:", "", *notes]
    threads = timing_threads(reports)
    if threads:
        import os

        cpus = os.cpu_count() or 0
        lines += ["", f"CPU latencies were timed with {', '.join(map(str, threads))} intra-op thread(s) per task"
                  + (f", fewer than this machine's {cpus} CPUs: `-j` workers share the CPUs, so compare these "
                     "latencies only with a build made with the same `-j`" if max(threads) < cpus else "") + "."]
    lines += ["", "Accuracy is held-out accuracy of the task's masked reference network and of the exported "
              "`model.onnx`" + (" (and of `model.int8.onnx`, quantized from it: not exact, gated by its accuracy "
                                "drop)" if _any_int8(reports) else "") + "; each task's `report.md` has the details.", ""]
    return "\n".join(lines)
