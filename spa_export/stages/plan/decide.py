"""Decide, channel by channel, what can go: the spec's removal cases.

A channel (a root id of the channel graph) is removed when nothing forces it
to stay and every consumer that reads it either does not read it (its
weight columns are zero: case 1) or reads a value that does not depend on
the input (cases 2 and 3). The fixed contribution of such constant channels
is computed here, once, from the unpruned network, and later added back into
the consumer's bias (where it is the same at every position) or as a
constant tensor (where zero padding makes it vary near the border).

Structural constraints come last, and only ever keep more channels, which is
always exact: the groups of a grouped convolution stay equal in size, every
tensor keeps at least one channel, and with ``round_to`` every group keeps a
multiple of that many channels.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import torch
from torch import nn

from spa_export.nets.threads import one_thread
from spa_export.stages.plan.heads import plan_heads
from spa_export.stages.plan.model import (
    ROUNDING_REASON,
    ConstantFold,
    GroupReport,
    ModulePlan,
    PrunePlan,
)
from spa_export.stages.plan.trace import ChannelGraph

# Spatial variation of a constant contribution below this fraction of its
# magnitude is rounding noise: the contribution goes into the bias.
UNIFORM_RTOL = 1e-6


def decide(graph: ChannelGraph, inputs: dict, *, round_to: int = 1,
           round_small: bool = True) -> PrunePlan:
    """The channels to remove. ``round_to``: every group keeps a multiple of it; with
    ``round_small`` False, groups that keep fewer than ``round_to`` channels are left as the
    masks ask (``--round-to auto``: a runtime takes a layer narrower than one block as is)."""
    n = len(graph.uf)
    root = np.fromiter((graph.uf.find(i) for i in range(n)), dtype=np.int64, count=n)
    reason: dict[int, str] = {}
    for i, why in graph.fixed.items():
        reason.setdefault(int(root[i]), why)
    for ids, why in graph.holds:
        for r in np.unique(root[ids]).tolist():
            reason.setdefault(r, why)
    candidate = np.zeros(n, dtype=bool)
    constant = np.zeros(n, dtype=bool)
    for p in graph.producers:  # a producer's constant outputs were asked to go (masked)
        if p.dep is not None:
            candidate[root[p.ids[~p.dep]]] = True
    for c in graph.consumers:
        r = root[c.ids]
        ok = c.unread | ~c.dep
        candidate[r[ok]] = True
        constant[r[~c.unread & ~c.dep]] = True
        for rr in np.unique(r[~ok]).tolist():
            reason.setdefault(rr, f"'{c.module}' reads it and it depends on the input")
    present = np.unique(root[np.concatenate([p.ids for p in graph.producers])]) if graph.producers \
        else np.zeros(0, dtype=np.int64)
    removed = np.zeros(n, dtype=bool)
    for r in present.tolist():
        # A channel no consumer reads at all, that reaches no output, is dead: it goes too.
        removed[r] = r not in reason
    groups = dependency_groups(graph, root, present)
    _constrain(graph, root, removed, reason, groups, round_to, round_small)

    plan = PrunePlan(inputs=dict(inputs), round_to=round_to, opaque=dict(graph.opaque))
    _module_plans(graph, root, removed, plan)
    _folds(graph, root, removed, plan)
    plan.groups = _reports(graph, root, removed, constant, candidate, reason, groups)
    for name, weights_read in graph.attention.items():
        heads = plan_heads(name, graph.modules[name], weights_read=weights_read, round_to=round_to,
                           round_small=round_small)
        if heads.changed or heads.reason or heads.kept_beyond_masks:
            plan.attention[name] = heads
    return plan


def dependency_groups(graph: ChannelGraph, root: np.ndarray,
                      present: np.ndarray) -> list[tuple[list[int], np.ndarray]]:
    """Dependency groups: producers united where they share a channel; (producer indices, roots)."""
    owner: dict[int, int] = {}
    parent = list(range(len(graph.producers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, p in enumerate(graph.producers):
        for r in np.unique(root[p.ids]).tolist():
            j = owner.setdefault(r, i)
            if find(j) != find(i):
                parent[find(i)] = find(j)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(graph.producers)):
        members[find(i)].append(i)
    out = []
    for idx in members.values():
        roots = np.unique(np.concatenate([root[graph.producers[i].ids] for i in idx]))
        out.append((idx, roots))
    return out


def _constrain(graph: ChannelGraph, root: np.ndarray, removed: np.ndarray, reason: dict[int, str],
               groups: list[tuple[list[int], np.ndarray]], round_to: int, round_small: bool) -> None:
    def keep(r: int, why: str) -> None:
        removed[r] = False
        reason[r] = why

    grouped = [(c.module, c.ids, c.groups) for c in graph.consumers if c.groups > 1]
    grouped += [(p.label, p.ids, p.groups) for p in graph.producers if p.groups > 1]
    grouped += [(label, ids, parts) for label, ids, parts in graph.equal if parts > 1]
    changed = True
    while changed:
        changed = False
        for label, ids, g in grouped:
            rows = root[ids].reshape(g, -1)
            counts = removed[rows].sum(1)
            target = min(int(counts.min()), rows.shape[1] - 1)
            for j in np.nonzero(counts > target)[0].tolist():
                for r in rows[j][removed[rows[j]]][target:].tolist():
                    keep(r, f"kept so that the {g} groups of '{label}' stay equal")
                    changed = True
        for label, ids in graph.spaces:
            rs = root[ids]
            if len(rs) and removed[rs].all():
                keep(int(rs[0]), f"kept so that '{label}' keeps at least one channel")
                changed = True
        if round_to > 1:
            for _, roots in groups:
                kept = int((~removed[roots]).sum())
                if kept < round_to and not round_small:
                    continue
                short = (-kept) % round_to
                if not short:
                    continue
                rows = _grouped_rows(grouped, root, roots)
                if rows is None:
                    for r in roots[removed[roots]][:short].tolist():
                        keep(r, f"{ROUNDING_REASON} {round_to}")
                        changed = True
                    continue
                for r in _round_grouped(rows, removed, round_to):
                    keep(r, f"{ROUNDING_REASON} {round_to}")
                    changed = True


def _grouped_rows(grouped: list[tuple[str, np.ndarray, int]], root: np.ndarray,
                  roots: np.ndarray) -> np.ndarray | list | None:
    """The channels of a dependency group as the groups of the grouped layers that read or write them:
    ``[g, per_group]`` roots; None where no grouped layer does, ``[]`` where they do in ways that do
    not line up (several layers of other groupings, other channels mixed in)."""
    mine = set(roots.tolist())
    found = []
    for _, ids, g in grouped:
        rows = root[ids].reshape(g, -1)
        touched = np.isin(rows, roots)
        if touched.any():
            if not touched.all() or len(set(rows.ravel().tolist())) != rows.size or set(rows.ravel().tolist()) != mine:
                return []
            found.append(rows)
    if not found:
        return None
    if any(f.shape != found[0].shape or not np.array_equal(np.sort(f, 1), np.sort(found[0], 1)) for f in found[1:]):
        return []
    return found[0]


def _round_grouped(rows: np.ndarray | list, removed: np.ndarray, round_to: int) -> list[int]:
    """Channels to keep so that a group read or written by a grouped layer keeps a multiple of
    ``round_to``, equally in each of the layer's groups; none where that needs a whole multiple more.

    Rounding 24 kept channels of a 6-group convolution up to 32 cannot keep the groups equal: the
    next count that can is 48, all of them, and the pruning would be undone. Such a group keeps the
    masks' count: never slower than not rounding at all, and never more than ``round_to - 1``
    channels beyond the masks, as rounding promises.
    """
    if not len(rows):
        return []
    g, per = rows.shape
    kept_per = [int((~removed[r]).sum()) for r in rows]
    k = max(kept_per)
    for target in range(k, per + 1):
        if (g * target) % round_to == 0:
            break
    else:
        return []
    extra = [target - n for n in kept_per]
    if sum(extra) > round_to - 1:
        return []
    out: list[int] = []
    for r, more in zip(rows, extra, strict=True):
        out += r[removed[r]][:more].tolist()
    return out


def _keep_list(mask: np.ndarray) -> list[int] | None:
    return None if mask.all() else np.nonzero(mask)[0].tolist()


def _module_plans(graph: ChannelGraph, root: np.ndarray, removed: np.ndarray, plan: PrunePlan) -> None:
    for p in graph.producers:
        if p.module is None:
            continue
        keep = ~removed[root[p.ids]]
        kind = "linear" if isinstance(graph.modules[p.module], nn.Linear) else "conv"
        mp = plan.modules.setdefault(p.module, ModulePlan(kind))
        mp.out_keep, mp.out_size = _keep_list(keep), len(keep)
    for c in graph.consumers:
        keep = ~removed[root[c.ids]]
        mp = plan.modules[c.module]
        mp.in_keep, mp.in_size = _keep_list(keep), len(keep)
    for m in graph.members:
        keep = ~removed[root[m.ids]]
        plan.modules[m.module] = ModulePlan(m.kind, _keep_list(keep), _keep_list(keep), len(keep), len(keep))
    for name in [k for k, v in plan.modules.items() if v.out_keep is None and v.in_keep is None]:
        del plan.modules[name]


@torch.no_grad()
def _folds(graph: ChannelGraph, root: np.ndarray, removed: np.ndarray, plan: PrunePlan) -> None:
    for c in graph.consumers:
        pos = np.nonzero(removed[root[c.ids]] & ~c.unread)[0]
        if len(pos) == 0:
            continue
        mod = graph.modules[c.module]
        # Removed channels read with weights are constant: their values are in c.value, in the
        # order of the consumer's constant positions.
        stored = np.searchsorted(np.nonzero(~c.dep)[0], pos)
        with one_thread():  # these values go into the file: the same bytes whatever the core count
            values = c.value.index_select(c.channel_dim, torch.as_tensor(stored))
            contrib = _contribution(mod, values, pos, c.shape, c.channel_dim, plain=c.functional)
        if c.axis != 1 and contrib.dim() > 1:
            contrib = contrib.movedim(-1, 0)  # channels first, like a convolution's, until stored
        fold = ConstantFold(c.module, len(np.unique(root[c.ids][pos])))
        if contrib.dim() == 1:
            fold.bias = contrib.clone()
        else:
            flat = contrib.reshape(contrib.shape[0], -1)
            mean = flat.mean(1)
            spread = (flat - mean[:, None]).abs().max()
            if spread <= UNIFORM_RTOL * float(flat.abs().max()):
                fold.bias = mean.clone()
            elif c.axis != 1:  # added to [N, ..., features]: stored with its features last
                fold.tensor, fold.channel_axis = contrib.movedim(0, -1).clone(), -1
            else:
                fold.tensor = contrib.clone()
                bn = graph.followers.get(c.module)
                if bn is not None:  # after the batch-norm instead, so that runtimes fuse it into the conv
                    fold.module, fold.tensor = bn, _past_batchnorm(graph.modules[bn], fold.tensor)
        plan.folds[fold.module] = fold


_PLAIN_FORWARD = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def _contribution(mod: nn.Module, values: torch.Tensor, pos: np.ndarray, shape: tuple[int, ...],
                  channel_dim: int = 1, *, plain: bool = False) -> torch.Tensor:
    """What input channels ``pos``, holding ``values``, add to the output of ``mod`` (one sample).

    ``values`` has the channels on ``channel_dim`` (1, or the last for a linear layer over
    tokens). A plain convolution or linear layer reads only those channels' weights, without
    bias; any other module runs on an input that is zero elsewhere, less its output at zero.
    ``plain``: the values were read by ``F.linear``/``F.convNd`` on the layer's own tensors
    (a subclass traced through), so the layer's operation is computed as such, never its
    ``forward`` (which may pad its input first: the values were padded already).
    """
    index = torch.as_tensor(pos)
    plain = plain or type(mod).forward in _PLAIN_FORWARD
    if plain and getattr(mod, "groups", 1) == 1:
        weight = mod.weight.index_select(1, index)
        if isinstance(mod, nn.Linear):
            return nn.functional.linear(values, weight)[0]
        return mod._conv_forward(values, weight, None)[0]
    only = torch.zeros(shape, dtype=values.dtype).index_copy_(channel_dim, index, values)
    if plain:  # a grouped convolution: every group's own columns, without bias
        return mod._conv_forward(only, mod.weight, None)[0]
    return (mod(only) - _at_zero(mod, only))[0]


def _at_zero(mod: nn.Module, only: torch.Tensor) -> torch.Tensor:
    """``mod(zeros_like(only))``: for a convolution or linear layer (finite weights, checked at
    merge) exactly its bias, broadcast, or zero; other modules are run."""
    if isinstance(mod, nn.Linear) and type(mod).forward in _PLAIN_FORWARD:
        return torch.zeros((), dtype=only.dtype) if mod.bias is None else mod.bias   # features last
    if isinstance(mod, nn.modules.conv._ConvNd) and type(mod).forward in _PLAIN_FORWARD:
        shape = [1, -1] + [1] * (only.dim() - 2)
        if mod.bias is None:
            return torch.zeros((), dtype=only.dtype)
        return mod.bias.reshape(shape)
    return mod(torch.zeros_like(only))


def _past_batchnorm(bn: nn.Module, constant: torch.Tensor) -> torch.Tensor:
    """``C`` such that ``bn(z + constant) == bn(z) + C`` (eval mode: a per-channel affine map)."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    return (constant.double() * scale.reshape(-1, *([1] * (constant.dim() - 1)))).to(constant.dtype)


def _reports(graph: ChannelGraph, root: np.ndarray, removed: np.ndarray, constant: np.ndarray,
             candidate: np.ndarray, reason: dict[int, str],
             groups: list[tuple[list[int], np.ndarray]]) -> list[GroupReport]:
    member_of: dict[int, list[str]] = defaultdict(list)
    for m in graph.members:
        for r in np.unique(root[m.ids]).tolist():
            member_of[r].append(m.module)
    reports = []
    for idx, roots in groups:
        producers = [graph.producers[i].module or graph.producers[i].label for i in idx]
        gone = removed[roots]
        # Only channels the masks asked to remove (candidates), or that a constraint kept, need a word.
        reasons = Counter(
            reason.get(r, "in use") for r in roots[~gone].tolist()
            if candidate[r] or reason.get(r, "").startswith("kept")
        )
        members = sorted({m for r in roots.tolist() for m in member_of.get(r, [])})
        reports.append(GroupReport(
            id=producers[0], producers=producers, members=members, channels=len(roots),
            kept=int((~gone).sum()), removed_unread=int((gone & ~constant[roots]).sum()),
            removed_constant=int((gone & constant[roots]).sum()), kept_reasons=dict(reasons),
        ))
    return reports
