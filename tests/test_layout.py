"""The house: folders that name the architecture, and imports that only run down.

Every folder's docstring says what it holds and, on its ``May import:`` line,
which folders it may import. This test reads that line and holds every import
of every module to it (imports inside functions too), so the rule and the
code cannot drift apart. The floors without torch (``safety``, ``runtime``,
``report``) are imported with torch blocked, module by module, in
``tests/runtime/test_runtime_torch_free.py``.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spa_export

PACKAGE = Path(spa_export.__file__).resolve().parent
FOLDERS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def _doc(folder: str) -> str:
    return ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())) or ""


def _allowed(folder: str) -> set[str]:
    line = re.search(r"^May import: (.*)$", _doc(folder), re.MULTILINE)
    assert line, f"spa_export/{folder}/__init__.py: its docstring has no 'May import:' line"
    return {name.removeprefix("spa_export.") for name in re.findall(r"spa_export\.(\w+)", line.group(1))}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``spa_export`` module or name imported by ``path``, with its line (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "spa_export"]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if module == "spa_export":
                found += [(node.lineno, f"spa_export.{a.name}") for a in node.names]
            elif module.startswith("spa_export."):
                found.append((node.lineno, module))
    return found


def test_the_top_level_shows_a_handful_of_folders() -> None:
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__")
    assert entries == ["__init__.py", "__main__.py", "cli", "examples.py", "nets", "pack", "release",
                       "report", "runtime", "safety", "spa", "stages"]
    assert FOLDERS == ["cli", "nets", "pack", "release", "report", "runtime", "safety", "spa", "stages"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_folder_says_what_it_holds_and_what_it_may_import(folder: str) -> None:
    doc = _doc(folder)
    assert len(doc.splitlines()) >= 3, f"spa_export/{folder}: a docstring that says what the folder holds"
    allowed = _allowed(folder)
    assert folder not in allowed and allowed <= set(FOLDERS), allowed
    # every module the folder holds is named in its docstring (the cli's commands are the exception:
    # one module per command, named for it)
    if folder != "cli":
        modules = {p.stem for p in (PACKAGE / folder).glob("*.py")} - {"__init__"}
        modules |= {p.name for p in (PACKAGE / folder).iterdir() if (p / "__init__.py").is_file()}
        missing = sorted(m for m in modules if f"``{m}``" not in doc and f"``{m}/``" not in doc)
        assert not missing, f"spa_export/{folder}/__init__.py does not name {missing}"


def test_imports_run_down_only() -> None:
    wrong = []
    for folder in FOLDERS:
        allowed = _allowed(folder) | {folder}
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for line, name in _imports(path):
                parts = name.split(".")
                if parts == ["spa_export", "__version__"]:
                    continue
                if len(parts) < 2 or parts[1] not in allowed:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not wrong, "imports that reach up or sideways:\n" + "\n".join(wrong)


def test_the_folders_form_one_order() -> None:
    """No two folders may import each other, directly or around a loop: the May-import lines are a DAG."""
    allowed = {f: _allowed(f) for f in FOLDERS}
    order: list[str] = []
    while allowed:
        bottom = sorted(f for f, deps in allowed.items() if not deps - set(order))
        assert bottom, f"the May-import lines form a loop among {sorted(allowed)}"
        order += bottom
        for f in bottom:
            del allowed[f]
    assert order[-1] == "cli" and order.index("stages") < order.index("release")


def test_the_public_api_is_importable_from_the_package() -> None:
    script = "import sys, spa_export; assert 'torch' not in sys.modules; print(sorted(spa_export.__all__))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PACKAGE.parent, timeout=60)
    assert done.returncode == 0, done.stderr
    from spa_export.pack import pack_model
    from spa_export.stages.pipeline import BuildOptions, build

    assert spa_export.build is build and spa_export.BuildOptions is BuildOptions
    assert spa_export.pack_model is pack_model
    for name in spa_export.__all__:
        assert getattr(spa_export, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'pipeline_build'"):
        spa_export.pipeline_build  # noqa: B018
