"""The list of commands; each lives in a module of its own (click only at import time)."""

from __future__ import annotations

import click

from spa_export.cli.assemble_cmd import assemble
from spa_export.cli.bench_cmd import bench
from spa_export.cli.build_cmd import build
from spa_export.cli.check_cmd import check
from spa_export.cli.engine_cmd import engine
from spa_export.cli.inspect_cmd import inspect_
from spa_export.cli.materialize_cmd import materialize
from spa_export.cli.pack_cmd import pack
from spa_export.cli.synth_cmd import synth

ALL: list[click.Command] = [build, pack, assemble, synth, inspect_, bench, engine, materialize, check]
