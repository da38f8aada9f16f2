"""Architectures and base checkpoints.

An architecture spec names a factory returning an ``nn.Module``:

* ``torchvision:NAME`` - a torchvision classification model, built with
  ``weights=None`` (nothing is downloaded), plus optional keyword arguments;
* ``package.module:callable`` - a user's factory. The module is imported
  because the user named it: that runs its code, which is the user's choice.

Checkpoints are read without running code: safetensors, or a PyTorch state
dict through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import importlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from spa_export.safety.errors import ArchitectureError, CheckpointError, shown

_SPEC = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_]\w*)$")


@contextmanager
def _skip_weight_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s functions no-ops while a network is built whose weights are loaded next.

    Initialising ResNet-50 costs a second and VGG several; every parameter and
    persistent buffer is overwritten by the strict load that follows, and
    non-persistent buffers are computed by the module's own code, not by
    ``torch.nn.init``.
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, _keep)
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def _keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    """Instantiate the architecture ``spec`` in eval mode, randomly initialised.

    To load a checkpoint into it, :func:`build_loaded` is cheaper: no
    initialisation, and no copy of the weights.
    """
    factory, kwargs = _resolve(spec, num_classes)
    return _call(spec, factory, kwargs)


def _resolve(spec: str, num_classes: int | None) -> tuple[Callable[..., object], dict[str, object]]:
    """The factory ``spec`` names (importing its module) and its keyword arguments."""
    if not isinstance(spec, str) or not _SPEC.match(spec.strip()):
        raise ArchitectureError(
            f"architecture '{spec}' is not of the form 'torchvision:NAME' or 'package.module:callable'"
        )
    module_name, attr = spec.strip().split(":", 1)
    kwargs: dict[str, object] = {}
    if module_name == "torchvision":
        import torchvision

        names = set(torchvision.models.list_models(module=torchvision.models))
        if attr not in names:
            raise ArchitectureError(
                f"unknown torchvision classification model '{attr}' "
                f"(known: {', '.join(sorted(names)[:8])}, ...)"
            )
        factory = torchvision.models.get_model_builder(attr)
        kwargs["weights"] = None
        if attr.startswith("inception_v3") or attr.startswith("googlenet"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = False
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as err:  # the user's module: any import error is bad input
            raise ArchitectureError(f"cannot import '{module_name}' for architecture '{spec}': {err}") from err
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ArchitectureError(f"'{module_name}' has no callable '{attr}' (architecture '{spec}')")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return factory, kwargs


def _call(spec: str, factory: Callable[..., object], kwargs: dict[str, object]) -> nn.Module:
    try:
        model = factory(**kwargs)
    except Exception as err:
        raise ArchitectureError(f"architecture '{spec}' failed to build: {err}") from err
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"architecture '{spec}' returned {type(model).__name__}, not an nn.Module")
    return model.eval()


#: torchvision classifiers whose default constructor adds auxiliary heads that run in training
#: mode only. spa-export builds them without (``aux_logits=False``); a checkpoint saved from the
#: default constructor holds the heads' entries, which are dropped (the report lists them).
AUXILIARY_HEADS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def auxiliary_prefixes(spec: str) -> tuple[str, ...]:
    """The name prefixes of ``spec``'s training-only auxiliary heads (none for most architectures)."""
    module, _, name = str(spec).strip().partition(":")
    return AUXILIARY_HEADS.get(name, ()) if module == "torchvision" else ()


def without_auxiliary_heads(spec: str, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state`` without the training-only auxiliary heads of ``spec``'s default constructor, and their keys."""
    prefixes = auxiliary_prefixes(spec)
    dropped = sorted(k for k in state if prefixes and k.startswith(prefixes))
    if not dropped:
        return dict(state), []
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}, dropped


