"""The build, top to bottom: the only place that knows the order of the stages.

load -> reference -> merge -> plan -> apply -> export -> verify -> [delta] -> [quantize] -> [evaluate] -> [bench] -> report

Each stage returns its artefact and a small record; :func:`run_task` collects
the records into ``report.json``. :func:`build` builds one task into ``out``:
everything is written into a staging directory and published only when the
build has succeeded (exit 0), and only over an output that is spa-export's
own (:mod:`spa_export.safety.ownership`); a verification failure raises
:class:`~spa_export.safety.errors.VerificationError` (exit 1) and publishes nothing.
A recipe of many tasks reads the base once and calls :func:`run_task` per task
(:mod:`spa_export.release.package`).
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from spa_export import __version__
from spa_export.runtime.environment import library_versions
from spa_export.runtime.inputs import InputSpec, as_inputs, as_option, is_plain, parse_input
from spa_export.runtime.inputs import to_json as inputs_json
from spa_export.runtime.quantize import ACTIVATIONS, precisions
from spa_export.safety import validate
from spa_export.safety.errors import InputError, VerificationError, require_file
from spa_export.safety.memory import check_fits, peak_rss_mb, release, settle, young_heap
from spa_export.safety.ownership import check_out_dir
from spa_export.safety.progress import StageProgress
from spa_export.safety.publish import publish_whole, staged

if TYPE_CHECKING:
    from spa_export.stages.load import Base

SCHEMA_VERSION = 1
BENCH_CHOICES = ("none", "cpu", "gpu", "all")
EXPORTERS = ("torchscript", "dynamo")


@dataclass
class BuildOptions:
    base: Path
    spa: Path
    out: Path
    #: a shape (one float input), or every input: InputSpecs (or what spa_export.runtime.inputs.as_inputs takes)
    input_shape: tuple[int, ...] | tuple[InputSpec, ...]
    arch: str | None = None
    opset: int = 17
    bench: str = "none"
    round_to: int | str = "auto"
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
    eval_data: Path | None = None
    #: also write the task as a delta on the base (the edge layout: ``delta.safetensors``)
    delta: bool = False
    #: also write check.safetensors (the reference's outputs, for spa-export check): a package's tasks
    check_cases: bool = False
    #: extra precisions beside float32: ("int8",) adds model.int8.onnx (ONNX Runtime's quantization)
    quantize: tuple[str, ...] = ()
    #: calibration inputs for int8 (.npz/.npy), or "random" (explicitly: the report says so)
    calibration: Path | str | None = None
    #: int8's gate: accuracy points it may lose on the evaluation set; without one, the top-1
    #: disagreement (percent) it may show against float32 on the calibration inputs
    max_accuracy_drop: float = 1.0
    max_disagreement: float = 5.0
    int8_activations: str = "auto"


@dataclass
class BuildResult:
    out: Path
    report: dict = field(default_factory=dict)


def parse_input_shape(text: str) -> tuple[int, ...] | InputSpec:
    """One ``--input-shape`` value: ``"1,3,224,224"`` -> ``(1, 3, 224, 224)``, or
    ``NAME:SHAPE[:DTYPE[:LOW:HIGH]]`` -> an :class:`~spa_export.runtime.inputs.InputSpec`; a clear error otherwise."""
    if ":" in str(text):
        return parse_input(str(text), "--input-shape")
    return validate.input_shape(text, "--input-shape")


def validate_options(opts: BuildOptions) -> BuildOptions:
    """Every option checked (named as on the command line); returns them in canonical types."""
    checked = replace(
        opts,
        input_shape=as_inputs(opts.input_shape, "--input-shape"),
        bench=validate.choice(opts.bench, "--bench", BENCH_CHOICES),
        round_to=validate.round_to(opts.round_to, "--round-to"),
        opset=validate.opset(opts.opset, "--opset"),
        rtol=validate.tolerance(opts.rtol, "--rtol"),
        atol_scale=validate.tolerance(opts.atol_scale, "--atol"),
        seed=validate.seed(opts.seed, "--seed"),
        exporter=validate.choice(opts.exporter, "--exporter", EXPORTERS),
        verify_batches=validate.batches(opts.verify_batches, "verification batch"),
        bench_batches=validate.batches(opts.bench_batches, "--batch"),
        threads=validate.threads(opts.threads, "--threads"),
        budget_s=validate.budget(opts.budget_s, "--budget"),
        inputs=tuple(Path(p) for p in opts.inputs),
        eval_data=Path(opts.eval_data) if opts.eval_data is not None else None,
        quantize=precisions(opts.quantize),
        calibration=(None if opts.calibration is None else
                     "random" if str(opts.calibration) == "random" else Path(opts.calibration)),
        max_accuracy_drop=validate.percent(opts.max_accuracy_drop, "--max-accuracy-drop"),
        max_disagreement=validate.percent(opts.max_disagreement, "--max-disagreement"),
        int8_activations=validate.choice(opts.int8_activations, "--int8-activations", ACTIVATIONS),
    )
    if checked.quantize and checked.calibration is None:
        raise InputError("--quantize int8 needs calibration data: --calibration DATA.npz (inputs only: real "
                         "samples the network will see, 16 or more), or --calibration random to quantize with "
                         "ranges from random inputs (the report then says so)")
    if isinstance(checked.calibration, Path) and checked.quantize:   # read now: a bad file fails before any work
        from spa_export.stages.quantize import read_calibration

        read_calibration(checked.calibration, checked.input_shape)
    for p in (checked.base, checked.spa, *checked.inputs, *filter(None, [checked.eval_data])):
        require_file(p)
    if checked.bench == "gpu":
        check_gpu_available()
    return checked


def check_gpu_available() -> None:
    """``--bench gpu`` alone: say at once, before any work, why it cannot run here."""
    from spa_export.runtime.onnxrt import cuda_provider_available
    from spa_export.runtime.tensorrt import gpu_unavailable_reason
    from spa_export.runtime.torch_cuda import cuda_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason and not cuda_provider_available():
        torch_reason = cuda_unavailable_reason()
        if torch_reason:
            raise InputError(f"--bench gpu: {reason}; and {torch_reason}, so PyTorch cannot time it either")


def build(opts: BuildOptions) -> BuildResult:
    """Build one task into ``opts.out``; publish it only on success."""
    opts = validate_options(opts)
    out = check_out_dir(opts.out, inputs=[opts.base, opts.spa, *opts.inputs,
                                          *filter(None, [opts.eval_data])])
    progress = StageProgress(stage_names(opts), quiet=opts.quiet)
    with staged(out) as staging:
        report = run_task(opts, None, staging, progress)
        publish_whole(staging, out)
    return BuildResult(Path(opts.out), report)


def stage_names(opts: BuildOptions) -> list[str]:
    names = ["load", "reference", "merge", "plan", "apply", "export", "verify"]
    if opts.delta:
        names.append("delta")
    if opts.quantize:
        names.append("quantize")
    if opts.eval_data is not None:
        names.append("evaluate")
    if opts.bench != "none":
        names.append("bench")
    return [*names, "report"]


def run_task(opts: BuildOptions, base: Base | None, staging: Path, progress: StageProgress) -> dict:
    """Every stage of one task, writing into ``staging``; returns the report.

    ``base``: the base checkpoint already read (kept for every task of a
    recipe), or None to read ``opts.base`` here and drop it while the network
    is merged (a single build's lower peak memory).
    """
    with young_heap():  # each stage's release() then walks only what the build made
        return _run_task(opts, base, staging, progress)


def _run_task(opts: BuildOptions, base: Base | None, staging: Path, progress: StageProgress) -> dict:
    specs = opts.input_shape   # InputSpecs: validate_options made them
    with progress.stage("load"):  # the heavy imports count as loading: stage times add up
        import torch

        from spa_export.nets.arrays import read_inputs
        from spa_export.nets.footprint import activation_footprint
        from spa_export.nets.metrics import checked_macs, count_macs, count_params
        from spa_export.stages.apply import apply_plan
        from spa_export.stages.blocks import block_report
        from spa_export.stages.export import export_onnx
        from spa_export.stages.load import load_task, read_base, reread_base
        from spa_export.stages.merge import merge
        from spa_export.stages.plan import make_plan
        from spa_export.stages.reference import build_reference
        from spa_export.stages.verify import expected_outputs, verify_against

        settle()  # what the imports made stays: later collections need not walk it
        keep_base = base is not None or opts.delta   # a delta refers to the base's tensors
        base = base if base is not None else read_base(opts.base)
        loaded = load_task(base, opts.spa, opts.arch, ignore_base_digest=opts.ignore_base_digest)
        user_inputs = [(f"input {p.name}", read_inputs(p, specs)) for p in opts.inputs]
        evaluation = None
        if opts.eval_data is not None:
            from spa_export.stages.evaluate import read_eval

            evaluation = read_eval(opts.eval_data, specs)
        footprint = activation_footprint(loaded.arch, loaded.spa.overrides, specs, spa_path=loaded.spa_path)
        # The meta pass counted the MACs and showed that the shape fits; where it could not run,
        # a real forward pass of the task's network does both (MACs depend on shapes alone).
        dense_macs = footprint.macs if footprint is not None and footprint.macs is not None \
            else checked_macs(loaded.model, specs, loaded.arch)
        together = sum(opts.verify_batches)  # the reference runs the verification batches at once
        runs = {f"verification ({together} samples at once)": together}
        for p, (_, arrays) in zip(opts.inputs, user_inputs, strict=True):
            batch = len(next(iter(arrays.values())))   # read_inputs checked that every input has it
            runs[f"--input {p.name} ({batch} samples)"] = batch
        if opts.bench != "none":
            runs[f"--batch {max(opts.bench_batches)}"] = max(opts.bench_batches)
        check_fits(footprint, runs, as_option(specs), traced=specs[0].shape[0])
    # What the task's masked network (the spec's meaning of base + SPA) computes, before any merging
    # or pruning code has run, while the base is in memory: verification compares the files with it.
    with progress.stage("reference"):
        reference = build_reference(loaded.arch, loaded.base_state, loaded.spa)
        expected = expected_outputs(reference, specs, batches=opts.verify_batches, seed=opts.seed,
                                    inputs=user_inputs)
        predictions = None
        if evaluation is not None:
            from spa_export.stages.evaluate import predict_reference

            predictions = predict_reference(reference, evaluation.x)
        del reference
        release()
    # Each network is dropped as soon as no later stage needs it, to keep the peak memory low:
    # in a single build the base too, once merged.
    with progress.stage("merge"):
        merged, merge_report = merge(loaded.model, loaded.spa)
        loaded.model = None
        if not keep_base:
            loaded.base_state = base.state = None
        release()
        dense_counts = (count_params(merged), dense_macs)
    with progress.stage("plan"):
        from spa_export.stages.plan.rounding import resolve as resolve_rounding

        rounding = resolve_rounding(opts.round_to, opts.bench)
        plan = make_plan(merged, specs, round_to=rounding.multiple, round_small=rounding.round_small,
                         seed=opts.seed)
        release()  # the traced graph refers to the network it traced
    with progress.stage("apply"):
        pruned = apply_plan(merged, plan)
        pruned_counts = (count_params(pruned), count_macs(pruned, specs))
        constants = sum(b.numel() for n, b in pruned.named_buffers() if n.endswith(".constant"))
    with progress.stage("export"):
        if opts.bench != "none":
            export_onnx(merged, specs, staging / "dense.onnx", opset=opts.opset, exporter=opts.exporter)
        # PyTorch's GPU timing needs both networks; otherwise each goes as soon as it is exported
        from spa_export.runtime.bench import torch_cuda_timing

        networks = {"dense": merged} if torch_cuda_timing(opts.bench) and is_plain(specs) else None
        del merged
        release()
        export = export_onnx(pruned, specs, staging / "model.onnx", opset=opts.opset, exporter=opts.exporter,
                             keep_batchnorm=opts.delta)
        if networks is not None:
            networks["pruned"] = pruned
        del pruned
        release()
    with progress.stage("verify"):
        def reference64() -> torch.nn.Module:  # only where a case fails against float32: read the base again
            return build_reference(loaded.arch, reread_base(loaded), loaded.spa).double()

        kw = dict(rtol=opts.rtol, atol_scale=opts.atol_scale, reference64=reference64)
        verification = verify_against(expected, staging / "model.onnx", **kw)
        if opts.bench != "none":
            dense_check = verify_against(expected, staging / "dense.onnx", **kw)
            if not dense_check.passed:
                raise VerificationError(f"dense.onnx differs from the masked network: {dense_check.summary()}")
        if not verification.passed:
            raise VerificationError(
                f"model.onnx differs from the masked network beyond rtol={opts.rtol}, "
                f"atol={opts.atol_scale} x output scale: {verification.summary()}")
        if opts.check_cases:
            _write_check_cases(opts, expected, staging)
    delta = None
    if opts.delta:
        with progress.stage("delta"):
            delta = _write_delta(loaded, plan, staging)
    int8 = None
    if opts.quantize:
        with progress.stage("quantize"):
            from spa_export.stages.quantize import quantize_task

            int8 = quantize_task(opts, staging, expected, evaluation, predictions)
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "spa-export", "version": __version__},
        "task": loaded.spa.task,
        "inputs": {**loaded.to_json(), **inputs_json(specs), "opset": opts.opset,
                   "user_inputs": [str(p) for p in opts.inputs]},
        "params": {"dense": dense_counts[0], "pruned": pruned_counts[0]},
        "constant_elements": constants,
        "macs": {"dense": dense_counts[1], "pruned": pruned_counts[1]},
        "learned_params": loaded.spa.learned_parameter_count(),
        "spa_bytes": loaded.spa_path.stat().st_size,
        "merge": merge_report.to_json(),
        "groups": [g.to_json() for g in plan.groups],
        "groups_kept_whole": plan.groups_kept_whole(),
        "rounding": {**rounding.to_dict(), "extra_channels": plan.rounding_extra()},
        "plan": plan.to_json(),
        **({"blocks": blocks} if (blocks := block_report(loaded.spa, plan)) else {}),
        "export": export.to_json(),
        "verification": verification.to_json(),
        **({"delta": delta.to_json()} if delta is not None else {}),
        **({"int8": int8} if int8 is not None else {}),
    }
    if evaluation is not None:
        with progress.stage("evaluate"):
            from spa_export.stages.evaluate import evaluate

            report["accuracy"] = evaluate(predictions, staging / "model.onnx", evaluation)
            if int8 is not None and "accuracy" in int8:
                report["accuracy"]["int8"] = int8["accuracy"]["int8"]
    if opts.bench != "none":
        with progress.stage("bench"):
            from spa_export.runtime.bench import benchmark

            models = {"dense": staging / "dense.onnx", "pruned": staging / "model.onnx"}
            if int8 is not None:
                models["pruned-int8"] = staging / "model.int8.onnx"
            report.update(benchmark(models,
                                    device=opts.bench, batches=opts.bench_batches, threads=opts.threads,
                                    budget_s=opts.budget_s, seed=opts.seed,
                                    progress=None if opts.quiet else progress.note,
                                    networks=networks, inputs=specs))
            networks = None
    with progress.stage("report"):
        report["versions"] = versions(torch.__version__)
        report["peak_rss_mb"] = peak_rss_mb()
        report["stages"] = list(progress.times)
        _write_reports(report, staging)
    report["stages"] = list(progress.times)
    (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return report


def _write_check_cases(opts: BuildOptions, expected: object, staging: Path) -> None:
    """``check.safetensors``: the reference's outputs for the random cases, for ``spa-export check``."""
    from spa_export.runtime.check import check_bytes
    from spa_export.runtime.packaged import CHECK_FILE

    n = len(opts.verify_batches)
    (staging / CHECK_FILE).write_bytes(check_bytes(opts.input_shape, opts.seed, opts.verify_batches,
                                                   expected.outputs[:n], rtol=opts.rtol,
                                                   atol_scale=opts.atol_scale))


def _write_delta(loaded: object, plan: object, staging: Path) -> object:
    from spa_export.runtime.packaged import DELTA_FILE
    from spa_export.stages.delta import make_delta, numpy_state

    data, report = make_delta(staging / "model.onnx", plan, numpy_state(loaded.base_state), loaded.spa,
                              base_digest=loaded.base_digest, task=staging.name)
    (staging / DELTA_FILE).write_bytes(data)
    return report


def _write_reports(report: dict, staging: Path) -> None:
    from spa_export.report.markdown import render_markdown
    from spa_export.report.plots import plot_latency

    plot = None
    if report.get("latency"):
        plot = plot_latency(report, staging / "latency.png")
        if plot is None:
            report["plot"] = "not drawn: matplotlib is not installed (pip install 'spa-export[report]')"
    (staging / "report.md").write_text(render_markdown(report, plot.name if plot else None))


def versions(torch_version: str | None = None) -> dict:
    """The versions of Python, the platform and every library a build depends on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    if torch_version is not None:
        out["torch"] = torch_version
    out.update(library_versions(("torchvision", "onnx", "onnxruntime", "onnxsim", "onnxscript",
                                 "safetensors", "numpy")))
    return out
