"""Typed errors.

Every error a user can cause derives from :class:`SpaExportError` and carries
the exit code the CLI returns for it: 2 for bad input or usage, 1 for a build
whose verification failed. The CLI prints ``str(error)`` as one line on stderr;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import os


class SpaExportError(Exception):
    """Base class of every error spa-export raises on purpose."""

    exit_code: int = 2

    def __reduce__(self) -> tuple:
        # Errors cross process boundaries (parallel builds) as their class and final message;
        # the constructors' own arguments (paths, digests) are already in the message.
        return (_restore, (type(self), str(self)))


def _restore(cls: type[SpaExportError], message: str) -> SpaExportError:
    err = Exception.__new__(cls)
    Exception.__init__(err, message)
    return err


class InputError(SpaExportError):
    """Bad input or usage (exit 2)."""


class SpaFormatError(InputError):
    """An SPA file that does not follow the format (names the file and key)."""

    def __init__(self, message: str, *, path: object = None, key: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if key is not None:
            where.append(f"tensor '{shown(key)}'")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = path
        self.key = key


class SpaCompatibilityError(SpaFormatError):
    """An SPA file that is well-formed but does not fit the base network."""


class BaseMismatchError(InputError):
    """The SPA's ``spa.base_digest`` differs from the base's digest."""

    def __init__(self, expected: str, actual: str, *, spa_path: object = None) -> None:
        super().__init__(
            f"{spa_path}: base digest mismatch: the SPA was trained on {expected}, "
            f"the given base is {actual} (pass --ignore-base-digest to go on anyway)"
        )
        self.expected = expected
        self.actual = actual


class CheckpointError(InputError):
    """A base checkpoint that cannot be read or does not fit the architecture."""


class ArchitectureError(InputError):
    """An unknown or unloadable architecture spec."""


def non_finite_merge(spa_path: object, layer: str, what: str) -> InputError:
    """The error for a layer whose ``W'`` (``what``: weight or bias) overflows float32."""
    return InputError(f"{spa_path}: merging '{layer}' gives non-finite {what} values")


class VerificationError(SpaExportError):
    """The exported network does not compute the masked network's function."""

    exit_code = 1


class BuildError(SpaExportError):
    """A stage failed for a reason that is not the user's input (exit 2, reported)."""


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as an input file ("no such file", "is a directory"), or None."""
    if os.path.isfile(path):
        return None
    if os.path.isdir(path):
        return "is a directory, not a file"
    if os.path.lexists(path):
        return "is not a regular file" if os.path.exists(path) else "is a broken symbolic link"
    return "no such file"


def require_file(path: str | os.PathLike[str], error: type[SpaExportError] | None = None) -> None:
    """Raise ``error`` (default :class:`InputError`) naming ``path`` unless it is a regular file."""
    problem = not_a_file(path)
    if problem is not None:
        raise (error or InputError)(f"{path}: {problem}")


#: How much of a text taken from a file (a tensor name, metadata) a message quotes.
SHOWN_CHARS = 120


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """``text`` safe to print on a terminal: control and format characters escaped, cut to ``limit``.

    Names and metadata come from files that anyone may have written; printed
    raw, an escape sequence could rewrite the user's terminal, a newline could
    forge a second message, and a megabyte-long name would drown the one line.
    """
    import unicodedata

    s = str(text)
    cut = len(s) > limit
    s = s[:limit]
    out = []
    for ch in s:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) + (f"... ({len(str(text)) - limit} more characters)" if cut else "")


def os_error_message(err: OSError) -> str:
    """One line for a failure of the machine itself (full disk, read-only file system, quota...)."""
    import errno

    where = f" ({shown(err.filename, 300)})" if err.filename else ""
    reason = err.strerror or str(err)
    hints = {errno.ENOSPC: "free some space or write elsewhere",
             errno.EDQUOT: "free some space or write elsewhere",
             errno.EROFS: "write elsewhere",
             errno.EACCES: "check the permissions",
             errno.ENAMETOOLONG: "use a shorter name"}
    hint = hints.get(err.errno or 0)
    return f"{reason}{where}" + (f": {hint}" if hint else "")


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message, or its type's name where the message is empty
    (``assert`` in a third-party network raises ``AssertionError()`` with none)."""
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def error_line(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (or ``Type`` alone), cut at ``limit`` characters."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0].strip()[:limit]}" if lines else type(err).__name__
