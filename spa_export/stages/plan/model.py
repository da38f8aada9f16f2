"""The prune plan: every decision, in the original channel indices.

A :class:`PrunePlan` is computed once on the unpruned network and applied
once (:mod:`spa_export.stages.apply`). It is replayable: the JSON form records the
kept indices of every module, so the same plan can be applied again to the
same merged network. Constant contributions (the spec's third case) are kept
as tensors beside it; the JSON form records their shapes and where they go.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from spa_export.stages.plan.heads import AttentionPlan


@dataclass
class ModulePlan:
    """What to keep of one module, in original indices (``None``: everything)."""

    kind: str                        # conv | linear | batchnorm | depthwise | blur
    out_keep: list[int] | None = None
    in_keep: list[int] | None = None
    out_size: int = 0
    in_size: int = 0

    def to_json(self) -> dict:
        return {
            "kind": self.kind, "out_size": self.out_size, "in_size": self.in_size,
            "out_keep": self.out_keep, "in_keep": self.in_keep,
        }


@dataclass
class ConstantFold:
    """The fixed contribution of removed constant channels to one consumer's output.

    ``bias`` has one value per (original) output channel; ``tensor`` is the
    output's shape without the batch axis, for contributions that vary over
    positions (zero padding near the border), with its channels on
    ``channel_axis`` (0, or -1 after a linear layer over tokens).
    """

    module: str
    channels: int
    bias: torch.Tensor | None = None
    tensor: torch.Tensor | None = None
    channel_axis: int = 0

    def to_json(self) -> dict:
        kind = "bias" if self.tensor is None else "tensor"
        shape = list((self.bias if self.tensor is None else self.tensor).shape)
        out = {"module": self.module, "channels": self.channels, "kind": kind, "shape": shape}
        if self.tensor is not None and self.channel_axis != 0:
            out["channel_axis"] = self.channel_axis
        return out


@dataclass
class GroupReport:
    id: str
    producers: list[str]
    members: list[str]
    channels: int
    kept: int
    removed_unread: int
    removed_constant: int
    kept_reasons: dict[str, int]

    @property
    def removed(self) -> int:
        return self.removed_unread + self.removed_constant

    def to_json(self) -> dict:
        return {
            "id": self.id, "members": self.producers + self.members, "channels": self.channels,
            "kept": self.kept, "removed": self.removed, "removed_unread": self.removed_unread,
            "removed_constant": self.removed_constant, "kept_reasons": self.kept_reasons,
        }


ROUNDING_REASON = "kept to round the group to a multiple of"
STREAM_REASON = "the residual stream"


@dataclass
class PrunePlan:
    #: what the network was traced with: ``{"input_shape": [...]}`` or ``{"inputs": [...]}`` (inputs.to_json)
    inputs: dict
    modules: dict[str, ModulePlan] = field(default_factory=dict)
    folds: dict[str, ConstantFold] = field(default_factory=dict)
    groups: list[GroupReport] = field(default_factory=list)
    #: nn.MultiheadAttention modules that lose heads or channels of heads, or say why not
    attention: dict[str, AttentionPlan] = field(default_factory=dict)
    round_to: int = 1
    untraced: str | None = None  # why the network could not be traced (then nothing is removed)
    #: submodules torch.fx could not trace into -> why: each ran as one step, keeping its channels
    opaque: dict[str, str] = field(default_factory=dict)

    def groups_kept_whole(self) -> list[dict]:
        """Groups that the masks asked to shrink (or could shrink) but stayed whole, and why."""
        out = [{"id": "(whole network)", "channels": 0, "reason": self.untraced}] if self.untraced else []
        stream: list[GroupReport] = []
        for g in self.groups:
            if g.removed == 0 and g.kept_reasons:
                reason = max(g.kept_reasons.items(), key=lambda kv: kv[1])[0]
                if reason.startswith(STREAM_REASON):
                    stream.append(g)    # said once per model: a post-norm block starts a new one
                else:
                    out.append({"id": g.id, "channels": g.channels, "reason": reason})
        if stream:
            ids = ", ".join(g.id for g in stream[:3]) + (f" and {len(stream) - 3} more" if len(stream) > 3 else "")
            out.append({"id": f"residual stream ({len(stream)} group(s): {ids})",
                        "channels": sum(g.channels for g in stream),
                        "reason": max(stream[0].kept_reasons.items(), key=lambda kv: kv[1])[0]})
        for name, ap in self.attention.items():
            if ap.reason:
                out.append({"id": f"{name} (heads)", "channels": ap.num_heads * ap.head_dim, "reason": ap.reason})
        return out

    def rounding_extra(self) -> int:
        """Channels the masks prune that the plan keeps to round groups up to ``round_to``."""
        return sum(n for g in self.groups for why, n in g.kept_reasons.items() if why.startswith(ROUNDING_REASON))

    def to_json(self) -> dict:
        return {
            **self.inputs,
            "round_to": self.round_to,
            "untraced": self.untraced,
            "modules": {k: v.to_json() for k, v in sorted(self.modules.items())},
            "constant_folds": [f.to_json() for f in self.folds.values()],
            **({"attention": {k: v.to_json() for k, v in sorted(self.attention.items())}} if self.attention else {}),
            **({"opaque": dict(sorted(self.opaque.items()))} if self.opaque else {}),
        }
