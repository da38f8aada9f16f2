"""Values a user gives (options, recipe keys): checked once, with the option or key named.

Each function takes the value and ``name``, the way the user wrote it
(``--rtol`` or ``recipe.yaml: key 'rtol'``), and returns the value in its
canonical type or raises :class:`~spa_export.safety.errors.InputError`. A value is
never silently replaced: a tolerance of 0 means exact comparison.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

from spa_export.safety.errors import InputError, shown

#: The largest batch any stage runs (verification, timing); memory is checked besides.
MAX_BATCH = 4096
MAX_ROUND_TO = 1024
MAX_BUDGET_S = 3600.0
MAX_SEED = 2**63 - 1
MAX_JOBS = 64
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
OPSETS = (7, 23)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string '{shown(value, 40)}'"
    if value is None:
        return "nothing"
    if isinstance(value, (list, dict)) and not value:
        return f"an empty {type(value).__name__}"
    return f"{type(value).__name__} {shown(value, 40)}"


def integer(value: object, name: str, *, minimum: int, maximum: int, why: str = "") -> int:
    """An integer in ``[minimum, maximum]`` (a string of digits is accepted from the command line)."""
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name}: expected an integer, got {_kind(value)}")
    if not minimum <= value <= maximum:
        raise InputError(f"{name} {value}: must be between {minimum} and {maximum}{why}")
    return value


def number(value: object, name: str, *, minimum: float, maximum: float, open_min: bool = False) -> float:
    """A finite number in ``[minimum, maximum]`` (``(minimum, maximum]`` with ``open_min``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InputError(f"{name}: expected a number, got {_kind(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}: expected a number, got {_kind(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} {value}: must be a finite number")
    low_ok = value > minimum if open_min else value >= minimum
    if not low_ok or value > maximum:
        bound = f"greater than {minimum:g}" if open_min else f"at least {minimum:g}"
        raise InputError(f"{name} {value:g}: must be {bound} and at most {maximum:g}")
    return value


def tolerance(value: object, name: str) -> float:
    """A verification tolerance: 0 (exact) to 1."""
    return number(value, name, minimum=0.0, maximum=1.0)


def percent(value: object, name: str) -> float:
    """Percent or accuracy points: 0 to 100."""
    return number(value, name, minimum=0.0, maximum=100.0)


def seed(value: object, name: str) -> int:
    return integer(value, name, minimum=0, maximum=MAX_SEED)


def budget(value: object, name: str) -> float:
    """Seconds of timing per model and batch size."""
    return number(value, name, minimum=0.0, maximum=MAX_BUDGET_S, open_min=True)


def round_to(value: object, name: str) -> int | str:
    """``auto`` (the multiple this processor favours, chosen at plan time), ``auto:N`` (auto's rule with
    the multiple pinned to N: the same models on every machine), or a multiple 1..1024 for every group."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    pinned = re.fullmatch(r"auto:\s*([+-]?\d+)", value.strip().lower()) if isinstance(value, str) else None
    if pinned:
        return f"auto:{integer(pinned.group(1), name, minimum=1, maximum=MAX_ROUND_TO)}"
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not re.fullmatch(r"[+-]?\d+", value.strip())):
        raise InputError(f"{name}: expected 'auto', 'auto:N' or an integer, got {_kind(value)}")
    return integer(value, name, minimum=1, maximum=MAX_ROUND_TO)


def opset(value: object, name: str) -> int:
    return integer(value, name, minimum=OPSETS[0], maximum=OPSETS[1], why=" (the opsets supported)")


def cpu_count() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads(value: object, name: str) -> int | None:
    """Intra-op threads: at most the CPUs this process may use (more only slows timing down)."""
    if value is None:
        return None
    n = cpu_count()
    return integer(value, name, minimum=1, maximum=n, why=f" (this machine gives this process {n} CPUs)")


def jobs(value: object, name: str) -> int:
    return integer(value, name, minimum=1, maximum=MAX_JOBS)


def batches(values: Iterable[object], name: str) -> tuple[int, ...]:
    """Batch sizes, each 1 to :data:`MAX_BATCH`; duplicates dropped, order kept."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        values = [values]
    out: list[int] = []
    for v in values:
        b = integer(v, name, minimum=1, maximum=MAX_BATCH)
        if b not in out:
            out.append(b)
    if not out:
        raise InputError(f"{name}: give at least one batch size")
    return tuple(out)


def choice(value: object, name: str, options: Iterable[str]) -> str:
    opts = tuple(options)
    if not isinstance(value, str) or value not in opts:
        raise InputError(f"{name}: expected one of {', '.join(opts)}, got {_kind(value)}")
    return value


def task_name(value: object, name: str) -> str:
    """A task name: it names a folder of the package, so letters, digits, '.', '_', '-' (64 at most)."""
    if not isinstance(value, str) or not TASK_NAME.fullmatch(value):
        shown_value = f"'{shown(value, 60)}'" if isinstance(value, str) else _kind(value)
        raise InputError(f"{name}: task name {shown_value} is not a plain folder name: use 1 to 64 "
                         "letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


def input_shape(value: object, name: str, *, min_dims: int = 2) -> tuple[int, ...]:
    """``"1,3,224,224"``, ``"1x3x224x224"`` or a list of integers -> ``(1, 3, 224, 224)``.

    ``min_dims``: 2 for an image or token input (a batch and channels); 1 for an
    input such as a per-sample length (only the batch axis).
    """
    if isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, str):
        parts = [p.strip() for p in value.replace("x", ",").split(",")]
    else:
        raise InputError(f"{name}: expected N,C[,H[,W]] such as 1,3,224,224, got {_kind(value)}")
    try:
        dims = tuple(integer(p, name, minimum=-(2**62), maximum=2**62) for p in parts)
    except InputError:
        raise InputError(f"{name} '{shown(value, 60)}': expected comma-separated integers such as "
                         "1,3,224,224") from None
    if len(dims) < min_dims or any(d < 1 for d in dims) or any(d > 65536 for d in dims):
        expected = "N,C[,H[,W]]" if min_dims == 2 else "N[,...]"
        raise InputError(f"{name} '{shown(value, 60)}': expected {expected} with positive sizes "
                         "of at most 65536")
    return dims
