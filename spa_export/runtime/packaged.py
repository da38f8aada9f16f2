"""A built package, read on the device: its manifest, its base and each task's verified network.

Every layout gives each task's ``model.onnx`` bytes: the plain layout holds
``<task>/model.onnx``, the triton layout ``<task>/1/model.onnx``, the edge
layout ``base.safetensors`` once and ``<task>/delta.safetensors``, which
:func:`spa_export.runtime.delta.materialize` turns into the file. Whatever the
layout, the bytes handed out are checked against the sha256 the manifest
records for the file the build verified; every file read is checked against
its own sha256 first, so a tampered or truncated file is named as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spa_export.safety.errors import InputError, shown
from spa_export.safety.ownership import sha256_bytes

MANIFEST = "manifest.json"
BASE_FILE = "base.safetensors"
DELTA_FILE = "delta.safetensors"
CHECK_FILE = "check.safetensors"


@dataclass
class Package:
    """A package folder and its manifest; the base is read once, on first use."""

    root: Path
    manifest: dict
    _base: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def content(self) -> dict:
        return self.manifest["content"]

    @property
    def layout(self) -> str:
        return self.content["recipe"].get("layout") or "plain"

    @property
    def tasks(self) -> list[str]:
        return list(self.content["tasks"])

    def task_entry(self, task: str) -> dict:
        tasks = self.content["tasks"]
        if task not in tasks:
            import difflib

            close = difflib.get_close_matches(task, list(tasks), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (tasks: {', '.join(tasks)})"
            raise InputError(f"{self.root}: no task '{shown(task, 60)}' in the package{hint}")
        return tasks[task]

    def read(self, relative: str, sha256: str | None) -> bytes:
        """A file of the package, refused if it is not what the manifest recorded."""
        path = self.root / relative
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{path}: missing from the package") from None
        except OSError as err:
            raise InputError(f"{path}: cannot read it: {err.strerror or err}") from None
        if sha256 is not None and sha256_bytes(data) != sha256:
            raise InputError(f"{path}: changed since the build (its sha256 is not the manifest's: "
                             "tampered, truncated or from another package)")
        return data

    def artefact_sha(self, task: str, name: str) -> tuple[str, str | None]:
        """The path (relative to the package) and recorded sha256 of a task's file called ``name``."""
        for rel, info in self.task_entry(task)["artefacts"].items():
            # in the task's own folder (the triton layout's int8 model lives in '<task>-int8/')
            if rel.split("/", 1)[0] == task and rel.rsplit("/", 1)[-1] == name:
                return rel, info["sha256"]
        return f"{task}/{name}", None

    def base(self) -> dict[str, np.ndarray]:
        """The base's tensors (edge layout), checked against the manifest."""
        if self._base is None:
            from safetensors.numpy import load

            info = self.content.get("base_file")
            if info is None:
                raise InputError(f"{self.root}: the package carries no base (layout {self.layout})")
            data = self.read(info["path"], info["sha256"])
            try:
                self._base = load(data)
            except Exception as err:   # safetensors' own error types
                raise InputError(f"{self.root / info['path']}: not a readable base ({str(err)[:120]})") from None
        return self._base

    def model_bytes(self, task: str) -> bytes:
        """The task's verified ``model.onnx``, from its file or materialized from its delta."""
        entry = self.task_entry(task)
        want = entry.get("model_sha256")
        rel, sha = self.artefact_sha(task, "model.onnx")
        data = self.read(rel, sha) if sha is not None else self._materialize(task, entry)
        if want is not None and sha256_bytes(data) != want:
            raise InputError(f"{self.root / rel}: not the network the build verified (sha256 differs from the "
                             "manifest's model_sha256)")
        return data

    def _materialize(self, task: str, entry: dict) -> bytes:
        from spa_export.runtime.delta import materialize, read_delta

        rel, sha = self.artefact_sha(task, DELTA_FILE)
        if sha is None:
            raise InputError(f"{self.root}: task '{task}' has neither model.onnx nor a delta in the manifest")
        data = self.read(rel, sha)
        delta = read_delta(self.root / rel, data)
        digest = self.content["base"]["digest"]
        if delta.meta.get("base_digest") != digest:
            raise InputError(f"{self.root / rel}: made for base {delta.meta.get('base_digest')}, but the package's "
                             f"base is {digest}")
        return materialize(delta, self.base(), where=str(self.root / rel))


def open_package(path: str | Path) -> Package:
    """Read a package's manifest; a folder that is not a package is an InputError naming it."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder (a package is the folder `spa-export build RECIPE` wrote)")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{root}: no {MANIFEST}: not a package built by spa-export build RECIPE") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{root / MANIFEST}: not readable JSON ({str(err)[:120]})") from None
    if not isinstance(manifest, dict) or "content" not in manifest or "tasks" not in manifest["content"]:
        raise InputError(f"{root / MANIFEST}: not a package manifest")
    return Package(root, manifest)


def materialize_task(package: str | Path, task: str) -> bytes:
    """The verified ``model.onnx`` bytes of one task of a package (edge or not), without torch."""
    return open_package(package).model_bytes(task)


def task_session(package: str | Path | Package, task: str, *, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                 threads: int | None = None) -> object:
    """An ONNX Runtime session of one task, made from memory (no file written): for switching tasks."""
    import onnxruntime as ort

    pkg = package if isinstance(package, Package) else open_package(package)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(pkg.model_bytes(task), sess_options=options, providers=list(providers))
