"""Entry point of the ``spa-export`` command.

Commands live one per module and import heavy libraries (torch, onnx,
onnxruntime) inside their bodies so that ``spa-export --help`` stays instant.
Every :class:`~spa_export.errors.SpaExportError` becomes one line on stderr and
its exit code (2 for bad input, 1 for failed verification); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from spa_export import __version__
from spa_export.cli import INTERRUPTED
from spa_export.errors import InterruptedAfterPublish, SpaExportError


class _Group(click.Group):
    """A click group that turns our typed errors into clean exits."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SpaExportError as err:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {_one_line(err)}", err=True)
            ctx.exit(err.exit_code)
        except InterruptedAfterPublish as done:  # the output is complete: say so
            click.echo(str(done), err=True)
            ctx.exit(130)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            ctx.exit(130)
        except MemoryError:
            click.echo("error: out of memory", err=True)
            ctx.exit(2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as err:  # a bug of ours: one line, the traceback with --debug
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: internal error ({type(err).__name__}: {_one_line(err)[:300]}); "
                       "nothing was written. Run with --debug for the traceback and please report it",
                       err=True)
            ctx.exit(2)
        return None


def _one_line(err: BaseException) -> str:
    """The message on one line: wrapped third-party messages (YAML, numpy) may span several."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spa-export")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Turn a frozen base network plus one task's SPA file into the smallest
    network that computes exactly what the task's masked network computes.

    Exit codes: 0 success, 1 verification failed, 2 bad input or usage.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each module defines one click command; importing them is cheap (click only).
    from spa_export.cli import commands

    for command in commands.ALL:
        cli.add_command(command)


def main() -> None:
    try:
        _register()
        cli(prog_name="spa-export")
    except KeyboardInterrupt:  # Ctrl-C before the group's own handler is in place
        click.echo(INTERRUPTED, err=True)
        _exit_interrupted()
    except SystemExit as done:
        if done.code == 130:
            _exit_interrupted()
        raise


def _exit_interrupted() -> None:
    # A KeyboardInterrupt that crossed C code running Python through PyRun_* (as
    # extension modules' initialisation may) makes CPython kill itself with SIGINT at
    # exit, whatever the exit code: end here so that the code is 130 as documented.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
