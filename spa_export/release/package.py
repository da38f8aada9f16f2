"""A recipe's tasks built into one release package, or a part of it.

::

    OUT/.spa-export            what spa-export wrote here (see spa_export.safety.ownership)
    OUT/manifest.json          every artefact with sha256 and size, the base digest, each SPA's sha256,
                               tool and library versions, the resolved recipe
    OUT/summary.md             the tasks side by side
    OUT/<task>/model.onnx      the pruned task network (with --layout triton: <task>/1/model.onnx
    OUT/<task>/report.json                                   and <task>/config.pbtxt)
    OUT/<task>/report.md
    OUT/<task>/check.safetensors   the reference's outputs for the verification cases (spa-export check)

With ``--layout edge`` the package carries ``OUT/base.safetensors`` once and, per
task, ``<task>/delta.safetensors`` instead of ``model.onnx``: the task as a delta on
the base, which ``spa-export materialize`` turns back into the verified file
(its sha256 is the manifest's ``model_sha256``) with numpy and onnx alone.

The base is read and its digest computed once for all tasks. The package
appears complete or not at all. Building the same recipe twice gives the same
``content`` part of the manifest, byte for byte, and the same model files;
timings and the host are kept apart in its ``run`` part. A part of a recipe
(``--task``, ``--shard i/n``) is a package of its own that
:mod:`spa_export.release.assemble` merges with the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spa_export import __version__
from spa_export.release.recipe import MANIFEST, SUMMARY, Recipe, Task
from spa_export.runtime.environment import library_versions
from spa_export.runtime.inputs import to_json as inputs_json
from spa_export.runtime.packaged import BASE_FILE
from spa_export.safety.errors import InputError, shown
from spa_export.safety.ownership import check_out_dir, sha256_file
from spa_export.safety.progress import StageProgress
from spa_export.safety.publish import publish_whole, staged
from spa_export.stages.pipeline import BuildOptions, run_task, stage_names, validate_options

MANIFEST_VERSION = 1
#: Library versions that decide the bytes of the artefacts (recorded in the hashed part).
LIBRARIES = ("torch", "torchvision", "onnx", "onnxsim", "onnxscript", "numpy", "safetensors")


@dataclass
class PackageOptions:
    """What to build of a recipe, and where."""

    recipe: Recipe
    out: Path
    tasks: tuple[str, ...] = ()           # --task: only these (by name)
    shard: tuple[int, int] | None = None  # --shard i/n: the i-th of n parts (1-based)
    jobs: int = 1
    quiet: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)   # command-line flags (BuildOptions fields)


@dataclass
class PackageResult:
    out: Path
    manifest: dict
    reports: dict[str, dict]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``."""
    parts = str(text).split("/")
    try:
        i, n = (int(p) for p in parts)
    except ValueError:
        raise InputError(f"--shard '{shown(text, 40)}': expected i/n such as 1/4") from None
    if not 1 <= i <= n <= 1000:
        raise InputError(f"--shard {i}/{n}: need 1 <= i <= n")
    return i, n


def select_tasks(recipe: Recipe, names: Sequence[str], shard: tuple[int, int] | None) -> list[Task]:
    """The tasks to build: all, those named, or every n-th from the i-th (in recipe order)."""
    tasks = list(recipe.tasks)
    if names:
        known = {t.name: t for t in tasks}
        for name in names:
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (tasks: {', '.join(known)})"
                raise InputError(f"--task '{shown(name, 60)}': no such task in {recipe.path}{hint}")
        tasks = [t for t in tasks if t.name in set(names)]
    if shard is not None:
        i, n = shard
        if n > len(recipe.tasks):
            raise InputError(f"--shard {i}/{n}: the recipe has {len(recipe.tasks)} tasks, fewer than {n} parts")
        tasks = [t for k, t in enumerate(tasks) if k % n == i - 1]
    if not tasks:   # a part with no task would publish an empty package
        chosen = [t.name for t in recipe.tasks if t.name in set(names)]
        i, n = shard
        holds = ", ".join(t.name for k, t in enumerate(recipe.tasks) if k % n == i - 1)
        raise InputError(f"--task {', '.join(chosen)} with --shard {i}/{n} selects no task of {recipe.path}: "
                         f"shard {i}/{n} holds {holds}; drop --shard, or name tasks it holds")
    return tasks


