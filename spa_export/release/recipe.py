"""Recipes: one base, many tasks, the settings of a release, in one YAML file.

::

    base: ../models/digits/base.safetensors     # paths are relative to the recipe
    arch: spa_export.examples:digits_cnn
    input_shape: 1,1,8,8                        # or a list of inputs, see spa_export.runtime.inputs
    out: ../out/digits
    bench: cpu
    tasks:
      - name: odd-even                          # the task's folder in the package
        spa: ../models/digits/odd-even.spa
        eval: ../models/digits/odd-even-test.npz

Top-level keys are the options of ``spa-export build`` (``round_to`` or
``round-to`` for ``--round-to``); a flag given on the command line overrides
the recipe's value. A recipe with ``spa:`` instead of ``tasks:`` is one task.

Reading is bounded and safe: the file is at most 1 MiB, loaded with safe
YAML only (no Python objects), and refused before it is built if its aliases
expand beyond :data:`MAX_VALUES` values, nest deeper than :data:`MAX_DEPTH`,
or repeat a key. Every error names the file and the key; a misspelt key is
refused with the closest valid one.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spa_export.runtime.inputs import Inputs, as_inputs
from spa_export.runtime.quantize import ACTIVATIONS, precisions
from spa_export.safety import validate
from spa_export.safety.errors import InputError, first_line, shown

MAX_RECIPE_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 32
MAX_TASKS = 1000
LAYOUTS = ("plain", "triton", "edge")


@dataclass(frozen=True)
class Task:
    """One task of a recipe: its name (a folder of the package), SPA file and optional evaluation set."""

    name: str
    spa: Path
    eval: Path | None = None
    inputs: tuple[Path, ...] = ()
    calibration: Path | str | None = None   # int8 calibration inputs of this task (or "random")


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``settings`` holds the build options (BuildOptions' field names)."""

    path: Path | None
    base: Path
    input_shape: Inputs   # every input of the network (one float input where a shape was written)
    tasks: tuple[Task, ...]
    out: Path | None = None
    layout: str = "plain"
    settings: dict[str, Any] = field(default_factory=dict)
    written: dict[str, Any] = field(default_factory=dict)   # the recipe's values as written

    def inputs(self) -> list[Path]:
        """Every file the recipe reads (never to be replaced by an output)."""
        files = [self.base, *self.settings.get("inputs", ())]
        for t in self.tasks:
            files += [t.spa, *t.inputs, *filter(None, [t.eval])]
            files += [t.calibration] if isinstance(t.calibration, Path) else []
        calibration = self.settings.get("calibration")
        files += [calibration] if isinstance(calibration, Path) else []
        return files + ([self.path] if self.path is not None else [])


# ------------------------------------------------------------------ reading YAML within bounds

def _yaml_error(path: Path, err: Exception) -> InputError:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or first_line(err)
    return InputError(f"{path}: cannot read the recipe: not valid YAML{where}: {shown(problem)}")


def _check_node(path: Path, node: Any) -> None:
    """Count the values the document expands to (aliases included), its depth, and duplicate keys."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: Any, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise InputError(f"{path}: the recipe nests deeper than {MAX_DEPTH} levels")
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise InputError(f"{path}: the recipe refers to itself (a recursive YAML alias) at line "
                             f"{n.start_mark.line + 1}")
        open_nodes.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            for child in n.value:
                total += size(child, depth + 1)
        elif isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        raise InputError(f"{path}: key '{shown(k.value)}' is given twice (line "
                                         f"{k.start_mark.line + 1})")
                    seen.add(k.value)
                total += size(k, depth + 1) + size(v, depth + 1)
        open_nodes.discard(key)
        if total > MAX_VALUES:
            raise InputError(f"{path}: the recipe expands to more than {MAX_VALUES} values "
                             "(YAML aliases repeating large parts?); refusing to read it")
        sizes[key] = total
        return total

    size(node, 0)


def read_yaml(path: Path) -> Any:
    """The recipe's YAML document, read within the bounds above."""
    import yaml

    from spa_export.safety.errors import require_file

    require_file(path)
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise InputError(f"{path}: {size} bytes; a recipe is at most {MAX_RECIPE_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: a recipe is UTF-8 text") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the recipe: {err.strerror or err}") from err
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise InputError(f"{path}: the recipe is empty")
        _check_node(path, node)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from err
    finally:
        loader.dispose()


