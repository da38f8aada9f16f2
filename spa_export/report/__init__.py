"""report.md, its latency plot and a package's summary, rendered from report.json dicts.

What it holds: ``markdown`` (report.md of one task), ``plots`` (latency.png) and ``summary``
(a package's summary.md, the tasks side by side).

Imports no torch; matplotlib is imported inside :func:`plot_latency`.

May import: (nothing of spa_export)
"""

from __future__ import annotations

from spa_export.report.markdown import render_markdown
from spa_export.report.plots import plot_latency

__all__ = ["plot_latency", "render_markdown"]
