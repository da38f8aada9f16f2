"""What machine a benchmark ran on: shared by the scripts in this directory.

Read straight from /proc and package metadata (nothing is imported to learn a
version), so that the record does not depend on the code being measured.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("spa-export", "torch", "torchvision", "onnx", "onnxruntime", "onnxsim",
             "onnxscript", "numpy", "safetensors")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nproc() -> int:
    exe = shutil.which("nproc")
    if exe:
        try:
            return int(subprocess.run([exe], capture_output=True, text=True, check=True).stdout)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    return len(os.sched_getaffinity(0))


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, core count, RAM, load, OS, Python and library versions, and the date (UTC)."""
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "nproc": _nproc(),
        "ram_gib": _ram_gib(),
        "load_avg_1_5_15": list(os.getloadavg()),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in LIBRARIES},
    }


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine as a Markdown bullet list."""
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    load = " / ".join(f"{x:.2f}" for x in info["load_avg_1_5_15"])
    return "\n".join([
        f"- date (UTC): {info['date_utc']}",
        f"- CPU: {info['cpu_model']}, nproc {info['nproc']}, RAM {info['ram_gib']} GiB",
        f"- load average at start (1/5/15 min): {load}",
        f"- OS: {info['os']}, Python {info['python']}",
        f"- versions: {versions}",
    ])


SMOKE_DIR = Path("/tmp/spa-bench-smoke")


def add_common_options(parser: Any) -> None:
    """Options every benchmark script takes: the network, the seed, where results and scratch go."""
    parser.add_argument("--arch", default="torchvision:resnet50")
    parser.add_argument("--input-shape", default=None, help="default 1,3,224,224 (1,3,64,64 quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where NAME.md/.json go (default benchmarks/results; /tmp/spa-bench-smoke "
                             "with --quick)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="scratch directory for base, SPAs and builds (default: a temp dir)")


def write_results(name: str, res: dict[str, Any], markdown_text: str, out_dir: Path | None, quick: bool,
                  default_dir: Path) -> None:
    """Write NAME.json and NAME.md (smoke runs never overwrite real results)."""
    import json

    target = out_dir or (SMOKE_DIR if quick else default_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    (target / f"{name}.md").write_text(markdown_text)
    print(f"wrote {target / (name + '.md')} and .json", file=sys.stderr)


def default_input_shape(args: Any) -> None:
    """ResNet-50's usual 224x224, or a small 64x64 for a --quick smoke run, unless given."""
    if args.input_shape is None:
        args.input_shape = "1,3,64,64" if args.quick else "1,3,224,224"


def make_inputs(arch: str, shape: str, prune: float, seed: int, work: Path) -> tuple[Path, Path]:
    """Base checkpoint and SPA, written by ``spa-export synth`` in a separate process."""
    base, spa = work / "base.safetensors", work / "task.spa"
    cmd = [sys.executable, "-m", "spa_export", "synth",
           "--arch", arch, "--input-shape", shape, "--prune", str(prune), "--masks", "out-only",
           "--seed", str(seed), "--save-base", str(base), "-o", str(spa)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return base, spa