# ------------------------------------------------------------------ keys and their values

Convert = Callable[[Any, str, Path], Any]


def _path(value: Any, name: str, folder: Path) -> Path:
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InputError(f"{name}: expected a path, got {validate._kind(value)}")
    return Path(os.path.normpath(folder / value))


def _file(value: Any, name: str, folder: Path) -> Path:
    """A path to an input file, which must exist."""
    from spa_export.safety.errors import not_a_file

    path = _path(value, name, folder)
    problem = not_a_file(path)
    if problem is not None:
        raise InputError(f"{name}: {path}: {problem}")
    return path


def _calibration(value: Any, name: str, folder: Path) -> Path | str:
    """Int8 calibration inputs: a file, or the word ``random`` (asked for explicitly)."""
    return "random" if value == "random" else _file(value, name, folder)


def _files(value: Any, name: str, folder: Path) -> tuple[Path, ...]:
    values = value if isinstance(value, list) else [value]
    return tuple(_file(v, name, folder) for v in values)


def _text(value: Any, name: str, folder: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name}: expected a string, got {validate._kind(value)}")
    return value.strip()


def _flag(value: Any, name: str, folder: Path) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{name}: expected true or false, got {validate._kind(value)}")
    return value


def _shape(value: Any, name: str, folder: Path) -> Inputs:
    return as_inputs(value, name)


def _wrap(check: Callable[[Any, str], Any]) -> Convert:
    return lambda value, name, folder: check(value, name)


def _choice(options: tuple[str, ...]) -> Convert:
    return lambda value, name, folder: validate.choice(value, name, options)


#: Top-level key -> (BuildOptions field or recipe field, converter).
KEYS: dict[str, tuple[str, Convert]] = {
    "base": ("base", _file),
    "arch": ("arch", _text),
    "input_shape": ("input_shape", _shape),
    "out": ("out", _path),
    "spa": ("spa", _file),
    "tasks": ("tasks", lambda v, n, f: v),  # checked by _tasks
    "layout": ("layout", _choice(LAYOUTS)),
    "bench": ("bench", _choice(("none", "cpu", "gpu", "all"))),
    "batches": ("bench_batches", _wrap(validate.batches)),
    "batch": ("bench_batches", _wrap(validate.batches)),
    "threads": ("threads", _wrap(validate.threads)),
    "budget": ("budget_s", _wrap(validate.budget)),
    "opset": ("opset", _wrap(validate.opset)),
    "round_to": ("round_to", _wrap(validate.round_to)),
    "exporter": ("exporter", _choice(("torchscript", "dynamo"))),
    "rtol": ("rtol", _wrap(validate.tolerance)),
    "atol": ("atol_scale", _wrap(validate.tolerance)),
    "verify_batches": ("verify_batches", _wrap(validate.batches)),
    "seed": ("seed", _wrap(validate.seed)),
    "inputs": ("inputs", _files),
    "ignore_base_digest": ("ignore_base_digest", _flag),
    "description": ("description", _text),
    "quantize": ("quantize", _wrap(precisions)),
    "calibration": ("calibration", lambda v, n, f: _calibration(v, n, f)),
    "max_accuracy_drop": ("max_accuracy_drop", _wrap(validate.percent)),
    "max_disagreement": ("max_disagreement", _wrap(validate.percent)),
    "int8_activations": ("int8_activations", _choice(ACTIVATIONS)),
}
TASK_KEYS: dict[str, Convert] = {
    "name": lambda v, n, f: validate.task_name(v, n),
    "spa": _file,
    "eval": _file,
    "inputs": _files,
    "description": _text,
    "calibration": lambda v, n, f: _calibration(v, n, f),
}
_RECIPE_FIELDS = ("base", "input_shape", "out", "spa", "tasks", "layout", "description")


def _unknown(key: str, known: Mapping[str, object], where: str) -> InputError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
    return InputError(f"{where}: unknown key '{shown(key, 60)}'{hint}")


