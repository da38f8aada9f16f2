"""The runtime half must run where torch is absent (a Jetson next to onnxruntime/TensorRT).

A subprocess blocks ``import torch`` with a ``sys.meta_path`` finder, imports the package and
every module of the floors without torch (safety, runtime, report: found by walking them, so a new
module is covered too) and the bench/engine CLI modules, builds a tiny ONNX model with
``onnx.helper`` and runs ``spa-export bench`` on it through the real entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import spa_export

ROOT = Path(spa_export.__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import importlib.abc
    import sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (imported: {name})")
            return None

    sys.meta_path.insert(0, BlockTorch())

    import importlib
    import pkgutil

    import spa_export
    floors = ["spa_export"]   # the package itself, every module of the floors without torch, the runtime CLI
    for floor in ("safety", "runtime", "report"):
        package = importlib.import_module(f"spa_export.{floor}")
        floors += [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    for module in [*floors, "spa_export.cli.bench_cmd", "spa_export.cli.engine_cmd"]:
        importlib.import_module(module)
    assert len(floors) > 20 and "torch" not in sys.modules, floors
    assert spa_export.__version__

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    workdir = sys.argv[1]
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, workdir + "/tiny.onnx")

    from spa_export.report import plot_latency, render_markdown
    from spa_export.cli.main import main

    sys.argv = ["spa-export", "bench", workdir + "/tiny.onnx", workdir + "/tiny.onnx",
                "--batch", "1", "--batch", "2", "--budget", "0.05", "--device", "all",
                "--json", workdir + "/bench.json", "--quiet"]
    try:
        main()
    except SystemExit as done:
        code = done.code or 0
    else:
        code = 0
    if code == 0:
        import json
        report = json.load(open(workdir + "/bench.json"))
        render_markdown(report, "latency.png")
        plot_latency(report, __import__("pathlib").Path(workdir) / "latency.png")
    print("TORCH_LOADED" if "torch" in sys.modules else "TORCH_ABSENT")
    sys.exit(code)
''')


def test_bench_runs_with_torch_blocked(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
             "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert "TORCH_ABSENT" in done.stdout
    assert "speedup" in done.stdout  # the side-by-side table
    result = json.loads((tmp_path / "bench.json").read_text())
    assert {(e["model"], e["batch"]) for e in result["latency"]} == {
        ("dense", 1), ("pruned", 1), ("dense", 2), ("pruned", 2)}
    assert result["gpu"]["status"] in ("ok", "skipped")
    assert (tmp_path / "latency.png").is_file()
