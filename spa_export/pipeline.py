"""The build, top to bottom: the only place that knows the order of the stages.

load -> merge -> plan -> apply -> export -> verify -> [bench] -> report

Each stage returns its artefact and a small record; :func:`build` collects the
records into ``report.json``. Everything is written into a staging directory
and published to ``out`` only when the build has succeeded (exit 0); a
verification failure raises :class:`~spa_export.errors.VerificationError`
(exit 1) and publishes nothing.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from spa_export import __version__
from spa_export.errors import InputError, VerificationError, require_file
from spa_export.memory import peak_rss_mb, release
from spa_export.progress import StageProgress
from spa_export.publish import check_out_dir, discard, publish_whole, staging_dir

SCHEMA_VERSION = 1
BENCH_CHOICES = ("none", "cpu", "gpu", "all")


@dataclass
class BuildOptions:
    base: Path
    spa: Path
    out: Path
    input_shape: tuple[int, ...]
    arch: str | None = None
    opset: int = 17
    bench: str = "none"
    round_to: int = 1
    ignore_base_digest: bool = False
    inputs: tuple[Path, ...] = ()
    rtol: float = 1e-4
    atol_scale: float = 1e-4
    verify_batches: tuple[int, ...] = (1, 4)
    seed: int = 0
    exporter: str = "torchscript"
    bench_batches: tuple[int, ...] = (1, 8)
    threads: int | None = None
    budget_s: float = 2.0
    quiet: bool = False


@dataclass
class BuildResult:
    out: Path
    report: dict = field(default_factory=dict)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> ``(1, 3, 224, 224)``; a clear error otherwise."""
    try:
        dims = tuple(int(p) for p in str(text).replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--input-shape '{text}': expected comma-separated integers such as 1,3,224,224") \
            from None
    if len(dims) < 2 or any(d < 1 for d in dims) or any(d > 65536 for d in dims):
        raise InputError(f"--input-shape '{text}': expected N,C[,H[,W]] with positive sizes")
    return dims


def _validate(opts: BuildOptions) -> None:
    if opts.bench not in BENCH_CHOICES:
        raise InputError(f"--bench '{opts.bench}': one of {', '.join(BENCH_CHOICES)}")
    if opts.round_to < 1:
        raise InputError(f"--round-to must be >= 1, got {opts.round_to}")
    if not 7 <= opts.opset <= 23:
        raise InputError(f"--opset {opts.opset}: supported opsets are 7 to 23")
    for p in (opts.base, opts.spa, *opts.inputs):
        require_file(p)
    check_out_dir(Path(opts.out))
    if opts.bench == "gpu":  # asked for the GPU alone: say at once why it cannot run here
        from spa_export.runtime.onnxrt import cuda_provider_available
        from spa_export.runtime.tensorrt import gpu_unavailable_reason

        reason = gpu_unavailable_reason()
        if reason and not cuda_provider_available():
            raise InputError(f"--bench gpu: {reason}")


def build(opts: BuildOptions) -> BuildResult:
    """Run every stage; publish ``opts.out`` only on success."""
    _validate(opts)
    names = ["load", "merge", "plan", "apply", "export", "verify"]
    if opts.bench != "none":
        names.append("bench")
    names.append("report")
    progress = StageProgress(names, quiet=opts.quiet)
    staging = staging_dir(Path(opts.out))
    try:
        report = _run(opts, progress, staging)
        publish_whole(staging, Path(opts.out))
    except BaseException:
        discard(staging)  # a no-op once published
        raise
    return BuildResult(Path(opts.out), report)


def _run(opts: BuildOptions, progress: StageProgress, staging: Path) -> dict:
    shape = tuple(opts.input_shape)
    with progress.stage("load"):  # the heavy imports count as loading: stage times add up
        import torch

        from spa_export.apply import apply_plan
        from spa_export.export import export_onnx
        from spa_export.load import load_inputs, reread_base
        from spa_export.merge import merge
        from spa_export.metrics import count_macs, count_params
        from spa_export.plan import make_plan
        from spa_export.reference import build_reference
        from spa_export.verify import load_inputs_npy, verify

        loaded = load_inputs(opts.base, opts.spa, opts.arch, ignore_base_digest=opts.ignore_base_digest)
        user_inputs = load_inputs_npy([Path(p) for p in opts.inputs], shape)
    # Each network is dropped as soon as no later stage needs it, to keep the peak memory low:
    # the base too, once merged; verification reads it again (and checks it is the same).
    with progress.stage("merge"):
        merged, merge_report = merge(loaded.model, loaded.spa)
        loaded.model = loaded.base_state = None
        release()
        _check_runs(merged, shape, loaded.arch)
        dense_counts = (count_params(merged), count_macs(merged, shape))
    with progress.stage("plan"):
        plan = make_plan(merged, shape, round_to=opts.round_to, seed=opts.seed)
        release()  # the traced graph refers to the network it traced
    with progress.stage("apply"):
        pruned = apply_plan(merged, plan)
        pruned_counts = (count_params(pruned), count_macs(pruned, shape))
        constants = sum(b.numel() for n, b in pruned.named_buffers() if n.endswith(".constant"))
    with progress.stage("export"):
        if opts.bench != "none":
            export_onnx(merged, shape, staging / "dense.onnx", opset=opts.opset, exporter=opts.exporter)
        del merged
        release()
        export = export_onnx(pruned, shape, staging / "model.onnx", opset=opts.opset, exporter=opts.exporter)
        del pruned
        release()
    with progress.stage("verify"):
        reference = build_reference(loaded.arch, reread_base(loaded), loaded.spa)
        kw = dict(batches=opts.verify_batches, seed=opts.seed, inputs=user_inputs, rtol=opts.rtol,
                  atol_scale=opts.atol_scale)
        verification = verify(reference, staging / "model.onnx", shape, **kw)
        if opts.bench != "none":
            dense_check = verify(reference, staging / "dense.onnx", shape, **kw)
            if not dense_check.passed:
                raise VerificationError(f"dense.onnx differs from the masked network: {dense_check.summary()}")
        if not verification.passed:
            raise VerificationError(
                f"model.onnx differs from the masked network beyond rtol={opts.rtol}, "
                f"atol={opts.atol_scale} x output scale: {verification.summary()}")
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "spa-export", "version": __version__},
        "task": loaded.spa.task,
        "inputs": {**loaded.to_json(), "input_shape": list(shape), "opset": opts.opset,
                   "user_inputs": [str(p) for p in opts.inputs]},
        "params": {"dense": dense_counts[0], "pruned": pruned_counts[0]},
        "constant_elements": constants,
        "macs": {"dense": dense_counts[1], "pruned": pruned_counts[1]},
        "learned_params": loaded.spa.learned_parameter_count(),
        "merge": merge_report.to_json(),
        "groups": [g.to_json() for g in plan.groups],
        "groups_kept_whole": plan.groups_kept_whole(),
        "plan": plan.to_json(),
        "export": export.to_json(),
        "verification": verification.to_json(),
    }
    if opts.bench != "none":
        with progress.stage("bench"):
            from spa_export.runtime.bench import benchmark

            report.update(benchmark({"dense": staging / "dense.onnx", "pruned": staging / "model.onnx"},
                                    device=opts.bench, batches=opts.bench_batches, threads=opts.threads,
                                    budget_s=opts.budget_s, seed=opts.seed,
                                    progress=None if opts.quiet else progress.note))
    with progress.stage("report"):
        report["versions"] = _versions(torch.__version__)
        report["peak_rss_mb"] = peak_rss_mb()
        report["stages"] = list(progress.times)
        _write_reports(report, staging)
    report["stages"] = list(progress.times)
    (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return report


def _check_runs(model, shape: tuple[int, ...], arch: str) -> None:
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape[1:])))
    except Exception as err:
        raise InputError(f"--input-shape {','.join(map(str, shape))} does not fit '{arch}': "
                         f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from err


def _write_reports(report: dict, staging: Path) -> None:
    from spa_export.report.markdown import render_markdown
    from spa_export.report.plots import plot_latency

    plot = None
    if report.get("latency"):
        plot = plot_latency(report, staging / "latency.png")
    (staging / "report.md").write_text(render_markdown(report, plot.name if plot else None))


def _versions(torch_version: str) -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch_version}
    for dist in ("torchvision", "onnx", "onnxruntime", "onnxsim", "onnxscript", "safetensors", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out
