"""Architectures for the bad-input corpus (imported as ``factories_bad:NAME`` by the CLI).

The directory holding this file goes on PYTHONPATH of the subprocesses that use it.
"""

from __future__ import annotations

from torch import nn


def even_kernel_net() -> nn.Module:
    """A small network whose first layer is a 2x2 convolution (no kernel centre)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def writes_marker() -> nn.Module:
    """A factory with a side effect: it writes the file named by ``$SPA_EXPORT_TEST_MARKER``.

    An SPA whose ``spa.arch`` names it must be refused unless the user passes
    ``--arch factories_bad:writes_marker``: a file alone must not choose code to run.
    """
    import os

    with open(os.environ["SPA_EXPORT_TEST_MARKER"], "w") as fh:
        fh.write("factory ran")
    return even_kernel_net()
