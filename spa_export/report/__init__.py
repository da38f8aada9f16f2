"""report.md and its latency plot, rendered from a report.json dict.

Imports no torch; matplotlib is imported inside :func:`plot_latency`.
"""

from __future__ import annotations

from spa_export.report.markdown import render_markdown
from spa_export.report.plots import plot_latency

__all__ = ["plot_latency", "render_markdown"]
