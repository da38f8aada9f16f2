"""The list of commands; each lives in a module of its own."""

from __future__ import annotations

import click

ALL: list[click.Command] = []

def _try_add(module: str, name: str) -> None:
    import importlib

    try:
        mod = importlib.import_module(f"spa_export.cli.{module}")
    except ModuleNotFoundError as err:  # a command whose module is not written yet
        if err.name == f"spa_export.cli.{module}":
            return
        raise
    ALL.append(getattr(mod, name))


for _module, _name in [
    ("build_cmd", "build"),
    ("synth_cmd", "synth"),
    ("inspect_cmd", "inspect_"),
    ("bench_cmd", "bench"),
    ("engine_cmd", "engine"),
]:
    _try_add(_module, _name)
