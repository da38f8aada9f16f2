"""report.md from a report.json dict.

Every section is optional: a report of a build run with ``--bench none`` has no
latency, one without verification has none of that, and so on; what is missing
is left out (or said to be missing) rather than failing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

TOP_GROUPS = 20


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _int(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else ("n/a" if value is None else str(value))


def _si(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{value:.3g}"


def _ms(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _ratio(dense: object, pruned: object) -> tuple[float | None, str]:
    if not isinstance(dense, (int, float)) or not isinstance(pruned, (int, float)) or not dense:
        return None, "n/a"
    kept = pruned / dense
    factor = f", ×{dense / pruned:.2f} smaller" if pruned else ""
    return kept, f"{kept:.1%} kept{factor}"


def _sci(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "n/a"


def block_summary(rows: list[dict]) -> str | None:
    """One sentence over all block-masked layers (None without any)."""
    if not rows:
        return None
    blocks = sum(r["grid"][0] * r["grid"][1] for r in rows)
    kept = sum(r["blocks_kept"] for r in rows)
    whole = sum(r["block_rows_pruned"] + r["block_cols_pruned"] for r in rows)
    gone = sum(r["out_removed"] + r["in_removed"] for r in rows)
    return (f"{len(rows)} block-masked layer(s): {kept:,} of {blocks:,} blocks kept ({kept / blocks:.1%} dense); "
            f"{whole} whole block rows or columns pruned; {gone} channel(s) of these layers removed")


def _stable(stable: object) -> str:
    return "yes" if stable else "**no**"


def _summary(report: Mapping[str, Any]) -> list[str]:
    inputs = report.get("inputs") or {}
    rows: list[tuple[str, str]] = []
    if report.get("task"):
        rows.append(("Task", str(report["task"])))
    if inputs.get("arch"):
        rows.append(("Architecture", str(inputs["arch"])))
    if inputs.get("input_shape"):
        rows.append(("Input shape", "×".join(str(d) for d in inputs["input_shape"])))
    for spec in inputs.get("inputs") or []:
        value_range = f" in [{spec['range'][0]}, {spec['range'][1]})" if spec.get("range") else ""
        rows.append((f"Input {spec['name']}", "×".join(str(d) for d in spec["shape"]) + f" {spec['dtype']}"
                     + value_range))
    if inputs.get("opset"):
        rows.append(("ONNX opset", str(inputs["opset"])))
    for key, label in (("base", "Base"), ("spa", "SPA file")):
        item = inputs.get(key) or {}
        if item:
            digest = item.get("digest") or item.get("sha256")
            rows.append((label, f"`{item.get('path', '?')}`" + (f" ({digest})" if digest else "")))
            dropped = item.get("dropped")
            if dropped:   # the auxiliary heads' entries, left out
                count = dropped.get("keys", dropped.get("entries"))
                rows.append((f"{label}: left out", f"{count} entries ({', '.join(dropped.get('first') or [])}"
                             f"{', ...' if count > len(dropped.get('first') or []) else ''}): {dropped.get('why')}"))
    for key, label, fmt in (("params", "Parameters", _int), ("macs", "MACs", _si)):
        pair = report.get(key) or {}
        if pair:
            _, ratio = _ratio(pair.get("dense"), pair.get("pruned"))
            rows.append((label, f"{fmt(pair.get('dense'))} → {fmt(pair.get('pruned'))} ({ratio})"))
    rounding = report.get("rounding") or {}
    if rounding:
        extra = rounding.get("extra_channels")
        rows.append(("Channel rounding", f"multiples of {rounding.get('multiple')} "
                     f"({rounding.get('requested')}: {rounding.get('why')})"
                     + (f"; {extra} channel(s) kept beyond the masks" if extra else "")))
    blocks = block_summary(report.get("blocks") or [])
    if blocks:
        rows.append(("Block masks", blocks))
    heads = (report.get("plan") or {}).get("attention") or {}
    if heads:
        total = sum(a["num_heads"] for a in heads.values())
        kept = sum(len(a["heads_kept"]) for a in heads.values())
        rows.append(("Attention heads", f"{kept} of {total} kept in {len(heads)} attention module(s)"))
    learned = report.get("learned_params") or {}
    if learned:
        rows.append(("Learned parameters", _int(learned.get("total"))))
    verification = report.get("verification")
    if verification:
        verdict = "passed" if verification.get("passed") else "**FAILED**"
        atol = (f"{_sci(verification['atol_scale'])} × output scale" if "atol_scale" in verification
                else _sci(verification.get("atol")))
        text = f"{verdict} (rtol {_sci(verification.get('rtol'))}, atol {atol})"
        worst = verification.get("worst") or {}
        if worst:
            text += (f"; worst element: case '{worst.get('case')}', output "
                     f"'{worst.get('output')}' at {worst.get('index')}: expected "
                     f"{worst.get('expected')}, got {worst.get('got')}")
        rows.append(("Verification", text))
        for warning in verification.get("warnings") or []:
            rows.append(("**Verification warning**", warning))
    if not rows:
        return []
    lines = ["## Summary", ""] + _table(("", ""), rows) + [""]
    cases = (verification or {}).get("cases") or []
    if cases:
        lines += _table(("Verification case", "Batch", "Max abs err", "Max rel err", "Reference"),
                        [(c.get("name"), c.get("batch"), _sci(c.get("max_abs_err")),
                          _sci(c.get("max_rel_err")), c.get("reference", "float32")) for c in cases]) + [""]
        if any(c.get("reference") == "float64" for c in cases):
            lines += ["Cases judged by the float64 reference failed against the float32 one: the network "
                      "is badly conditioned, and float32 rounding of the reference alone exceeds the "
                      "tolerance there.", ""]
    return lines


def _runtime_label(entry: Mapping[str, Any]) -> str:
    label = str(entry.get("runtime", "?"))
    if entry.get("precision"):
        label += f" {entry['precision']}"
    return label


def _latency(report: Mapping[str, Any], plot_name: str | None) -> list[str]:
    latency = report.get("latency") or []
    lines = ["## Latency", ""]
    if not latency:
        return lines + ["No latency was measured.", ""]
    groups: dict[tuple, dict[str, Mapping[str, Any]]] = {}
    for e in latency:
        same = {**e, "precision": None} if e.get("precision") == "int8" else e   # int8 sits in float32's row
        key = (e.get("device"), _runtime_label(same), e.get("batch"))
        groups.setdefault(key, {})[str(e.get("model"))] = e
    macs = report.get("macs") or {}
    macs_ratio, _ = _ratio(macs.get("dense"), macs.get("pruned"))
    paired = all("dense" in g and "pruned" in g for g in groups.values())
    int8 = any("pruned-int8" in g for g in groups.values())
    if paired:
        rows = []
        for (device, runtime, batch), g in groups.items():
            d, p, q = g["dense"], g["pruned"], g.get("pruned-int8")
            speed = d["p50_ms"] / p["p50_ms"] if p.get("p50_ms") else None
            row = [device, runtime, batch, _ms(d.get("p50_ms")), _ms(d.get("p90_ms")),
                   _ms(d.get("p99_ms")), _ms(p.get("p50_ms")), _ms(p.get("p90_ms")),
                   _ms(p.get("p99_ms")), f"×{speed:.2f}" if speed else "n/a",
                   f"×{1 / macs_ratio:.2f}" if macs_ratio else "n/a",
                   _stable(d.get("stable", True) and p.get("stable", True))]
            if int8:
                row[-1:-1] = ([_ms(q.get("p50_ms")), f"×{d['p50_ms'] / q['p50_ms']:.2f}",
                               f"×{p['p50_ms'] / q['p50_ms']:.2f}"] if q and q.get("p50_ms") else ["n/a"] * 3)
            rows.append(row)
        header = ["Device", "Runtime", "Batch", "Dense p50 ms", "Dense p90 ms", "Dense p99 ms", "Pruned p50 ms",
                  "Pruned p90 ms", "Pruned p99 ms", "Speedup", "MACs ratio", "Stable"]
        if int8:
            header[-1:-1] = ["Int8 pruned p50 ms", "Int8 / dense", "Int8 / pruned"]
        lines += _table(header, rows)
        lines += ["", "Speedup is dense p50 over pruned p50; the MACs ratio is dense MACs "
                  "over pruned MACs, the speedup that counting operations predicts."]
        if int8:
            lines += ["Int8 columns: the int8 pruned network, timed in the same loop; its speed-up over the "
                      "float32 dense and pruned networks."]
    else:
        lines += _table(("Device", "Runtime", "Model", "Batch", "p50 ms", "p90 ms", "p99 ms",
                         "Runs", "Stable"),
                        [(e.get("device"), _runtime_label(e), e.get("model"), e.get("batch"),
                          _ms(e.get("p50_ms")), _ms(e.get("p90_ms")), _ms(e.get("p99_ms")),
                          e.get("iterations"), _stable(e.get("stable", True))) for e in latency])
    unstable = sum(1 for e in latency if e.get("stable") is False)
    if unstable:
        lines += ["", f"**{unstable} of {len(latency)} timing(s) did not settle** within the budget (their median "
                  "still moved between the last blocks of runs): read those figures, and the speedups made "
                  "from them, as noise; time again on a quieter machine or with a larger `--budget`."]
    first = latency[0]
    if first.get("threads"):
        lines += ["", f"CPU runs use {first['threads']} intra-op thread(s), graph optimisation "
                  f"level '{first.get('opt_level')}'."]
    lines.append("")
    if plot_name:
        lines += [f"![Latency p50 against batch size]({plot_name})", ""]
    return lines


def _gpu(report: Mapping[str, Any]) -> list[str]:
    gpu = report.get("gpu") or {}
    lines: list[str] = []
    if gpu.get("status") == "skipped":
        lines += [f"GPU benchmark skipped: {gpu.get('reason') or 'no reason given'}.", ""]
    elif gpu.get("reason"):
        lines += [f"GPU note: {gpu['reason']}.", ""]
    modes = {}
    for e in report.get("latency") or []:
        if e.get("device") == "gpu":
            modes.setdefault(_runtime_label(e), set()).add(
                (e.get("cuda_graphs"), e.get("host_memory"), e.get("graph_fallback"), e.get("tensorrt_version"),
                 e.get("precision_method")))
    for runtime, seen in modes.items():
        for graphs, memory, fallback, trt_version, method in sorted(seen, key=str):
            how = [] if graphs is None else ["as CUDA graphs" if graphs else f"eagerly ({fallback or 'no graphs'})"]
            if trt_version:
                how.append(f"TensorRT {trt_version}, {method or 'precision method not recorded'}")
            if memory:
                how.append(f"host copies from {memory} memory"
                           + (" (they include CUDA's staging; trtexec pins its buffers)" if memory == "pageable" else ""))
            if how:
                lines += [f"GPU {runtime}: {'; '.join(how)}.", ""]
    numerics = report.get("gpu_numerics") or []
    if numerics:
        lines += ["GPU outputs against the verified ONNX model on ONNX Runtime (CPU); tolerance "
                  "rtol and atol × output scale as listed:", ""]
        lines += _table(("Model", "GPU runtime", "Precision", "Batch", "Max abs err", "Err / scale",
                         "Tolerance", "Result"),
                        [(a.get("model"), a.get("runtime", "tensorrt"), a.get("precision"), a.get("batch"),
                          _sci(a.get("max_abs_err")), _sci(a.get("max_err_over_scale")),
                          f"{_sci(a.get('rtol'))} / {_sci(a.get('atol_over_scale'))}",
                          "within tolerance" if a.get("passed") else "**outside tolerance**")
                         for a in numerics]) + [""]
    return lines


def _accuracy(report: Mapping[str, Any]) -> list[str]:
    a = report.get("accuracy")
    if not isinstance(a, Mapping):
        return []
    agree = a.get("agreeing_predictions")
    return ["## Held-out accuracy", "",
            *_table(("Data", "Split", "Samples", "Masked reference", "Exported ONNX", "Same prediction"),
                    [(a.get("dataset"), a.get("split"), a.get("n"), _pct(a.get("reference")),
                      _pct(a.get("exported")), f"{agree} of {a.get('n')}" if agree is not None else "n/a")]),
            ""]


def _pct(value: object) -> str:
    return f"{value:.2%}" if isinstance(value, (int, float)) else "n/a"


def _int8(report: Mapping[str, Any]) -> list[str]:
    q = report.get("int8")
    if not isinstance(q, Mapping):
        return []
    gate = q.get("gate") or {}
    c = q.get("comparison") or {}
    lines = ["## Int8 (`model.int8.onnx`)", "",
             "Quantized from the verified float32 network with ONNX Runtime's tools; 8 bits cannot be exact, "
             "so it is judged by what it changes, against float32:", "",
             f"- method: {q.get('method')}; activations {q.get('activations')}: {q.get('why')}",
             f"- int8 instructions of this processor: {q.get('instructions')}",
             f"- calibration: {q.get('calibration')}",
             f"- output error on {c.get('samples')} {c.get('inputs', 'inputs')}: at most "
             f"{_sci(c.get('max_error_of_scale'))} of the output's scale"
             + (f"; top-1 disagreement {c['top1_disagreement_pct']:.2f}%" if "top1_disagreement_pct" in c else ""),
             f"- output error on the {(q.get('verification_cases') or {}).get('samples')} seeded random verification "
             f"inputs (often outside the calibrated ranges): at most "
             f"{_sci((q.get('verification_cases') or {}).get('max_error_of_scale'))} of the output's scale"]
    a = q.get("accuracy")
    if isinstance(a, Mapping):
        lines.append(f"- accuracy on {a.get('dataset')} (n={a.get('n')}): float32 reference {_pct(a.get('reference'))}, "
                     f"int8 {_pct(a.get('int8'))}; {a.get('agreeing_predictions')} of {a.get('n')} predictions agree")
    if gate:
        verdict = "passed" if gate.get("passed") else "**failed**"
        value = f": {gate['value']:.2f} against the limit {gate['limit']:g}" if "value" in gate else ""
        lines.append(f"- gate, {gate.get('kind')}{value}: {verdict}")
    return [*lines, ""]


def _groups(report: Mapping[str, Any]) -> list[str]:
    groups = report.get("groups") or []
    whole = report.get("groups_kept_whole") or []
    if not groups and not whole:
        return []
    lines = ["## Channel groups", ""]
    if groups:
        top = sorted(groups, key=lambda g: -(g.get("channels") or 0))[:TOP_GROUPS]
        rows = []
        for g in top:
            reasons = g.get("kept_reasons") or {}
            why = "; ".join(f"{k} ({v})" for k, v in reasons.items() if v) or "-"
            rows.append((g.get("id"), g.get("channels"), g.get("kept"), g.get("removed"), why))
        lines += _table(("Group", "Channels", "Kept", "Removed", "Why kept"), rows)
        if len(groups) > TOP_GROUPS:
            lines.append(f"\n{len(groups) - TOP_GROUPS} more group(s) not shown.")
        lines.append("")
    if whole:
        lines += ["Groups kept whole:", ""]
        lines += _table(("Group", "Channels", "Reason"),
                        [(g.get("id"), g.get("channels"), g.get("reason")) for g in whole])
        lines.append("")
    return lines


def _stages(report: Mapping[str, Any]) -> list[str]:
    stages = report.get("stages") or []
    if not stages:
        return []
    total = sum(s.get("seconds") or 0.0 for s in stages)
    rows = [(s.get("name"), f"{s.get('seconds', 0.0):.2f}") for s in stages]
    rows.append(("**total**", f"{total:.2f}"))
    return ["## Stage times", ""] + _table(("Stage", "Seconds"), rows) + [""]


def _environment(report: Mapping[str, Any]) -> list[str]:
    env = report.get("environment") or {}
    versions = dict(env.get("versions") or {})
    versions.update(report.get("versions") or {})
    if not env and not versions:
        return []
    lines = ["## Environment", ""]
    cpu = env.get("cpu") or {}
    if cpu:
        lines.append(f"- CPU: {cpu.get('model')} ({cpu.get('physical_cores')} physical / "
                     f"{cpu.get('logical_cores')} logical cores)")
    for gpu in env.get("gpus") or []:
        lines.append(f"- GPU: {gpu.get('name')} (driver {gpu.get('driver')})")
    if env.get("os"):
        lines.append(f"- OS: {env['os']}; Python {env.get('python')}")
    shown = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v)
    if shown:
        lines.append(f"- Versions: {shown}")
    tool = report.get("tool") or {}
    if tool:
        lines.append(f"- Tool: {tool.get('name')} {tool.get('version')}")
    return lines + [""]


def render_markdown(report: Mapping[str, Any], plot_name: str | None = None) -> str:
    """The text of report.md; ``plot_name`` is the latency plot's file name, if any."""
    title = f"# spa-export report: {report['task']}" if report.get("task") else "# spa-export report"
    lines = [title, ""]
    lines += _summary(report)
    lines += _accuracy(report)
    lines += _int8(report)
    lines += _latency(report, plot_name)
    lines += _gpu(report)
    lines += _groups(report)
    lines += _stages(report)
    lines += _environment(report)
    return "\n".join(lines).rstrip() + "\n"
