"""One sample through the task's network on the meta device: what a forward pass needs, for free.

The architecture is built on the meta device (no data), the task's resizing
overrides applied, and one sample run through it; hooks record every module's
output size. Nothing is allocated, so this runs before any real forward pass:

* the largest activation, times the batch and the few activations a pass
  holds at once, is what a forward pass needs
  (:func:`spa_export.memory.check_batches_fit` refuses what cannot fit);
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

from spa_export.arch import build_on_meta, resize_for_overrides
from spa_export.errors import SpaCompatibilityError, shown


def _bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_bytes(v) for v in value)
    if isinstance(value, Mapping):
        return sum(_bytes(v) for v in value.values())
    return 0


def _largest(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Run one sample on the meta device; the largest module output (or the input) in bytes."""
    largest = [0]

    def hook(module: nn.Module, args: object, output: object) -> None:
        largest[0] = max(largest[0], _bytes(output))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        x = torch.empty((1, *input_shape[1:]), device="meta")
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return max(largest[0], _bytes(x))


def _resizing(model: nn.Module, overrides: Mapping[str, torch.Tensor]) -> list[str]:
    params = dict(model.named_parameters())
    return [k for k, t in sorted(overrides.items())
            if k.endswith(".weight") and k in params and t.dim() and t.shape[0] != params[k].shape[0]]


def largest_activation_bytes(spec: str, overrides: Mapping[str, torch.Tensor], input_shape: tuple[int, ...],
                             *, spa_path: Path | None = None) -> int | None:
    """Bytes of the largest activation of one sample; None where the meta device cannot tell.

    Raises :class:`SpaCompatibilityError` naming the override when the base
    network runs at ``input_shape`` and the task's resized one does not.
    """
    model = build_on_meta(spec)
    if model is None:
        return None
    resized = _resizing(model, overrides)
    try:
        if not resized:
            return _largest(model, input_shape)
        base_bytes = _largest(model, input_shape)
    except Exception:  # data-dependent code, ops without meta kernels, or a shape that does not fit
        return None
    try:
        with torch.device("meta"):
            resize_for_overrides(model, overrides)
        return max(_largest(model, input_shape), base_bytes)
    except Exception as err:
        key = resized[0]
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpaCompatibilityError(
            f"resizes '{key[:-len('.weight')]}' to {int(overrides[key].shape[0])} outputs, and the network "
            f"no longer runs with it ({type(err).__name__}: {shown(first, 160)}); the spec allows resizing "
            "only a layer whose consumers fit its new size, such as a classifier head",
            path=spa_path, key=f"override.{key}") from err
