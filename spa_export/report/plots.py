"""The latency plot of report.md: p50 against batch size, dense against pruned.

matplotlib is imported inside :func:`plot_latency` and drawn on an Agg canvas
(no display, no pyplot global state).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _panels(latency: list[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[int, float, float, bool]]]]:
    """``{panel title: {model: [(batch, p50, p90, stable)]}}`` sorted by batch."""
    panels: dict[str, dict[str, list[tuple[int, float, float, bool]]]] = {}
    for e in latency:
        if not isinstance(e.get("p50_ms"), (int, float)) or not isinstance(e.get("batch"), int):
            continue
        title = f"{e.get('device', '?')} · {e.get('runtime', '?')}"
        if e.get("precision") and e["precision"] != "int8":   # int8 is drawn beside float32 dense and pruned
            title += f" {e['precision']}"
        p90 = e.get("p90_ms") if isinstance(e.get("p90_ms"), (int, float)) else e["p50_ms"]
        panels.setdefault(title, {}).setdefault(str(e.get("model")), []).append(
            (e["batch"], float(e["p50_ms"]), float(p90), e.get("stable", True) is not False))
    for models in panels.values():
        for points in models.values():
            points.sort()
    return panels


def _speedups(models: Mapping[str, list[tuple[int, float, float, bool]]]) -> list[tuple[int, float, bool]]:
    """``[(batch, dense p50 / pruned p50, both settled)]`` where both were timed."""
    dense = {b: (p50, ok) for b, p50, _, ok in models.get("dense", [])}
    return [(b, dense[b][0] / p50, ok and dense[b][1]) for b, p50, _, ok in models.get("pruned", [])
            if b in dense and p50 > 0]


def plot_latency(report: Mapping[str, Any], out_png: Path) -> Path | None:
    """Draw, per device and runtime, p50 latency against batch size (log scale, p90 as a whisker,
    timings that did not settle hollow) above the speedup per batch (dense p50 over pruned p50,
    with the MACs ratio as a line): the figure a reader looks for.

    Returns the PNG's path, or None (and writes nothing) when the report has
    no latency data or matplotlib (the ``report`` extra) is not installed.
    """
    panels = _panels(list(report.get("latency") or []))
    if not panels:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    macs = report.get("macs") or {}
    macs_ratio = (macs["dense"] / macs["pruned"]) if isinstance(macs.get("dense"), (int, float)) \
        and isinstance(macs.get("pruned"), (int, float)) and macs["pruned"] else None
    fig = Figure(figsize=(4.4 * len(panels), 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(2, len(panels), squeeze=False, height_ratios=(3, 2))
    colours = {"dense": "tab:blue", "pruned": "tab:orange"}
    for col, (title, models) in enumerate(panels.items()):
        ax, bars = grid[0][col], grid[1][col]
        batches = sorted({p[0] for points in models.values() for p in points})
        slot = {b: i for i, b in enumerate(batches)}   # batches evenly spaced, labelled as they are
        for model, points in models.items():
            xs = [slot[p[0]] for p in points]
            colour = colours.get(model)
            ax.plot(xs, [p[1] for p in points], color=colour, label=f"{model} p50", linewidth=1.5)
            ax.errorbar(xs, [p[1] for p in points], yerr=[[0] * len(points), [p[2] - p[1] for p in points]],
                        fmt="none", ecolor=colour, elinewidth=0.8, capsize=2)
            for x, p in zip(xs, points, strict=True):
                ax.plot([x], [p[1]], marker="o", color=colour, markerfacecolor=colour if p[3] else "white")
        ax.set_yscale("log")
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
        ax.set_title(title, loc="left", fontsize="medium")
        ax.set_ylabel("latency p50 (ms, log)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize="small", title="whisker: p90; hollow: not settled", title_fontsize="x-small")
        speed = _speedups(models)
        if speed:
            xs = [slot[b] for b, _, _ in speed]
            rects = bars.bar(xs, [s for _, s, _ in speed], color="tab:green", width=0.6)
            for rect, (_, s, ok) in zip(rects, speed, strict=True):
                if not ok:
                    rect.set_hatch("//")
                    rect.set_alpha(0.5)
                bars.annotate(f"×{s:.2f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                              ha="center", va="bottom", fontsize="small")
            bars.axhline(1.0, color="grey", linewidth=0.8)
            if macs_ratio:
                bars.axhline(macs_ratio, color="tab:red", linestyle="--", linewidth=1,
                             label=f"MACs ratio ×{macs_ratio:.2f}")
                bars.legend(fontsize="small", loc="lower right")
            top = max([s for _, s, _ in speed] + [macs_ratio or 0, 1.0])
            bars.set_ylim(0, top * 1.25)
        bars.set_xticks(range(len(batches)), [str(b) for b in batches])
        for a in (ax, bars):
            a.set_xlim(-0.5, len(batches) - 0.5)
        bars.set_xlabel("batch size")
        bars.set_ylabel("speedup (dense / pruned)")
        bars.grid(True, axis="y", alpha=0.25)
    task = report.get("task")
    if task:
        fig.suptitle(f"{task}: dense against pruned", x=0.01, ha="left", fontsize="large")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
