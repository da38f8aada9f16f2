"""Stage 1: read the base checkpoint and the SPA file, check they belong together.

Returns the task's base network (overrides applied, float32, eval mode) and
what the later stages and the report need. Every problem is a typed error
raised before any output is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from spa_export.nets.arch import (
    auxiliary_prefixes,
    build_loaded,
    load_into,
    resize_for_overrides,
    without_auxiliary_heads,
)
from spa_export.nets.checkpoint import load_state_dict_file
from spa_export.nets.finite import all_finite
from spa_export.safety.errors import ArchitectureError, BaseMismatchError, InputError, shown
from spa_export.spa import SpaFile, file_sha256, read_spa, state_dict_digest
from spa_export.stages.compat import check_compatible


@dataclass
class Loaded:
    arch: str
    base_path: Path
    spa_path: Path
    base_state: dict[str, torch.Tensor] | None   # None once a stage has dropped it
    base_digest: str
    spa: SpaFile
    spa_sha256: str
    model: nn.Module | None   # the task's base (overrides applied); None once merged
    dropped: list[str] = field(default_factory=list)   # training-only entries of the base not used
    spa_dropped: list[str] = field(default_factory=list)   # the SPA's layers and overrides of those heads

    def to_json(self) -> dict:
        base: dict = {"path": str(self.base_path), "digest": self.base_digest}
        if self.dropped:
            base["dropped"] = {"keys": len(self.dropped), "first": self.dropped[:3],
                               "why": "auxiliary classifier heads of the architecture's default constructor: "
                                      "they run in training mode only"}
        return {
            "arch": self.arch,
            "base": base,
            "spa": {"path": str(self.spa_path), "sha256": self.spa_sha256, "task": self.spa.task,
                    "arch": self.spa.arch, "base_digest": self.spa.base_digest,
                    **({"dropped": {"entries": len(self.spa_dropped), "first": self.spa_dropped[:3],
                                    "why": "layers and overrides of the auxiliary classifier heads, which run in "
                                           "training mode only and are not in the deployed network"}}
                       if self.spa_dropped else {})},
        }


#: Modules whose factories an SPA file may name in ``spa.arch`` by itself: building them runs no
#: code beyond this package and torchvision. Any other ``package.module:callable`` imports and
#: calls what the file names, so the user must name it too, with ``--arch``.
TRUSTED_ARCH_MODULES = ("torchvision", "spa_export.examples")


def resolve_arch(arch: str | None, spa: SpaFile) -> str:
    if arch and spa.arch and arch.strip() != spa.arch.strip():
        raise ArchitectureError(
            f"{spa.path}: the SPA was made for '{shown(spa.arch)}', not '{arch}' (omit --arch to use the SPA's)"
        )
    chosen = arch or spa.arch
    if not chosen:
        raise ArchitectureError(f"{spa.path}: no architecture: pass --arch (the SPA has no spa.arch)")
    if not arch and chosen.strip().split(":", 1)[0] not in TRUSTED_ARCH_MODULES:
        raise ArchitectureError(
            f"{spa.path}: spa.arch '{shown(chosen)}' names Python code to import and run; the file alone "
            f"cannot choose it: pass --arch '{shown(chosen)}' if you trust that code"
        )
    return chosen


@dataclass
class Base:
    """A base checkpoint read once: its state dict (None once dropped) and digest."""

    path: Path
    state: dict[str, torch.Tensor] | None
    digest: str


def read_base(path: str | os.PathLike) -> Base:
    """Read the base checkpoint and compute its digest (spec, "Base digest")."""
    base_path = Path(path)
    state = load_state_dict_file(base_path)
    bad = [k for k, v in state.items() if not all_finite(v)]
    if bad:
        raise InputError(f"{base_path}: non-finite values in '{shown(bad[0])}'")
    return Base(base_path, state, state_dict_digest(state))


def load_task(base: Base, spa: str | os.PathLike, arch: str | None = None, *,
              ignore_base_digest: bool = False) -> Loaded:
    """One task's base network (overrides applied) from an already read ``base``; the base is shared."""
    if base.state is None:
        raise ValueError("load_task needs the base's state dict; it was dropped")
    spa_path = Path(spa)
    spa_file = read_spa(spa_path)
    arch_spec = resolve_arch(arch, spa_file)
    if spa_file.base_digest and spa_file.base_digest != base.digest and not ignore_base_digest:
        raise BaseMismatchError(spa_file.base_digest, base.digest, spa_path=spa_path)
    state, dropped = without_auxiliary_heads(arch_spec, base.state)
    spa_file, spa_dropped = _without_auxiliary_layers(spa_file, auxiliary_prefixes(arch_spec))
    model = build_loaded(arch_spec, state, source=base.path)  # the base alone must fit
    check_compatible(spa_file, model, state)
    if spa_file.overrides:
        resize_for_overrides(model, spa_file.overrides)
        load_into(model, {**state, **spa_file.overrides}, source=spa_path, assign=True)
    _check_variances(model, base.path, spa_file)
    return Loaded(arch_spec, base.path, spa_path, base.state, base.digest, spa_file, file_sha256(spa_path),
                  model.float().eval(), dropped, spa_dropped)


def load_inputs(base: str | os.PathLike, spa: str | os.PathLike, arch: str | None = None, *,
                ignore_base_digest: bool = False) -> Loaded:
    """Read the base and load one task: :func:`read_base` then :func:`load_task`."""
    return load_task(read_base(base), spa, arch, ignore_base_digest=ignore_base_digest)


def _without_auxiliary_layers(spa: SpaFile, prefixes: tuple[str, ...]) -> tuple[SpaFile, list[str]]:
    """``spa`` without its layers and overrides of the auxiliary heads (training with the library adapts
    and masks them too), and their names; the same file where there are none."""
    if not prefixes:
        return spa, []
    layers = {k: v for k, v in spa.layers.items() if not k.startswith(prefixes)}
    overrides = {k: v for k, v in spa.overrides.items() if not k.startswith(prefixes)}
    gone = sorted(set(spa.layers) - set(layers)) + sorted(f"override.{k}" for k in set(spa.overrides) - set(overrides))
    if not gone:
        return spa, []
    return replace(spa, layers=layers, overrides=overrides), gone


def _check_variances(model: nn.Module, base_path: Path, spa: SpaFile) -> None:
    """A negative batch-norm variance is finite but makes every output NaN: refuse it, naming the key."""
    for name, mod in model.named_modules():
        var = getattr(mod, "running_var", None)
        if isinstance(mod, nn.modules.batchnorm._NormBase) and var is not None and bool((var < 0).any()):
            key = f"{name}.running_var" if name else "running_var"
            source = spa.path if key in spa.overrides else base_path
            raise InputError(f"{source}: '{key}' has negative entries (min {float(var.min()):.4g}); "
                             "a variance cannot be negative")


def reread_base(loaded: Loaded) -> dict[str, torch.Tensor]:
    """The base state again, for a stage that runs after it was dropped; refused if the file changed."""
    if loaded.base_state is not None:
        return loaded.base_state
    state = load_state_dict_file(loaded.base_path)
    digest = state_dict_digest(state)
    if digest != loaded.base_digest:
        raise InputError(f"{loaded.base_path}: the file changed while the build ran "
                         f"(read as {loaded.base_digest}, now {digest})")
    return state
