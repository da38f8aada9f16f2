"""A small architecture for the pack tests (``factories_pack:small``): conv, batch-norm, depthwise, head."""

from __future__ import annotations

from torch import nn


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.bn1(self.conv1(x)).relu()
        x = self.bn2(self.dw(x)).relu()
        return self.fc(self.pool(x).flatten(1))


def small() -> nn.Module:
    return Small()
