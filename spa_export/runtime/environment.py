"""What machine a benchmark ran on.

Everything here is best effort and cheap: /proc/cpuinfo and ``platform`` for the
CPU, ``importlib.metadata`` for library versions (torch's version is read from
its metadata, never by importing it), and ``nvidia-smi`` for the GPU when it is
on PATH. Nothing here is required to succeed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

#: Distributions whose versions a report records (absent ones are reported as None).
LIBRARIES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "tensorrt",
    "polygraphy",
    "matplotlib",
)


def _read_cpuinfo(path: Path = CPUINFO) -> list[dict[str, str]]:
    """The processor blocks of /proc/cpuinfo as dicts; [] where it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


def _usable_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def logical_cores() -> int:
    """Logical CPUs this process may run on (its affinity), else ``os.cpu_count()``."""
    usable = _usable_cpus()
    if usable:
        return len(usable)
    return os.cpu_count() or 1


def physical_cores(cpuinfo: Path = CPUINFO) -> int:
    """Physical cores this process may run on.

    Counts distinct ``(physical id, core id)`` pairs in /proc/cpuinfo among the
    processors in the affinity mask; falls back to ``os.cpu_count()`` where
    /proc/cpuinfo has no topology (some ARM kernels, other systems) to the
    logical count: the affinity mask, else ``os.cpu_count()``.
    """
    usable = _usable_cpus()
    cores: set[tuple[str, str]] = set()
    for block in _read_cpuinfo(cpuinfo):
        if "core id" not in block or "processor" not in block:
            continue
        try:
            processor = int(block["processor"])
        except ValueError:
            continue
        if usable is not None and processor not in usable:
            continue
        cores.add((block.get("physical id", "0"), block["core id"]))
    if cores:
        return len(cores)
    return logical_cores()


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The instruction-set flags of the first processor (empty where /proc/cpuinfo has none)."""
    for block in _read_cpuinfo(cpuinfo):
        if block.get("flags"):
            return set(block["flags"].split())
    return set()


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """A human name of the CPU (``model name`` or the ARM fields), else ``platform``'s."""
    for block in _read_cpuinfo(cpuinfo):
        for key in ("model name", "Model", "Hardware", "cpu model"):
            if block.get(key):
                return block[key]
    return platform.processor() or platform.machine() or "unknown"


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions from package metadata: nothing is imported."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def nvidia_smi(timeout_s: float = 10.0) -> list[dict[str, str]]:
    """GPUs as ``nvidia-smi`` lists them ([] where it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run(
            [exe, "--query-gpu=name,driver_version,memory.total,compute_cap",
             "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout_s, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    gpus = []
    for line in done.stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3 and fields[0]:
            gpus.append({
                "name": fields[0],
                "driver": fields[1],
                "memory": fields[2],
                "compute_capability": fields[3] if len(fields) > 3 else None,
            })
    return gpus


def onnxruntime_providers() -> list[str]:
    """ONNX Runtime's available execution providers ([] where it cannot be imported)."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def collect_environment() -> dict[str, Any]:
    """The environment section of a benchmark report."""
    versions = library_versions()
    return {
        "cpu": {
            "model": cpu_model(),
            "physical_cores": physical_cores(),
            "logical_cores": logical_cores(),
            "machine": platform.machine(),
        },
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "onnxruntime_providers": onnxruntime_providers(),
        "gpus": nvidia_smi(),
    }
