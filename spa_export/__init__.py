"""spa-export: deploy Structured Pruning Adapters as small, exact, verified networks."""

from __future__ import annotations

__version__ = "0.1.0"
