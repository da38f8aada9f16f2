"""Channel masks of an adapted network, read where training leaves them.

Sources, for each ``Linear``/``ConvNd`` layer ``L``:

1. ``given``: masks the user passes (``--masks FILE`` or the API): ``L.out_mask``
   and ``L.in_mask``, bool or float holding exactly 0 and 1;
2. ``output_mask``: a tensor attribute or buffer on the layer, as the paper's
   experiment code keeps it (float 0/1 over the output channels);
3. ``weight_mask``: the buffer of a layer still pruned with
   ``torch.nn.utils.prune`` (before ``prune.remove``); it must prune whole
   output rows or input columns;
4. ``zeroed rows``: output rows of the layer's frozen weight that are all zero
   where the base's are not (``prune.remove`` leaves exactly that).

Where several sources give a mask for the same layer and side, they must
agree. A mask of other values than 0 and 1 is refused: the format holds
binary masks only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from spa_export.safety.errors import InputError, shown

MaskPair = tuple[torch.Tensor | None, torch.Tensor | None]
LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass
class LayerMasks:
    """A layer's masks (True: kept) and where each came from."""

    out_mask: torch.Tensor | None = None
    in_mask: torch.Tensor | None = None
    out_source: str | None = None
    in_source: str | None = None

    def to_json(self, name: str) -> dict:
        row: dict = {"layer": name}
        for side in ("out", "in"):
            mask = getattr(self, f"{side}_mask")
            if mask is not None:
                row[side] = {"kept": int(mask.sum()), "of": int(mask.numel()),
                             "source": getattr(self, f"{side}_source")}
        return row


def binary_mask(value: object, size: int, where: str) -> torch.Tensor:
    """``value`` as a bool mask of ``size`` entries: bool, or numbers that are exactly 0 or 1."""
    t = torch.as_tensor(value).detach().to("cpu")
    if t.dim() != 1 or t.numel() != size:
        raise InputError(f"{where}: expected a mask of {size} entries (1-D), got shape {list(t.shape)}")
    if t.dtype == torch.bool:
        return t.clone()
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int8, torch.uint8, torch.int16,
                                                                    torch.int32, torch.int64)):
        raise InputError(f"{where}: a mask is bool or 0/1 numbers, got {t.dtype}")
    odd = t[(t != 0) & (t != 1)]
    if odd.numel():
        raise InputError(f"{where}: holds {odd.numel()} value(s) other than 0 and 1 (such as "
                         f"{float(odd.flatten()[0]):.4g}); a structured-pruning mask keeps or drops a channel "
                         "whole: threshold it first")
    return t != 0


def _sizes(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, nn.Linear):
        return mod.out_features, mod.in_features
    return mod.out_channels, mod.in_channels


def _from_weight_mask(mod: nn.Module, name: str) -> MaskPair:
    """Output rows and input columns that a prune ``weight_mask`` removes whole."""
    mask = getattr(mod, "weight_mask", None)
    if not isinstance(mask, torch.Tensor):
        return None, None
    flat = (mask.detach().to("cpu") != 0).reshape(mask.shape[0], mask.shape[1], -1)
    rows = flat.any(dim=2).any(dim=1)
    cols = flat.any(dim=2).any(dim=0)
    grouped = getattr(mod, "groups", 1) != 1
    structured = flat == (rows[:, None, None] & (cols[None, :, None] if not grouped else True))
    if not bool(structured.all()):
        raise InputError(f"'{shown(name)}': its prune weight_mask zeroes single weights, not whole output "
                         "channels or input channels; structured pruning adapters prune channels")
    out_mask = rows if not bool(rows.all()) else None
    in_mask = cols if not grouped and not bool(cols.all()) else None
    return out_mask, in_mask


