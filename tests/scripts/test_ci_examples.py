"""The workflow users copy for their adapter repositories, and the contributors' pre-commit hooks, name
commands, flags, context keys and files that exist."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "examples" / "ci" / "adapter-repo.yml"


def _steps() -> dict[str, dict[str, object]]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    return {step.get("name", step.get("uses", "")): step for step in job["steps"]}


def test_the_workflow_runs_on_pull_requests_with_read_only_permissions() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in workflow[True] and workflow["permissions"] == {"contents": "read"}  # yaml: on -> True


def test_the_packaging_step_uses_flags_the_packager_has() -> None:
    from lora_endpoint.packaging.cli import parser

    (run,) = [str(s["run"]) for name, s in _steps().items() if name.startswith("Validate the adapters")]
    line = " ".join(part.rstrip("\\").strip() for part in run.splitlines() if "lora-endpoint package build" in part or
                    part.strip().startswith("--"))
    argv = shlex.split(line.replace('"${args[@]}"', "--adapter a=adapters/a/"))
    argv = [re.sub(r"\$\{\{ vars\.\w+ \}\}", "org/base", a) for a in argv]
    args = parser().parse_args(argv[argv.index("build"):])
    assert args.output == Path("build/model.tar.gz") and args.progress is False and args.adapters


def test_the_synth_step_passes_only_context_keys_the_app_reads() -> None:
    from cdk.settings import known_keys

    (step,) = [s for name, s in _steps().items() if name.startswith("Synthesize")]
    context = json.loads(step["env"]["CDK_CONTEXT_JSON"])  # type: ignore[index]
    assert set(context) <= known_keys() and step["run"] == ".venv/bin/python -m cdk.app"


def test_the_pre_commit_hooks_run_tools_and_files_that_exist() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert {h["id"] for h in hooks} >= {"ruff", "mypy"}
    for hook in hooks:
        words = shlex.split(hook["entry"])
        assert words[0] == ".venv/bin/python" and hook["language"] == "system"
        for word in words:
            if word.startswith("tests/"):
                assert (ROOT / word).is_file(), word
