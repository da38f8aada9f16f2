"""What spa-export may replace: its own outputs, never a user's files.

Every output directory spa-export publishes (a build's ``--out``, a recipe's
package, an assembled package) holds a marker file, ``.spa-export``, that
lists every file the tool wrote there with its size and sha256. An existing
directory is replaced only when

* it is empty, or
* its marker is intact and it holds exactly the files the marker lists, each
  unchanged;

and never when it is, or contains, the current directory or one of the
command's inputs, whatever the marker says. A single output file (``bench
--json``, ``synth -o``, ``pack -o``, ``engine --out``) is never one of the
command's inputs, and an existing one is replaced only with ``--force``.

Every check runs before any work, and the directory check runs again just
before publication (a user may have put files there while the build ran).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from spa_export.safety.errors import InputError

MARKER = ".spa-export"
MARKER_SCHEMA = 1
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of bytes in memory, as :func:`sha256_file` writes a file's."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute without following symbolic links (``..`` collapsed lexically)."""
    return Path(os.path.normpath(os.path.abspath(os.fspath(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _spellings(path: str | os.PathLike[str]) -> set[Path]:
    """The lexical and the resolved absolute form of ``path`` (links may lead elsewhere)."""
    return {absolute(path), Path(os.path.realpath(os.fspath(path)))}


def _guarded(out: Path, inputs: Iterable[str | os.PathLike[str]], option: str) -> None:
    """Refuse an output location that is, or contains, the current directory or an input, or that
    lies inside an input folder (a part that ``assemble`` reads)."""
    outs = _spellings(out)
    cwd = _spellings(os.getcwd())
    for o in outs:
        for c in cwd:
            if _within(c, o):
                what = "is the current directory" if c == o else "contains the current directory"
                raise InputError(f"{option} {out}: {what}; spa-export replaces its output folder as "
                                 "a whole: give a new folder, such as ./out")
    for item in inputs:
        for o in outs:
            for i in _spellings(item):
                if _within(i, o):
                    what = "is" if i == o else "contains"
                    raise InputError(f"{option} {out}: {what} the input {item}; give a folder apart "
                                     "from the inputs")
                if os.path.isdir(i) and _within(o, i):
                    raise InputError(f"{option} {out}: lies inside the input {item}; give a folder apart "
                                     "from the inputs")


def _name_limit(directory: Path) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_names(path: Path, option: str) -> None:
    limit = _name_limit(nearest_existing(path.parent))
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise InputError(f"{option}: the name '{part[:40]}...' has {len(os.fsencode(part))} bytes; "
                             f"this file system allows {limit}")


def _check_parent(path: Path, option: str) -> None:
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        raise InputError(f"{option} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write in {parent}")


def _not_empty(value: str | os.PathLike[str] | None, option: str) -> Path:
    if value is None or not str(os.fspath(value)).strip():
        raise InputError(f"{option} is empty (an unset shell variable?): name the output explicitly")
    return Path(value)


def read_marker(directory: Path) -> dict | None:
    """The marker of ``directory``, or None when it has none or it is not spa-export's."""
    marker = directory / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        if marker.stat().st_size > 16 * 1024 * 1024:
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "spa-export" or not isinstance(data.get("files"), dict):
        return None
    return data


def _contents(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Regular files below ``directory`` by relative path, and every entry that is not one (links...)."""
    files: dict[str, Path] = {}
    odd: list[str] = []
    for root, dirs, names in os.walk(directory, followlinks=False):
        for d in list(dirs):
            if os.path.islink(os.path.join(root, d)):
                odd.append(os.path.relpath(os.path.join(root, d), directory))
                dirs.remove(d)
        for n in names:
            p = Path(root) / n
            rel = p.relative_to(directory).as_posix()
            if p.is_symlink() or not p.is_file():
                odd.append(rel)
            else:
                files[rel] = p
    return files, sorted(odd)


def _few(names: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def foreign_contents(directory: Path) -> str | None:
    """Why ``directory`` is not entirely spa-export's to replace, or None if it is (or is empty)."""
    files, odd = _contents(directory)
    if not files and not odd:
        return None
    marker = read_marker(directory)
    if marker is None:
        return "exists and is not a spa-export output (it has no intact .spa-export marker)"
    listed: Mapping[str, object] = marker["files"]
    if odd:
        return f"holds links or special files spa-export did not write: {_few(odd)}"
    foreign = sorted(rel for rel in files if rel != MARKER and rel not in listed)
    if foreign:
        return f"holds files spa-export did not write: {_few(foreign)}"
    for rel, p in sorted(files.items()):
        entry = listed.get(rel)
        if rel == MARKER:
            continue
        if not isinstance(entry, dict) or entry.get("size") != p.stat().st_size \
                or entry.get("sha256") != sha256_file(p):
            return f"its file {rel} was changed after spa-export wrote it"
    return None


def check_out_dir(out: str | os.PathLike[str] | None, *, inputs: Iterable[str | os.PathLike[str]] = (),
                  option: str = "--out") -> Path:
    """Refuse an output directory spa-export may not (re)place; return its absolute path.

    Allowed: a path that does not exist yet (missing parents are created on
    publication), an empty directory, or a previous spa-export output left as
    the tool wrote it. Refused, with the reason and what to do: an empty
    value, a symbolic link, a file, anything holding the current directory or
    an input, and a directory holding anything else.
    """
    path = _not_empty(out, option)
    _check_names(absolute(path), option)  # first: stat() fails on a name the file system cannot hold
    if path.is_symlink():
        raise InputError(f"{option} {path}: is a symbolic link (to {os.readlink(path)}); spa-export "
                         "replaces its output folder as a whole: give the folder itself or a new path")
    _guarded(path, inputs, option)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: exists and is not a directory")
    if path.is_dir():
        problem = foreign_contents(path)
        if problem is not None:
            raise InputError(f"{option} {path}: {problem}; spa-export replaces only its own outputs: "
                             "give a new folder, or move those files away")
    _check_parent(absolute(path), option)
    return absolute(path)


def check_out_file(path: str | os.PathLike[str] | None, *, inputs: Iterable[str | os.PathLike[str]] = (),
                   option: str, force: bool = False) -> Path:
    """Refuse an output file that is one of the inputs, or exists without ``force``; return it absolute."""
    p = _not_empty(path, option)
    _check_names(absolute(p), option)
    for item in inputs:
        same = absolute(item) == absolute(p) or os.path.realpath(item) == os.path.realpath(p)
        if not same and os.path.exists(item) and os.path.exists(p):
            same = os.path.samefile(item, p)
        if same:
            raise InputError(f"{option} {p}: is the input {item}; write the output elsewhere")
    if p.is_dir():
        raise InputError(f"{option} {p}: is a directory; give a file name")
    if (p.exists() or p.is_symlink()) and not force:
        raise InputError(f"{option} {p}: exists; pass --force to replace it, or give another name")
    _check_parent(absolute(p), option)
    return absolute(p)


def write_marker(directory: Path, kind: str, version: str) -> dict:
    """List every regular file below ``directory`` (its own writing) in its marker; return the listing."""
    files, odd = _contents(directory)
    if odd:  # our own staging directory: nothing else can be there
        raise RuntimeError(f"staging directory holds non-files: {odd}")
    listing = {rel: {"size": p.stat().st_size, "sha256": sha256_file(p)}
               for rel, p in sorted(files.items()) if rel != MARKER}
    body = {"tool": "spa-export", "schema": MARKER_SCHEMA, "version": version, "kind": kind,
            "files": listing}
    (directory / MARKER).write_text(json.dumps(body, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return listing
