"""Synthesis helpers: every test builds the stack exactly as ``cdk/app.py`` does, from a context mapping."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template

from cdk.app import FEATURE_FLAGS, build
from cdk.settings import DeploymentSettings
from cdk.stack import LoraEndpointStack


def make_stack(context: dict[str, Any] | None = None, *, nag: bool = False,
               outdir: str | None = None) -> tuple[App, LoraEndpointStack]:
    """An app with feature flags + ``context``, and the stack built from it."""
    app = App(context={**FEATURE_FLAGS, **(context or {})}, outdir=outdir)
    return app, build(app, DeploymentSettings.from_context(app), nag=nag)


def synth(context: dict[str, Any] | None = None) -> Template:
    """The synthesized template for ``context`` (no cdk-nag: see test_nag.py)."""
    return Template.from_stack(make_stack(context)[1])


def resources(template: Template, type_name: str) -> dict[str, dict[str, Any]]:
    """All resources of one type, by logical id."""
    return {key: dict(value) for key, value in template.find_resources(type_name).items()}


def only(template: Template, type_name: str) -> dict[str, Any]:
    """The properties of the single resource of ``type_name``."""
    found = resources(template, type_name)
    assert len(found) == 1, f"expected one {type_name}, found {len(found)}"
    return next(iter(found.values()))["Properties"]


@pytest.fixture(scope="package")
def default_template() -> Template:
    """The default deployment (no context), synthesized once for the whole tests/cdk package."""
    return synth()
