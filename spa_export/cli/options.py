"""Shared click option types."""

from __future__ import annotations

from pathlib import Path

import click


class InputShape(click.ParamType):
    """``N,C,H,W`` (any rank >= 2) or ``NAME:SHAPE[:DTYPE[:LOW:HIGH]]``, parsed with a clear message."""

    name = "SHAPE"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> object:
        if not isinstance(value, str):
            return value
        from spa_export.stages.pipeline import parse_input_shape

        # an InputError, not click's multi-line usage error: the CLI reports it as one line
        return parse_input_shape(str(value))


INPUT_SHAPE = InputShape()
INPUT_SHAPE_HELP = ("Input shape N,C,H,W; the batch axis stays dynamic. A network of several inputs, or of "
                    "integer or bool ones, takes it once per input in forward's order, as "
                    "NAME:SHAPE[:DTYPE[:LOW:HIGH]]: DTYPE float32 (default), int64, int32 or bool; integer "
                    "inputs give the range [LOW, HIGH) of their values (token ids: 0 and the vocabulary "
                    "size), e.g. --input-shape ids:1,16:int64:0:1000 --input-shape mask:1,16:bool.")

ARCH_HELP = ("Architecture: 'torchvision:NAME' (e.g. torchvision:resnet50) or 'package.module:callable', "
             "a factory returning an nn.Module. The latter IMPORTS AND RUNS that module: name only code "
             "you trust. Default: the SPA's spa.arch, if it is 'torchvision:NAME' or "
             "'spa_export.examples:NAME' (a file cannot make spa-export run other code).")


class _NonEmptyPath(click.ParamType):
    """A path that must not be empty: ``--out ""`` (an unset shell variable) is refused, not taken as '.'."""

    name = "PATH"

    def __init__(self, what: str) -> None:
        self.what = what

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        if isinstance(value, Path):
            return value
        if not str(value).strip():
            from spa_export.safety.errors import InputError

            option = param.opts[0] if param is not None and param.opts else "a path"
            raise InputError(f"{option} is empty (an unset shell variable?): name the {self.what} explicitly")
        return Path(str(value))


#: An output file or folder; what may be replaced is decided by spa_export.safety.ownership.
OUTPUT = _NonEmptyPath("output")
#: An input file.
INPUT = _NonEmptyPath("file")
