"""The latency plot of report.md: p50 against batch size, dense against pruned.

matplotlib is imported inside :func:`plot_latency` and drawn on an Agg canvas
(no display, no pyplot global state).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _panels(latency: list[Mapping[str, Any]]) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """``{panel title: {model: [(batch, p50, p90)]}}`` sorted by batch."""
    panels: dict[str, dict[str, list[tuple[int, float, float]]]] = {}
    for e in latency:
        if not isinstance(e.get("p50_ms"), (int, float)) or not isinstance(e.get("batch"), int):
            continue
        title = f"{e.get('device', '?')} · {e.get('runtime', '?')}"
        if e.get("precision"):
            title += f" {e['precision']}"
        p90 = e.get("p90_ms") if isinstance(e.get("p90_ms"), (int, float)) else e["p50_ms"]
        panels.setdefault(title, {}).setdefault(str(e.get("model")), []).append(
            (e["batch"], float(e["p50_ms"]), float(p90)))
    for models in panels.values():
        for points in models.values():
            points.sort()
    return panels


def plot_latency(report: Mapping[str, Any], out_png: Path) -> Path | None:
    """Draw p50 latency against batch size, one panel per device and runtime.

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

    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = {"dense": "tab:blue", "pruned": "tab:orange"}
    for ax, (title, models) in zip(axes, panels.items(), strict=True):
        batches: set[int] = set()
        for model, points in models.items():
            xs = [p[0] for p in points]
            batches.update(xs)
            ax.plot(xs, [p[1] for p in points], marker="o", label=f"{model} p50",
                    color=colours.get(model))
            ax.fill_between(xs, [p[1] for p in points], [p[2] for p in points], alpha=0.15,
                            color=colours.get(model), linewidth=0)
        if len(batches) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(batches))
        ax.set_xticklabels([str(b) for b in sorted(batches)])
        ax.set_ylim(bottom=0)
        ax.set_title(title)
        ax.set_xlabel("batch size")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend(title="shaded: p50 to p90", fontsize="small", title_fontsize="small")
    task = report.get("task")
    if task:
        fig.suptitle(f"{task}: dense vs pruned latency")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png
