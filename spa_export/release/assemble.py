"""Parts of a recipe built apart (a CI job matrix) merged into one package.

Each part is a package that ``spa-export build RECIPE --shard i/n`` (or
``--task NAME``) wrote. A part is taken only when

* it is spa-export's own, as written (its marker lists every file, unchanged),
* its manifest's hashed part matches its digest, and every artefact its
  manifest lists has the recorded sha256,
* it was built from the same recipe file, settings, base digest, tool
  version and library versions as the other parts, and rounds channels to
  the same multiple (``round_to: auto`` depends on the processor);

and the parts together must hold every task of the recipe exactly once. The
result equals the package one machine builds from the whole recipe: the same
model files, the same hashed manifest content.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from spa_export.release.package import (
    MANIFEST,
    MANIFEST_VERSION,
    _sha_text,
    make_manifest,
    write_package_files,
)
from spa_export.safety.errors import InputError, shown
from spa_export.safety.ownership import check_out_dir, foreign_contents, read_marker, sha256_file
from spa_export.safety.publish import publish_whole, staged

#: Manifest content fields that every part must share.
SHARED = ("tool", "libraries", "recipe", "base", "base_file")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024


@dataclass
class Part:
    path: Path
    manifest: dict

    @property
    def tasks(self) -> list[str]:
        return sorted(self.manifest["content"]["tasks"])


def read_part(path: Path) -> Part:
    """A part checked as described above (everything but agreement with the other parts)."""
    if not path.is_dir():
        raise InputError(f"{path}: not a folder (a part is the --out folder of a sharded build)")
    marker = read_marker(path)
    if marker is None or marker.get("kind") not in ("package", "package-part"):
        raise InputError(f"{path}: not a package that spa-export built (no package marker)")
    problem = foreign_contents(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}")
    manifest_path = path / MANIFEST
    try:
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{manifest_path}: larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{manifest_path}: cannot read the manifest ({shown(err)})") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION \
            or not isinstance(manifest.get("content"), dict):
        raise InputError(f"{manifest_path}: not a manifest of version {MANIFEST_VERSION}")
    if _sha_text(manifest["content"]) != manifest.get("content_sha256"):
        raise InputError(f"{manifest_path}: its content does not match its content_sha256")
    for name, task in manifest["content"].get("tasks", {}).items():
        for rel, entry in task.get("artefacts", {}).items():
            file = path / rel
            if not file.is_file() or sha256_file(file) != entry.get("sha256"):
                raise InputError(f"{path}: task '{shown(name)}': {rel} is missing or differs from its manifest")
    return Part(path, manifest)


def _agree(parts: Sequence[Part]) -> None:
    first = parts[0]
    for part in parts[1:]:
        for key in SHARED:
            a, b = first.manifest["content"].get(key), part.manifest["content"].get(key)
            if a != b:
                what = {"tool": "another spa-export version", "libraries": "other library versions",
                        "recipe": "another recipe (or other settings)", "base": "another base",
                        "base_file": "another base file (edge layout)"}[key]
                raise InputError(f"{part.path}: built from {what} than {first.path} ({key}: "
                                 f"{shown(json.dumps(b, sort_keys=True), 160)} vs "
                                 f"{shown(json.dumps(a, sort_keys=True), 160)})")


def _same_rounding(parts: Sequence[Part]) -> None:
    """Parts built on processors that favour other channel multiples give another package."""
    seen: dict[object, str] = {}
    for part in parts:
        for name, task in part.manifest["content"].get("tasks", {}).items():
            seen.setdefault(task.get("round_to"), f"{part.path} (task '{shown(name)}')")
    if len(seen) > 1:
        (a, where_a), (b, where_b) = list(seen.items())[:2]
        widest = max(_multiple(a), _multiple(b))
        raise InputError(f"{where_b} rounds channels to multiples of {_rounding(b)}, {where_a} to {_rounding(a)}: "
                         "round_to 'auto' chose differently on these machines' processors, or the parts were "
                         f"built with other settings; set round_to in the recipe (for example round_to: "
                         f"auto:{widest}, auto's rule pinned) and rebuild")


def _multiple(value: object) -> int:
    """The multiple of a task's recorded rounding: ``16`` or ``"auto:16"``."""
    text = str(value or 1)
    return int(text.split(":", 1)[1]) if text.startswith("auto:") else int(text)


def _rounding(value: object) -> str:
    text = str(value)
    return f"{text.split(':', 1)[1]} (auto's rule)" if text.startswith("auto:") else text


def _coverage(parts: Sequence[Part]) -> list[str]:
    recipe_tasks = list(parts[0].manifest["content"]["recipe"]["tasks"])
    seen: dict[str, Path] = {}
    for part in parts:
        for name in part.tasks:
            if name in seen:
                raise InputError(f"task '{shown(name)}' is in two parts: {seen[name]} and {part.path}")
            seen[name] = part.path
    missing = [t for t in recipe_tasks if t not in seen]
    if missing:
        raise InputError(f"the parts lack task(s) {', '.join(missing)} of the recipe; build them too "
                         f"(spa-export build RECIPE --task {missing[0]})")
    return recipe_tasks


def assemble(part_paths: Sequence[Path], out: Path) -> dict:
    """Merge the parts at ``part_paths`` into the package ``out``; return its manifest."""
    if not part_paths:
        raise InputError("give the parts to assemble (the --out folders of the sharded builds)")
    parts = [read_part(Path(p)) for p in part_paths]
    _agree(parts)
    _same_rounding(parts)
    order = _coverage(parts)
    out = check_out_dir(out, inputs=[p.path for p in parts])
    by_task = {name: part for part in parts for name in part.tasks}
    content = dict(parts[0].manifest["content"])
    content["tasks"] = {name: by_task[name].manifest["content"]["tasks"][name] for name in sorted(by_task)}
    reports: dict[str, dict] = {}
    files: dict[str, dict] = {}
    run_tasks: dict[str, dict] = {}
    with staged(out) as staging:
        for name in order:
            part = by_task[name]
            shutil.copytree(part.path / name, staging / name)
            if (part.path / f"{name}-int8").is_dir():   # the triton layout's int8 model of the task
                shutil.copytree(part.path / f"{name}-int8", staging / f"{name}-int8")
            reports[name] = json.loads((staging / name / "report.json").read_text(encoding="utf-8"))
            run_tasks[name] = part.manifest["run"]["tasks"][name]
            files.update({k: v for k, v in part.manifest["run"]["files"].items() if k.startswith(f"{name}/")})
        base_file = content.get("base_file")
        if base_file is not None:   # the edge layout: the base once, as every part carries it
            shutil.copyfile(parts[0].path / base_file["path"], staging / base_file["path"])
            if sha256_file(staging / base_file["path"]) != base_file["sha256"]:
                raise InputError(f"{parts[0].path / base_file['path']}: changed since the part was built")
        run = {"host": parts[0].manifest["run"]["host"], "files": files, "tasks": run_tasks,
               "parts": [{"path": str(p.path), "tasks": p.tasks, "host": p.manifest["run"]["host"]} for p in parts]}
        manifest = make_manifest(content, run, None)
        name = parts[0].manifest["content"]["recipe"].get("path")
        write_package_files(staging, manifest, reports, recipe_name=name)
        publish_whole(staging, out, kind="package")
    return manifest