def _zeroed_rows(mod: nn.Module, name: str, base_state: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """Output rows of the layer's weight that are zero here and not in the base."""
    base = base_state.get(f"{name}.weight")
    weight = getattr(mod, "weight", None)
    if base is None or not isinstance(weight, torch.Tensor) or base.shape != weight.shape:
        return None
    here = weight.detach().to("cpu").reshape(weight.shape[0], -1)
    there = base.detach().to("cpu").reshape(base.shape[0], -1)
    zeroed = (here == 0).all(dim=1) & (there != 0).any(dim=1)
    return ~zeroed if bool(zeroed.any()) else None


def _merge(found: LayerMasks, side: str, mask: torch.Tensor | None, source: str, name: str) -> None:
    if mask is None:
        return
    current = getattr(found, f"{side}_mask")
    if current is None:
        setattr(found, f"{side}_mask", mask)
        setattr(found, f"{side}_source", source)
        return
    if not torch.equal(current, mask):
        where = torch.nonzero(current != mask).flatten()[:5].tolist()
        raise InputError(f"'{shown(name)}': the {side}put masks of {getattr(found, f'{side}_source')} and "
                         f"{source} disagree (channels {where}); give the masks explicitly with --masks")


def pruning_hooks(model: nn.Module) -> list[tuple[nn.Module, object]]:
    """``torch.nn.utils.prune``'s forward pre-hooks of every module, with the module."""
    from torch.nn.utils import prune

    return [(mod, hook) for mod in model.modules() for hook in mod._forward_pre_hooks.values()
            if isinstance(hook, prune.BasePruningMethod)]


def refresh_pruned(model: nn.Module) -> nn.Module:
    """``model`` with every tensor that ``torch.nn.utils.prune`` reparametrises computed again.

    Prune keeps ``weight`` as a plain attribute, ``weight_orig * weight_mask``,
    set when pruning is applied and again before each forward pass. Loading a
    state dict, or an optimiser step after the last forward pass, changes
    ``weight_orig`` and leaves ``weight`` stale: reading it then reads the
    weights of another time (of the random initialisation, for a network
    rebuilt from its state dict). Changes ``model`` in place; returns it.
    """
    with torch.no_grad():
        for mod, hook in pruning_hooks(model):
            hook(mod, None)   # what the hook does before a forward pass: weight = weight_orig * weight_mask
    return model


def find_masks(model: nn.Module, base_state: Mapping[str, torch.Tensor] | None,
               given: Mapping[str, MaskPair] | None = None, *,
               given_source: str = "the given masks") -> dict[str, LayerMasks]:
    """Every layer's masks, from all the sources above (layers without a mask are left out).

    ``given_source`` names where ``given`` came from (``--masks FILE``) in every error about it.
    """
    modules = dict(model.named_modules())
    given = dict(given or {})
    for name in given:
        if not name or not isinstance(modules.get(name), LAYERS):
            raise InputError(f"{given_source}: mask for '{shown(name)}': no Linear or ConvNd layer of that name "
                             "in the network")
    found: dict[str, LayerMasks] = {}
    for name, mod in modules.items():
        if not name or not isinstance(mod, LAYERS):
            continue
        out_size, in_size = _sizes(mod)
        masks = LayerMasks()
        out_given, in_given = given.get(name, (None, None))
        if out_given is not None:
            _merge(masks, "out", binary_mask(out_given, out_size, f"{given_source}: '{shown(name)}' out_mask"),
                   given_source, name)
        if in_given is not None:
            _merge(masks, "in", binary_mask(in_given, in_size, f"{given_source}: '{shown(name)}' in_mask"),
                   given_source, name)
        attribute = getattr(mod, "output_mask", None)
        if isinstance(attribute, torch.Tensor):
            _merge(masks, "out", binary_mask(attribute, out_size, f"'{shown(name)}'.output_mask"),
                   "its output_mask", name)
        out_pruned, in_pruned = _from_weight_mask(mod, name)
        _merge(masks, "out", out_pruned, "its prune weight_mask", name)
        _merge(masks, "in", in_pruned, "its prune weight_mask", name)
        if base_state is not None and masks.out_mask is None:
            _merge(masks, "out", _zeroed_rows(mod, name, base_state), "rows zeroed in its weight", name)
        if masks.out_mask is not None or masks.in_mask is not None:
            found[name] = masks
    return found
