"""spa-export: deploy Structured Pruning Adapters as small, exact, verified networks.

The package, top to bottom. Each folder imports only the folders below it; its docstring says
what it holds and, on its ``May import:`` line, which folders it may import
(``tests/test_layout.py`` holds every import to that line):

========== ==============================================================================
cli/       the ``spa-export`` command: thin click commands over the Python API
release/   recipes, packages of many tasks, ``-j`` workers, shards and ``assemble``, Triton
pack/      SPA files: from networks trained with ``sp_adapters`` (``pack``), or ``synth``
stages/    one task's build, stage by stage; ``stages.pipeline`` alone knows their order
nets/      network helpers with torch: architectures, checkpoints, copies, attention, MACs
runtime/   no torch: runners (ONNX Runtime, TensorRT, PyTorch CUDA), timing, engines, inputs
report/    report.md, the latency plot and a package's summary
spa/       the SPA file format (docs/spa-format.md)
safety/    no torch: errors, validation, atomic publishing, ownership, signals, memory
========== ==============================================================================

``examples.py`` holds small example networks, named ``spa_export.examples:NAME`` as architectures.

The public API is importable from here, each name loaded on first use (``import spa_export``
imports nothing heavy): :func:`build` and :class:`BuildOptions` (one task),
:func:`build_package`, :class:`PackageOptions` and :func:`load_recipe` (a release),
:func:`pack_model` and :func:`pack_checkpoint` (an SPA file from a trained network),
:func:`read_spa`, :func:`write_spa`, :func:`make_spa` and :class:`LayerSpa` (the format),
:func:`synth_spa` (a synthetic SPA) and :class:`InputSpec` (a network's input); on a device, without
torch: :func:`open_package`, :func:`materialize_task` (a task's verified ``model.onnx`` bytes, from its
file or its delta) and :func:`task_session` (an ONNX Runtime session of a task, made in memory).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "build": "spa_export.stages.pipeline",
    "BuildOptions": "spa_export.stages.pipeline",
    "BuildResult": "spa_export.stages.pipeline",
    "build_package": "spa_export.release.package",
    "PackageOptions": "spa_export.release.package",
    "load_recipe": "spa_export.release.recipe",
    "pack_model": "spa_export.pack",
    "pack_checkpoint": "spa_export.pack",
    "read_spa": "spa_export.spa",
    "write_spa": "spa_export.spa",
    "make_spa": "spa_export.spa",
    "LayerSpa": "spa_export.spa",
    "SpaFile": "spa_export.spa",
    "synth_spa": "spa_export.pack.synth",
    "InputSpec": "spa_export.runtime.inputs",
    "task_session": "spa_export.runtime.packaged",
    "materialize_task": "spa_export.runtime.packaged",
    "open_package": "spa_export.runtime.packaged",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> object:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'spa_export' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