def _normal(key: Any) -> str:
    return str(key).replace("-", "_")


def _tasks(value: Any, path: Path, folder: Path) -> tuple[Task, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{path}: key 'tasks': expected a list of tasks (each with at least spa:), "
                         f"got {validate._kind(value)}")
    if len(value) > MAX_TASKS:
        raise InputError(f"{path}: key 'tasks': {len(value)} tasks; a recipe holds at most {MAX_TASKS}")
    tasks: list[Task] = []
    for i, item in enumerate(value):
        where = f"{path}: tasks[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected a mapping with spa: (and name:, eval:), got "
                             f"{validate._kind(item)}")
        fields: dict[str, Any] = {}
        for k, v in item.items():
            key = _normal(k)
            if key not in TASK_KEYS:
                raise _unknown(key, TASK_KEYS, where)
            fields[key] = TASK_KEYS[key](v, f"{where}: key '{key}'", folder)
        if "spa" not in fields:
            raise InputError(f"{where}: missing key 'spa' (the task's SPA file)")
        name = fields.get("name") or validate.task_name(
            fields["spa"].stem, f"{where}: the name taken from the SPA file's name (give name:)")
        tasks.append(Task(name, fields["spa"], fields.get("eval"), fields.get("inputs", ()), fields.get("calibration")))
    names = [t.name for t in tasks]
    reserved = [n for n in names if n.lower() in PACKAGE_FILES]
    if reserved:
        raise InputError(f"{path}: key 'tasks': task name '{reserved[0]}' is a file of the package itself "
                         f"({', '.join(sorted(PACKAGE_FILES))}); give the task another name:")
    twins = [n for n in names if n.endswith("-int8") and n[:-5] in names]
    if twins:   # the triton layout names a task's int8 model '<task>-int8'
        raise InputError(f"{path}: key 'tasks': task name '{twins[0]}' is the name of task '{twins[0][:-5]}''s int8 "
                         "model in the triton layout; give the task another name:")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{path}: key 'tasks': task name '{dupes[0]}' is used twice; names are folders")
    return tuple(tasks)


#: The files a package holds beside its task folders; no task may take their names (compared
#: case-insensitively, for file systems that ignore case).
MANIFEST = "manifest.json"
SUMMARY = "summary.md"
PACKAGE_FILES = frozenset({MANIFEST, SUMMARY})


def parse_recipe(data: Any, path: Path) -> Recipe:
    """A :class:`Recipe` from the YAML document ``data`` of the file at ``path``."""
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe is a mapping of keys to values (base:, input_shape:, tasks:...)")
    folder = path.parent
    values: dict[str, Any] = {}
    written: dict[str, Any] = {}
    for k, v in data.items():
        key = _normal(k)
        if key not in KEYS:
            raise _unknown(key, KEYS, str(path))
        target, convert = KEYS[key]
        if target in values:
            raise InputError(f"{path}: keys '{key}' and another spelling of it are both given")
        values[target] = convert(v, f"{path}: key '{key}'", folder)
        written[key] = v
    if "spa" in values and "tasks" in values:
        raise InputError(f"{path}: give tasks: or spa: (one task), not both")
    if "spa" in values:
        spa = values.pop("spa")
        tasks = (Task(validate.task_name(spa.stem, f"{path}: the task name taken from '{spa.name}'"), spa),)
    elif "tasks" in values:
        tasks = _tasks(values.pop("tasks"), path, folder)
    else:
        raise InputError(f"{path}: missing key 'tasks' (a list of tasks, each with spa:)")
    for required in ("base", "input_shape"):
        if required not in values:
            raise InputError(f"{path}: missing key '{required}'")
    settings = {k: v for k, v in values.items() if k not in _RECIPE_FIELDS}
    return Recipe(path=path, base=values["base"], input_shape=values["input_shape"], tasks=tasks,
                  out=values.get("out"), layout=values.get("layout", "plain"), settings=settings,
                  written=written)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate the recipe at ``path``."""
    p = Path(path)
    return parse_recipe(read_yaml(p), p)
