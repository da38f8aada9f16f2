"""Masks on Torch-Pruning's dependency groups, and Torch-Pruning's own removal of the same channels.

An independent yardstick for how far a build shrinks a network: Torch-Pruning (autograd-graph
tracing, its own group logic) picks a fraction of every group's channels and removes them
physically; the parameter count it leaves is the *masks' minimum*. The same channels, as SPA masks
(output masks of the group's producers, input masks of its readers), go to spa-export, which must
get as close as exactness allows.

Torch-Pruning also removes channels that a layer norm (or a group norm of fewer groups than
channels, or an RMS norm) normalises together, which changes the statistics of the channels that
stay; the spec keeps those (its exactness rule), so the *spec's minimum* is Torch-Pruning's removal
of the other groups only. Where Torch-Pruning cannot prune a network at all, :func:`mask_minimum`
counts what removing every masked row and column of the convolutions and linear layers would leave.
"""

from __future__ import annotations

import contextlib
import copy
import re
import resource
import signal
from collections import defaultdict
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from spa_export.nets.arch import build_model, load_into
from spa_export.pack.synth import random_base
from spa_export.runtime.inputs import as_inputs
from spa_export.spa import LayerSpa, SpaFile, make_spa

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _sizes(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    return mod.out_channels, mod.in_channels


def _depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels


class Minimum(NamedTuple):
    """Parameters left after Torch-Pruning removes the masked channels: all of them (``tp``), and
    all but those that a channel-mixing normalisation reads (``spec``)."""

    tp: int
    spec: int


#: normalisations over several channels together (removing one changes the others' statistics)
MIXING_NORMS = {"LayerNorm", "LayerNorm2d", "GroupNorm", "RMSNorm", "RmsNorm", "RmsNorm2d"}


def mixes_channels(mod: nn.Module) -> bool:
    """Normalisation over several channels together: removing one changes the others' statistics."""
    if isinstance(mod, nn.GroupNorm):
        return mod.num_groups < mod.num_channels
    # subclasses too: timm's RmsNormAct2d (an RmsNorm2d with an activation), LayerNorm2dNoBias
    return isinstance(mod, nn.LayerNorm) or any(c.__name__ in MIXING_NORMS for c in type(mod).__mro__)


GUARD_BYTES, GUARD_SECONDS = 6 << 30, 120


@contextlib.contextmanager
def guard(extra: int = GUARD_BYTES, seconds: int = GUARD_SECONDS) -> Iterator[None]:
    """At most ``extra`` bytes more address space and ``seconds`` of time inside: Torch-Pruning's
    dependency groups grow past what a 24 GiB machine holds on a few networks (efficientvit_msra),
    or take tens of minutes (focalnet, rexnet); there it raises MemoryError or TimeoutError
    instead of the kernel killing the test run or the run stalling (main thread only)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as fh:
        used = int(fh.read().split()[0]) * resource.getpagesize()
    limit = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)

    def late(signum: int, frame: object) -> None:
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, late)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def torch_pruning_masks(model: nn.Module, shape: tuple[int, ...], *, prune: float = 0.5, seed: int = 1
                        ) -> tuple[dict[str, dict[str, torch.Tensor]], Minimum]:
    """``(masks per layer, parameters left after Torch-Pruning removes the same channels)``."""
    with guard():
        return _torch_pruning_masks(model, shape, prune=prune, seed=seed)


def _torch_pruning_masks(model: nn.Module, shape: tuple[int, ...], *, prune: float, seed: int
                         ) -> tuple[dict[str, dict[str, torch.Tensor]], Minimum]:
    model = copy.deepcopy(model)
    names = {m: n for n, m in model.named_modules()}
    owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]   # the classifier keeps its classes
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(shape))
    rng = np.random.default_rng(seed)
    masks: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    chosen = []
    for group in graph.get_all_groups(ignored_layers=heads, root_module_types=list(_LAYERS)):
        root, handler = group[0].dep.target.module, group[0].dep.handler
        n = _sizes(root)[0]
        k = int(n * prune)
        if not 0 < k < n:
            continue
        idxs = sorted(rng.choice(n, k, replace=False).tolist())
        group = graph.get_pruning_group(root, handler, idxs)
        if not graph.check_pruning_group(group):
            continue
        # a module Torch-Pruning does not know is pruned through its parameters ("unwrapped"): their owner
        mixed = any(mixes_channels(owners.get(id(item.dep.target.module), item.dep.target.module)) for item in group)
        chosen.append((mixed, names[root], handler, idxs))
        for item in group:
            mod = item.dep.target.module
            if names.get(mod) is None or not isinstance(mod, _LAYERS):
                continue
            which = getattr(item.dep.handler, "__name__", "")
            size_out, size_in = _sizes(mod)
            if "out" in which or _depthwise(mod):
                masks[names[mod]].setdefault("out_mask", torch.ones(size_out, dtype=torch.bool))[item.idxs] = False
            elif "in" in which:
                masks[names[mod]].setdefault("in_mask", torch.ones(size_in, dtype=torch.bool))[item.idxs] = False
    left = {}
    for mixed in (False, True):   # each root's own output indices are untouched by the others
        for name, handler, idxs in (c[1:] for c in chosen if c[0] == mixed):
            graph.get_pruning_group(model.get_submodule(name), handler, idxs).prune()
        left[mixed] = sum(p.numel() for p in model.parameters())
    return dict(masks), Minimum(tp=left[True], spec=left[False])


def layer_weights(model: nn.Module) -> int:
    """Parameters of the convolutions and linear layers (what :func:`mask_minimum` counts)."""
    return sum(p.numel() for m in model.modules() if isinstance(m, _LAYERS) for p in m.parameters(recurse=False))


def mask_minimum(model: nn.Module, spa: SpaFile) -> int:
    """Parameters of ``model``'s convolutions and linear layers once every row that an output mask
    removes and every column that an input mask removes is gone (per group of a grouped convolution)."""
    total = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, _LAYERS):
            continue
        layer = spa.layers.get(name)
        size_out, size_in = _sizes(mod)
        out = layer.out_mask if layer is not None and layer.out_mask is not None else torch.ones(size_out, dtype=torch.bool)
        cin = layer.in_mask if layer is not None and layer.in_mask is not None else torch.ones(size_in, dtype=torch.bool)
        groups = getattr(mod, "groups", 1)   # a grouped convolution's group g reads only its inputs
        kept = out.view(groups, -1).sum(1) * cin.view(groups, -1).sum(1)
        total += int(kept.sum()) * mod.weight[0, 0].numel()
        if mod.bias is not None:
            total += int(out.sum())
    return total


def all_group_masks(arch: str, shape: tuple[int, ...], base: dict[str, torch.Tensor], *, prune: float = 0.5,
                    seed: int = 1, made: bool = True) -> SpaFile:
    """``synth``'s group masks at ``prune`` on every dependency group, held ones included, but the
    network's input and output and (``made`` true) what an operation the tracer does not follow
    makes and what a layer norm reads (which the spec keeps, as in :class:`Minimum`). ``synth``
    leaves out everything the plan will hold, which would make :func:`mask_minimum` count only
    what the build removes anyway; ``made`` false masks all but the input and output, so that the
    plan says what holds each group."""
    from unittest import mock

    from spa_export.pack import synth

    # "(LayerNorm)", "(LayerNorm on features along the last axis)", subclasses ("(RmsNormAct2d)")
    read_by_norm = re.compile(r"\(\w*(?:" + "|".join(sorted(MIXING_NORMS)) + r")\w*[) ]")

    def fixed_only(graph: object, root: np.ndarray) -> set[int]:   # the input, the output, what is made new
        held = {int(root[i]) for i, why in graph.fixed.items() if made or why == "the network input"}
        for ids, why in graph.holds:
            if why == "reaches the network output" or (made and read_by_norm.search(why)):
                held.update(np.unique(root[ids]).tolist())
        return held

    with mock.patch.object(synth, "_held", fixed_only):
        return synth.synth_spa(arch, as_inputs(shape), prune=prune, rank=2, seed=seed, masks="groups",
                               base_state=base)


def silenced(model: nn.Module, spa: SpaFile, shape: tuple[int, ...]) -> bool:
    """Whether ``spa``'s masks make ``model``'s output zero everywhere (Torch-Pruning reads a layer
    that mixes tokens, gMLP's or Sequencer's, as one of channels): no yardstick, then."""
    from spa_export.stages.merge import merge

    merged, _ = merge(model, spa)
    x = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = merged(x)
    out = out if isinstance(out, torch.Tensor) else out[0]
    return not bool(out.abs().max() > 0)


def build(arch: str, shape: tuple[int, ...], masker=torch_pruning_masks, **kw: object
          ) -> tuple[nn.Module, dict[str, torch.Tensor], SpaFile, Minimum]:
    """A seeded random base of ``arch``, its SPA of masks, and the masks' minimum of parameters."""
    base = random_base(arch, as_inputs(shape), seed=0)
    model = build_model(arch)
    load_into(model, base)
    model.eval()
    masks, minimum = masker(model, shape, **kw)
    spa = make_spa([LayerSpa(name, **m) for name, m in sorted(masks.items())], task="tp", arch=arch)
    return model, base, spa, minimum
