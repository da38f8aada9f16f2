"""A signal that a C extension turns into another error is still reported as the signal."""

from __future__ import annotations

import os
import signal
import time

import click
from click.testing import CliRunner

from spa_export.cli.main import _Group
from spa_export.safety.errors import InputError


def _group(error: type[Exception]) -> click.Group:
    @click.group(cls=_Group)
    def group() -> None:
        pass

    @group.command()
    def load() -> None:
        try:   # what a loader in C does: the handler's exception comes back out as its own error
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except KeyboardInterrupt:
            raise error("could not determine the shape of object type 'torch.storage.UntypedStorage'") from None

    @group.command()
    def fail() -> None:
        raise error("a real error, with no signal")

    return group


def test_an_interrupt_converted_by_a_c_extension_is_reported_as_the_interrupt() -> None:
    for error in (TypeError, InputError):
        result = CliRunner().invoke(_group(error), ["load"])
        assert result.exit_code == 143, result.output
        assert result.output.strip().splitlines()[-1] == "terminated (SIGTERM): nothing was written"


def test_errors_without_a_signal_keep_their_own_exit() -> None:
    assert CliRunner().invoke(_group(InputError), ["fail"]).exit_code == 2
    result = CliRunner().invoke(_group(TypeError), ["fail"])
    assert result.exit_code == 2 and "internal error (TypeError: a real error" in result.output
