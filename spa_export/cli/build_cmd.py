"""``spa-export build``: base + SPA -> pruned, verified ONNX and a report."""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click

from spa_export.cli.options import ARCH_HELP, INPUT_SHAPE

if TYPE_CHECKING:
    from spa_export.pipeline import BuildResult

_IMPORT_MACHINERY = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def _importing(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _interrupts_wait_for_imports() -> Iterator[None]:
    """Ctrl-C stops the build at once, except in the middle of an import: then right after it.

    A KeyboardInterrupt raised inside a C extension's initialisation (numpy's,
    torch's, onnx's) can come out as an ImportError that optional-import
    guards in those libraries swallow: the library stays half-initialised and
    the build goes on, to fail later with a traceback, or even to succeed and
    publish. So while the main thread is importing, the interrupt waits
    (checked again every 50 ms) and is raised once the import is done.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # not ours to change: a thread, an ignored SIGINT (background job), a caller's handler
        return
    active = True

    def again() -> None:
        if active:
            _thread.interrupt_main()  # runs the handler below again in the main thread

    def handler(signum: int, frame: FrameType | None) -> None:
        if active and _importing(frame):
            timer = threading.Timer(0.05, again)
            timer.daemon = True
            timer.start()
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        active = False
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _load_recipe(path: Path) -> dict:
    import yaml

    from spa_export.errors import InputError

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the recipe: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{path}: cannot read the recipe: not valid YAML{where}: {problem}") from err
    if not isinstance(data, dict):
        raise InputError(f"{path}: a recipe is a mapping of option names to values")
    base_dir = path.parent
    out = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in ("base", "spa", "out") and value is not None:
            value = os.path.normpath(base_dir / str(value))
        out[key] = value
    return out


@click.command("build")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="A YAML file whose keys give defaults for the options below (paths relative to it).")
@click.option("--base", type=click.Path(path_type=Path), help="Base checkpoint (.safetensors, .pt, .pth).")
@click.option("--spa", "spa", type=click.Path(path_type=Path), help="The task's SPA file.")
@click.option("--arch", help=ARCH_HELP)
@click.option("--input-shape", type=INPUT_SHAPE, help="Export shape N,C,H,W; the batch axis stays dynamic.")
@click.option("--out", type=click.Path(path_type=Path), help="Output directory (published atomically).")
@click.option("--bench", type=click.Choice(["none", "cpu", "gpu", "all"]), default=None,
              help="Time dense against pruned [default: none].")
@click.option("--batch", "batches", type=int, multiple=True, help="Benchmark batch sizes [default: 1, 8].")
@click.option("--threads", type=int, help="CPU threads for benchmarking [default: physical cores].")
@click.option("--budget", type=float, default=None, help="Seconds of timing per configuration [default: 2].")
@click.option("--opset", type=int, default=None, help="ONNX opset [default: 17].")
@click.option("--round-to", type=int, default=None,
              help="Keep every pruned group's channel count a multiple of N (exact: extra channels stay zero).")
@click.option("--input", "inputs", type=click.Path(path_type=Path), multiple=True,
              help="A .npy input to verify on, besides seeded random ones (repeatable).")
@click.option("--rtol", type=float, default=None, help="Verification relative tolerance [default: 1e-4].")
@click.option("--atol", type=float, default=None,
              help="Verification absolute tolerance, as a fraction of the output's scale [default: 1e-4].")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default=None,
              help="torch.onnx exporter [default: torchscript].")
@click.option("--ignore-base-digest", is_flag=True, help="Go on although the SPA names another base.")
@click.option("--seed", type=int, default=None, help="Seed of the verification inputs [default: 0].")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def build(recipe: Path | None, **given: object) -> None:
    """Merge, prune exactly, export ONNX, verify against the masked network.

    Writes OUT/model.onnx, OUT/report.json and OUT/report.md (and OUT/dense.onnx
    with --bench). Exit 1 when verification fails; nothing is published then.
    """
    from spa_export.errors import InputError, InterruptedAfterPublish
    from spa_export.pipeline import BuildOptions, parse_input_shape
    from spa_export.pipeline import build as run_build

    values = _load_recipe(recipe) if recipe else {}
    for key, value in given.items():
        if value not in (None, (), False) or key not in values:
            values[key] = value
    for key in ("base", "spa", "out", "input_shape"):
        if not values.get(key):
            raise InputError(f"missing --{key.replace('_', '-')} (see spa-export build --help)")
    shape = values["input_shape"]
    shape = shape if isinstance(shape, tuple) else parse_input_shape(str(shape))
    opts = BuildOptions(
        base=Path(values["base"]), spa=Path(values["spa"]), out=Path(values["out"]), input_shape=shape,
        arch=values.get("arch"), opset=values.get("opset") or 17, bench=values.get("bench") or "none",
        round_to=values.get("round_to") or 1, ignore_base_digest=bool(values.get("ignore_base_digest")),
        inputs=tuple(Path(p) for p in values.get("inputs") or ()),
        rtol=values.get("rtol") or 1e-4, atol_scale=values.get("atol") or 1e-4,
        seed=values.get("seed") or 0, exporter=values.get("exporter") or "torchscript",
        bench_batches=tuple(values.get("batches") or (1, 8)), threads=values.get("threads"),
        budget_s=values.get("budget") or 2.0, quiet=bool(values.get("quiet")),
    )
    result = None
    try:
        with _interrupts_wait_for_imports():
            result = run_build(opts)
        _summarise(result, opts.bench)
    except KeyboardInterrupt:
        if result is None:
            raise
        raise InterruptedAfterPublish(result.out) from None  # published in full: say so


def _summarise(result: BuildResult, bench: str) -> None:
    """The build's one-line result (and speed-ups) on stdout."""
    r = result.report
    ver = r["verification"]
    click.echo(
        f"{result.out}/model.onnx: params {r['params']['dense']:,} -> {r['params']['pruned']:,} "
        f"({r['params']['pruned'] / max(r['params']['dense'], 1):.1%}), MACs {r['macs']['dense']:,} -> "
        f"{r['macs']['pruned']:,} ({r['macs']['pruned'] / max(r['macs']['dense'], 1):.1%}); "
        f"verified: worst relative error {max((c.get('max_rel_err', 0) for c in ver['cases']), default=0):.2e}"
    )
    for s in r.get("speedup", []):
        click.echo(f"  {s['device']} {s['runtime']} batch {s['batch']}: {s['dense_p50_ms']:.3f} ms -> "
                   f"{s['pruned_p50_ms']:.3f} ms (x{s['speedup']:.2f})")
    gpu = r.get("gpu")
    if gpu and gpu.get("status") == "skipped" and bench in ("gpu", "all"):
        click.echo(f"  gpu: skipped ({gpu.get('reason')})")
