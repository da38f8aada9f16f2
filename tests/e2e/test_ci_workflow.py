"""The GitHub Actions example (recipes/ci/release.yml) works as written.

The workflow's own ``run:`` commands are taken from the file and run here:
each matrix job's build into its part, the artifact transfer (a copy that
keeps hidden files, as ``include-hidden-files: true`` makes the upload keep
them), then the assemble job's command. The package must equal the one a
single build of the recipe makes.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from bad_inputs import REPO, invoke

WORKFLOW = REPO / "recipes" / "ci" / "release.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _run_lines(job: dict) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _spa_export(line: str, env: dict[str, str], shard: int | None = None) -> list[str]:
    line = line.replace("${{ matrix.shard }}", str(shard)) if shard is not None else line
    shards = str(env["SHARDS"])
    line = line.replace("${{ env.SHARDS }}", shards).replace("$RECIPE", env["RECIPE"]).replace("$SHARDS", shards)
    line = line.replace("$ROUND_TO", str(env["ROUND_TO"]))
    words = shlex.split(line)
    assert words[0] == "spa-export", line
    return words[1:]


def test_the_workflow_is_consistent(workflow: dict) -> None:
    env = workflow["env"]
    shards = workflow["jobs"]["build"]["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, int(env["SHARDS"]) + 1))
    assert (REPO / env["RECIPE"]).is_file()
    assert workflow["jobs"]["assemble"]["needs"] == "build"
    uploads = [s for job in workflow["jobs"].values() for s in job["steps"]
               if s.get("uses", "").startswith("actions/upload-artifact")]
    assert len(uploads) == 2 and all(s["with"]["include-hidden-files"] is True for s in uploads)
    for job in workflow["jobs"].values():
        installs = [line for line in _run_lines(job) if line.startswith("pip install")]
        assert installs == ["pip install -c recipes/ci/constraints.txt -e '.[build,report]'"]
    assert (REPO / "recipes" / "ci" / "constraints.txt").is_file()


def test_the_workflows_commands_build_the_package(workflow: dict, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = workflow["env"]
    monkeypatch.chdir(REPO)
    builds = [line for line in _run_lines(workflow["jobs"]["build"]) if line.startswith("spa-export")]
    assemble = [line for line in _run_lines(workflow["jobs"]["assemble"]) if line.startswith("spa-export")]
    assert len(builds) == 1 and len(assemble) == 1
    parts = tmp_path / "parts"
    for shard in workflow["jobs"]["build"]["strategy"]["matrix"]["shard"]:
        job = tmp_path / f"job-{shard}"              # each job runs in a checkout of its own
        args = _spa_export(builds[0], env, shard)
        out = args.index("--out") + 1
        args[out] = str(job / args[out])
        result = invoke([*args, "--bench", "none", "-q"])
        assert result.exit_code == 0, result.stderr
        shutil.copytree(job / f"part-{shard}", parts / f"part-{shard}")   # upload, then download
    args = _spa_export(assemble[0], env)
    assert args == ["assemble", "parts/part-*", "--out", "package"]     # the shell expands the glob
    words = ["assemble", *[str(p) for p in sorted(parts.iterdir())], "--out", str(tmp_path / "package")]
    result = invoke(words)
    assert result.exit_code == 0, result.stderr
    single = tmp_path / "single"
    assert invoke(["build", env["RECIPE"], "--out", str(single), "--round-to", str(env["ROUND_TO"]),
                   "--bench", "none", "-q"]).exit_code == 0
    a = json.loads((tmp_path / "package" / "manifest.json").read_text())
    b = json.loads((single / "manifest.json").read_text())
    assert a["content_sha256"] == b["content_sha256"]
