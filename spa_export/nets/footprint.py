"""One sample through the task's network on the meta device: what a forward pass needs, for free.

The architecture is built on the meta device (no data), the task's resizing
overrides applied, and one sample run through it; hooks record every module's
output size. Nothing is allocated, so this runs before any real forward pass:

* the largest working set of a layer (its input and output), times the
  batch and the few activations a pass holds at once, is what a forward pass
  needs, and all activations together what tracing may hold
  (:func:`spa_export.safety.memory.check_fits` refuses what cannot fit);
* the network's MACs per sample, counted from the shapes alone;
* an override that resizes a layer the rest of the network cannot follow is
  found here and named by its SPA key (the same network without it runs).

Networks that cannot run on the meta device give no estimate; the real
forward pass of the merge stage then checks that the input shape fits.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from spa_export.nets.arch import build_on_meta, resize_for_overrides
from spa_export.nets.metrics import counting_macs
from spa_export.safety.errors import SpaCompatibilityError, first_line, shown
from spa_export.safety.memory import Footprint


def _bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_bytes(v) for v in value)
    if isinstance(value, Mapping):
        return sum(_bytes(v) for v in value.values())
    return 0


def _same_shape(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def _measure(model: nn.Module, inputs: object) -> Footprint:
    """Run one sample on the meta device; every leaf module's input and output sizes make the footprint.

    ``model`` is a throwaway meta network: its batch-norm layers (in eval mode, an output of
    the input's shape) are given a forward that says just that, for PyTorch computes their meta
    shapes through a slow Python decomposition (0.6 ms a layer).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training \
                and module.track_running_stats:
            module.forward = _same_shape
    working, total = [0], [0]

    def hook(module: nn.Module, args: object, output: object) -> None:
        if next(module.children(), None) is None:  # leaves: containers would count their parts twice
            working[0] = max(working[0], _bytes(args) + _bytes(output))
            total[0] += _bytes(output)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        x = tuple(torch.empty((1, *s.shape[1:]), dtype=s.torch_dtype, device="meta") for s in inputs)
        with torch.no_grad(), counting_macs(model) as macs:
            out = model(*x)
    finally:
        for h in handles:
            h.remove()
    # functional operations (additions, concatenations) between layers are not seen by the hooks:
    # each is bounded by the larger working sets around it, counted once more in the total
    return Footprint(max(working[0], 2 * _bytes(x)), 2 * total[0] + _bytes(x) + _bytes(out), macs[0])


def _resizing(model: nn.Module, overrides: Mapping[str, torch.Tensor]) -> list[str]:
    params = dict(model.named_parameters())
    return [k for k, t in sorted(overrides.items())
            if k.endswith(".weight") and k in params and t.dim() and t.shape[0] != params[k].shape[0]]


def activation_footprint(spec: str, overrides: Mapping[str, torch.Tensor], input_shape: object,
                         *, spa_path: Path | None = None) -> Footprint | None:
    """The activation footprint of one sample; None where the meta device cannot tell.

    Raises :class:`SpaCompatibilityError` naming the override when the base
    network runs at ``input_shape`` and the task's resized one does not.
    """
    model = build_on_meta(spec)
    if model is None:
        return None
    resized = _resizing(model, overrides)
    try:
        if not resized:
            return _measure(model, input_shape)
        base = _measure(model, input_shape)
    except Exception:  # data-dependent code, ops without meta kernels, or a shape that does not fit
        return None
    try:
        with torch.device("meta"):
            resize_for_overrides(model, overrides)
        task = _measure(model, input_shape)
        return Footprint(max(task.working, base.working), max(task.total, base.total), task.macs)
    except Exception as err:
        key = resized[0]
        first = first_line(err)
        raise SpaCompatibilityError(
            f"resizes '{key[:-len('.weight')]}' to {int(overrides[key].shape[0])} outputs, and the network "
            f"no longer runs with it ({type(err).__name__}: {shown(first, 160)}); the spec allows resizing "
            "only a layer whose consumers fit its new size, such as a classifier head",
            path=spa_path, key=f"override.{key}") from err