def build_loaded(spec: str, state_dict: Mapping[str, torch.Tensor], *, source: object = None) -> nn.Module:
    """The architecture with ``state_dict`` loaded strictly, sharing its tensors (nothing is copied).

    The network is first built on the meta device, which allocates no memory;
    loading then makes ``state_dict``'s tensors the network's own. Callers must
    not change those tensors in place (replace them instead). Where the
    factory cannot build on the meta device, or leaves tensors there that the
    state dict does not hold (non-persistent buffers), it is built for real.
    """
    model = build_on_meta(spec)  # None: a factory that needs real data, built for real below
    if model is not None:
        load_into(model, state_dict, source=source, assign=True)
        if not _on_meta(model):
            return model
    factory, kwargs = _resolve(spec, None)
    with _skip_weight_init():
        model = _call(spec, factory, kwargs)
    load_into(model, state_dict, source=source, assign=True)
    return model


def build_on_meta(spec: str) -> nn.Module | None:
    """The architecture on the meta device (shapes, no data), or None where its factory cannot."""
    factory, kwargs = _resolve(spec, None)
    try:  # initialising meta tensors computes nothing but still costs (0.04 s for ResNet-50)
        with torch.device("meta"), _skip_weight_init():
            return _call(spec, factory, kwargs)
    except ArchitectureError:
        return None


def _on_meta(model: nn.Module) -> bool:
    """Whether any parameter, buffer or plain tensor attribute of ``model`` has no data."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]
    return any(t.is_meta for t in tensors)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: object = None,
              assign: bool = False) -> None:
    """Load ``state_dict`` into ``model`` strictly, naming missing and extra keys.

    The module version metadata that ``nn.Module.state_dict`` attaches (and
    safetensors files never carry) is taken from the model itself, so modules
    that check versions when loading (MNASNet, batch-norm) accept any file.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    where = f"{source}: " if source is not None else ""
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if extra:
            parts.append(f"unexpected keys {_few(extra)}")
        raise CheckpointError(f"{where}state dict does not fit the architecture: " + "; ".join(parts))
    for key, value in state_dict.items():
        want = expected[key]
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{where}'{shown(key)}' has shape {list(value.shape)}, the architecture expects {list(want.shape)}"
            )
        if _kind(value.dtype) != _kind(want.dtype):
            raise CheckpointError(f"{where}'{shown(key)}' holds {value.dtype} values where the architecture "
                                  f"keeps {_kind(want.dtype)} ones ({want.dtype})")
    ordered: OrderedDict[str, torch.Tensor] = OrderedDict(state_dict)
    ordered._metadata = getattr(expected, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    # assign=True: the model's tensors become the state dict's (no copy); only for callers that
    # never change the model in place.
    model.load_state_dict(ordered, strict=True, assign=assign)


def _kind(dtype: torch.dtype) -> str:
    """What a tensor can hold: a weight needs floating point, a counter an integer."""
    if dtype == torch.bool:
        return "boolean"
    if dtype.is_complex:
        return "complex"
    return "floating-point" if dtype.is_floating_point else "integer"


def _few(keys: list[str], n: int = 5) -> str:
    listed = ", ".join(f"'{shown(k)}'" for k in keys[:n])
    return listed + (f" and {len(keys) - n} more" if len(keys) > n else "")


def resize_for_overrides(model: nn.Module, overrides: Mapping[str, torch.Tensor]) -> None:
    """Replace modules whose overridden weight has another dimension 0 (a new head).

    Only ``Linear`` and ``ConvNd`` can be resized; the compatibility check has
    already refused anything else. Works in place on the model it is given
    (callers pass their own copy).
    """
    modules = dict(model.named_modules())
    for key, tensor in overrides.items():
        if not key.endswith(".weight"):
            continue
        name = key[: -len(".weight")]
        mod = modules.get(name)
        if isinstance(mod, nn.Linear) and tensor.shape[0] != mod.out_features:
            new: nn.Module = nn.Linear(mod.in_features, int(tensor.shape[0]), bias=mod.bias is not None)
        elif isinstance(mod, nn.modules.conv._ConvNd) and tensor.shape[0] != mod.out_channels:
            new = type(mod)(
                mod.in_channels, int(tensor.shape[0]), mod.kernel_size, stride=mod.stride,
                padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                bias=mod.bias is not None, padding_mode=mod.padding_mode,
            )
        else:
            continue
        set_submodule(model, name, new.eval())


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` (a dotted path) of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
