"""Entry point of the ``spa-export`` command.

Commands live one per module and import heavy libraries (torch, onnx,
onnxruntime) inside their bodies so that ``spa-export --help`` stays instant.
Every :class:`~spa_export.safety.errors.SpaExportError` becomes one line on stderr and
its exit code (2 for bad input, 1 for failed verification); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from spa_export import __version__
from spa_export.safety import interrupts
from spa_export.safety.errors import SpaExportError, os_error_message, shown


class _Group(click.Group):
    """A click group that turns our typed errors, usage errors and the signals into clean exits."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: object) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.exceptions.NoArgsIsHelpError:   # no arguments at all: click shows the help
            raise
        except click.UsageError as err:   # the group's own options, before any command runs
            click.echo(f"error: {_usage(err)}", err=True)
            sys.exit(2)

    def invoke(self, ctx: click.Context) -> object:
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        fired: list[int] = []
        try:
            try:
                with interrupts.raised(fired):
                    return super().invoke(ctx)
            except Exception as err:
                if fired:  # the signal, raised inside a C extension's call, came out as this error
                    raise interrupts.stop_for(fired[-1]) from err
                raise
        except SpaExportError as err:
            _fail(ctx, debug, str(err), err.exit_code)
        except KeyboardInterrupt as stop:  # Ctrl-C, SIGTERM; the output is complete if it says so
            click.echo(interrupts.message(stop), err=True)
            ctx.exit(interrupts.exit_code(stop))
        except MemoryError:
            _fail(ctx, debug, "out of memory; nothing was written", 2)
        except OSError as err:  # the machine's own failure: full disk, read-only file system...
            _fail(ctx, debug, f"{os_error_message(err)}; nothing was written", 2)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as err:  # one line, as for every bad input
            _fail(ctx, debug, _usage(err), 2)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except ModuleNotFoundError as err:  # an optional dependency: say which install brings it
            _fail(ctx, debug, _missing(ctx, err), 2)
        except Exception as err:  # a bug of ours: one line, the traceback with --debug
            _fail(ctx, debug, f"internal error ({type(err).__name__}: {_one_line(err)[:300]}); nothing "
                  "was written. Run with --debug for the traceback and please report it", 2)
        return None


#: Top-level module -> the pip command that installs it.
INSTALLS = {
    **dict.fromkeys(("torch", "torchvision", "onnxsim", "onnxscript", "torch_pruning"),
                    "pip install 'spa-export[build]'"),
    **dict.fromkeys(("tensorrt", "polygraphy", "cuda"), "pip install 'spa-export[tensorrt]' (NVIDIA GPU)"),
    "matplotlib": "pip install 'spa-export[report]'",
    "sp_adapters": "pip install structured-pruning-adapters",
    "yaml": "pip install pyyaml",
}


def _missing(ctx: click.Context, err: ModuleNotFoundError) -> str:
    name = (err.name or str(err)).split(".")[0]
    command = f"spa-export {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "spa-export"
    how = INSTALLS.get(name)
    if how is None:
        return f"{command} needs the Python module '{name}', which is not installed"
    return f"{command} needs {name}, which is not installed: {how}"


#: The longest error line printed (a message quoting many names is cut).
MAX_ERROR_CHARS = 2000


def _fail(ctx: click.Context, debug: bool, text: str, code: int) -> None:
    if debug:
        traceback.print_exc()
    click.echo(f"error: {shown(_one_line(text), MAX_ERROR_CHARS)}", err=True)
    ctx.exit(code)


def _usage(err: click.UsageError) -> str:
    """A usage error as one line that says where help is: click's own takes three."""
    where = err.ctx.command_path if err.ctx is not None else "spa-export"
    return f"{_one_line(err.format_message())} (see '{where} --help')"


def _one_line(err: object) -> str:
    """The message on one line: wrapped third-party messages (YAML, numpy) may span several."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spa-export")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Turn a frozen base network plus one task's SPA file into the smallest
    network that computes exactly what the task's masked network computes.

    Exit codes: 0 success, 1 verification failed, 2 bad input, usage or a
    failure of the machine (full disk), 130 Ctrl-C, 143 SIGTERM. Outputs are
    spa-export's own folders: an existing one is replaced only when it is
    empty or a previous spa-export output; nothing else is ever deleted.
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
    except KeyboardInterrupt as stop:  # a signal before the group's own handler is in place
        click.echo(interrupts.message(stop), err=True)
        _exit_now(interrupts.exit_code(stop))
    except SystemExit as done:
        if done.code == 130:
            _exit_now(130)
        raise


def _exit_now(code: int) -> None:
    # A KeyboardInterrupt that crossed C code running Python through PyRun_* (as
    # extension modules' initialisation may) makes CPython kill itself with SIGINT at
    # exit, whatever the exit code: end here so that the code is the documented one.
    # (SIGTERM's exit, 143, goes the ordinary way, with the interpreter's clean-up.)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