def task_options(recipe: Recipe, task: Task, overrides: dict[str, Any], quiet: bool) -> BuildOptions:
    """The build options of one task: the recipe's settings, then the command line's."""
    settings = {**recipe.settings, **overrides}
    inputs = tuple(settings.pop("inputs", ())) + task.inputs
    settings.pop("quiet", None)
    if task.calibration is not None:   # the task's own calibration inputs win over the recipe's
        settings["calibration"] = task.calibration
    opts = BuildOptions(base=recipe.base, spa=task.spa, out=Path("."), input_shape=recipe.input_shape,
                        inputs=inputs, eval_data=task.eval, quiet=quiet)
    return validate_options(replace(opts, **settings))


def _sha_text(data: Any) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _relative(path: Path, recipe: Recipe) -> str:
    """``path`` relative to the recipe's folder, as the recipe writes it (machine-independent)."""
    import os

    folder = recipe.path.parent if recipe.path is not None else Path.cwd()
    return Path(os.path.relpath(path, folder)).as_posix()


def task_content(recipe: Recipe, task: Task, opts: BuildOptions, report: dict, folder: Path,
                 root: Path) -> dict:
    """The hashed part of one task's manifest entry: its inputs' and artefacts' digests, its sizes."""
    from spa_export.release.triton import int8_folder

    artefacts = {}
    twin = int8_folder(folder)   # the triton layout's int8 model of the task, where there is one
    for p in sorted([*folder.rglob("*"), *(twin.rglob("*") if twin.is_dir() else [])]):
        if p.is_file() and p.suffix in (".onnx", ".pbtxt", ".safetensors"):
            artefacts[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    entry: dict[str, Any] = {
        "spa": {"path": _relative(task.spa, recipe), "sha256": report["inputs"]["spa"]["sha256"],
                "bytes": report["spa_bytes"]},
        "artefacts": artefacts,
        "params": report["params"], "macs": report["macs"],
        "learned_params": report["learned_params"]["total"],
        # resolved here: with round_to 'auto' it depends on the processor that built the task; 'auto:N'
        # where groups narrower than one multiple stay as the masks ask (other models than a plain N)
        "model_sha256": report["model_sha256"],
        "round_to": (f"auto:{report['rounding']['multiple']}"
                     if report["rounding"].get("groups_below_one_multiple") == "left as the masks ask"
                     else report["rounding"]["multiple"]),
    }
    if task.eval is not None:
        entry["eval"] = {"path": _relative(task.eval, recipe), "sha256": sha256_file(task.eval)}
    return entry


def package_content(recipe: Recipe, settings: dict[str, Any], base_digest: str, tasks: dict[str, dict],
                    base_file: dict | None = None) -> dict:
    """The manifest's hashed part: the same for the same recipe, inputs, tool and libraries."""
    resolved = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(settings.items())}
    for key in ("inputs",):
        if key in resolved:
            resolved[key] = [_relative(Path(p), recipe) for p in resolved[key]]
    return {
        "tool": {"name": "spa-export", "version": __version__},
        "libraries": library_versions(LIBRARIES),
        "recipe": {"path": recipe.path.name if recipe.path else None,
                   "sha256": sha256_file(recipe.path) if recipe.path else None,
                   "base": _relative(recipe.base, recipe), **inputs_json(recipe.input_shape),
                   "layout": recipe.layout, "tasks": [t.name for t in recipe.tasks], "settings": resolved},
        "base": {"digest": base_digest, "bytes": recipe.base.stat().st_size},
        **({"base_file": base_file} if base_file is not None else {}),
        "tasks": {name: tasks[name] for name in sorted(tasks)},
    }


def make_manifest(content: dict, run: dict, part: dict | None) -> dict:
    manifest = {"manifest_version": MANIFEST_VERSION, "content": content,
                "content_sha256": _sha_text(content), "run": run}
    if part is not None:
        manifest["part"] = part
    return manifest


