"""The README and docs/ stay true: their links resolve, and every ``lora-endpoint`` command they show is a real
command whose flags its parser accepts (each example is parsed by the command itself, then stopped)."""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint import cli
from tests.docs import DOCS, README, ROOT

PAGES = [README, *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh)\n(.*?)```", re.S)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_anchor(m) for m in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def _links() -> Iterator[tuple[Path, str]]:
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if not target.startswith(("http://", "https://", "mailto:")):
                yield page, target


@pytest.mark.parametrize(("page", "target"), list(_links()), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_every_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    assert destination.exists(), f"{page.name}: {target} does not exist"
    if anchor:
        assert anchor in _anchors(destination), f"{page.name}: no heading for #{anchor} in {destination.name}"


def test_the_readme_links_every_reference_page() -> None:
    readme = README.read_text()
    for page in DOCS.glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def test_the_quick_start_is_the_two_make_commands() -> None:
    quick = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].strip() for line in FENCE.search(quick).group(1).splitlines()]  # type: ignore[union-attr]
    assert commands == ["make demo", "make test"]


def _command_lines() -> Iterator[tuple[str, list[str]]]:
    """Every ``lora-endpoint ...`` invocation in a shell block of the README and docs/ (continuations joined,
    comments, ``&&`` chains and a trailing ``&`` handled)."""
    for page in PAGES:
        for block in FENCE.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                tokens = shlex.split(line, comments=True)
                segment: list[str] = []
                for token in [*tokens, "&&"]:
                    if token in ("&&", "&", "||", ";", "|"):
                        if segment[:1] == ["lora-endpoint"]:
                            yield f"{page.name}: {' '.join(segment)[:90]}", segment[1:]
                        segment = []
                    else:
                        segment.append(token)


EXAMPLES = list(_command_lines())


class Parsed(Exception):
    """Raised right after a command's parser accepted the example: nothing runs."""


def test_the_docs_show_the_commands() -> None:
    shown = {args[0] for _where, args in EXAMPLES if args}
    assert {"package", "serve", "invoke", "smoke", "load", "train", "deploy", "adapters", "playground"} <= shown


@pytest.mark.parametrize("args", [args for _where, args in EXAMPLES], ids=[where for where, _args in EXAMPLES])
def test_every_documented_command_parses(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert args and args[0] in cli.COMMANDS, f"lora-endpoint {args[:1]} is not a command"
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        real(self, *a, **k)  # argparse's own errors are SystemExit(2): the example is wrong
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.chdir(ROOT)
    with pytest.raises(Parsed):
        cli.main(args)