def run_record(reports: dict[str, dict], root: Path) -> dict:
    """The manifest's unhashed part: the host, and per task what varies between runs."""
    from spa_export.stages.pipeline import versions

    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name in ("report.json", "report.md", "latency.png"):
            files[p.relative_to(root).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    tasks = {}
    for name, r in sorted(reports.items()):
        tasks[name] = {"accuracy": r.get("accuracy"), "speedup": r.get("speedup"),
                       "verification": {"passed": r["verification"]["passed"],
                                        "worst": r["verification"]["worst"]},
                       "seconds": round(sum(s["seconds"] for s in r.get("stages", [])), 3)}
    return {"host": versions(), "files": files, "tasks": tasks}


def write_package_files(root: Path, manifest: dict, reports: dict[str, dict], *, recipe_name: str | None) -> None:
    from spa_export.report.summary import render_summary

    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (root / SUMMARY).write_text(render_summary(manifest, reports, recipe_name=recipe_name), encoding="utf-8")


def build_package(opts: PackageOptions) -> PackageResult:
    """Build the selected tasks of a recipe into ``opts.out``, published whole or not at all."""
    recipe = opts.recipe
    chosen = select_tasks(recipe, opts.tasks, opts.shard)
    per_task = {t.name: replace(task_options(recipe, t, opts.overrides, opts.quiet), delta=recipe.layout == "edge",
                                check_cases=True) for t in chosen}
    settings = {**recipe.settings, **opts.overrides}
    out = check_out_dir(opts.out, inputs=recipe.inputs(), option="--out")
    with staged(out) as staging:
        reports, digest = _build_tasks(recipe, chosen, per_task, staging, opts)
        base_file = None
        if recipe.layout == "edge":
            p = staging / BASE_FILE
            base_file = {"path": BASE_FILE, "sha256": sha256_file(p), "size": p.stat().st_size}
        content_tasks = {t.name: task_content(recipe, t, per_task[t.name], reports[t.name],
                                              staging / t.name, staging) for t in chosen}
        content = package_content(recipe, settings, digest, content_tasks, base_file)
        part = None
        if len(chosen) != len(recipe.tasks):
            part = {"tasks": [t.name for t in chosen], "of": [t.name for t in recipe.tasks],
                    "shard": list(opts.shard) if opts.shard else None}
        manifest = make_manifest(content, run_record(reports, staging), part)
        write_package_files(staging, manifest, reports, recipe_name=recipe.path.name if recipe.path else None)
        publish_whole(staging, out, kind="package-part" if part else "package")
    return PackageResult(out, manifest, reports)


def _progress(opts: PackageOptions, task: Task, index: int, total: int, options: BuildOptions) -> StageProgress:
    return StageProgress(stage_names(options), quiet=opts.quiet, prefix=f"{task.name} ({index}/{total}) ")


def _build_tasks(recipe: Recipe, chosen: list[Task], per_task: dict[str, BuildOptions], staging: Path,
                 opts: PackageOptions) -> tuple[dict[str, dict], str]:
    from spa_export.stages.load import read_base

    base_progress = StageProgress(["base"], quiet=opts.quiet)
    with base_progress.stage("base"):
        base = read_base(recipe.base)
    layout_dirs = {t.name: staging / t.name for t in chosen}
    reports: dict[str, dict] = {}
    if opts.jobs > 1 and len(chosen) > 1:
        from spa_export.release.parallel import build_in_parallel

        reports = build_in_parallel(base, [(t.name, per_task[t.name], layout_dirs[t.name]) for t in chosen],
                                    jobs=opts.jobs, quiet=opts.quiet)
    else:
        for i, task in enumerate(chosen, 1):
            layout_dirs[task.name].mkdir()
            progress = _progress(opts, task, i, len(chosen), per_task[task.name])
            reports[task.name] = run_task(per_task[task.name], base, layout_dirs[task.name], progress)
    for task in chosen:   # the file the build verified, whatever the layout makes of it
        reports[task.name]["model_sha256"] = sha256_file(layout_dirs[task.name] / "model.onnx")
    if recipe.layout == "triton":
        from spa_export.release.triton import to_triton_layout

        for task in chosen:
            to_triton_layout(layout_dirs[task.name], task.name)
    if recipe.layout == "edge":
        from spa_export.release.edge import to_edge_layout

        to_edge_layout(staging, base.state, [layout_dirs[t.name] for t in chosen])
    return reports, base.digest
