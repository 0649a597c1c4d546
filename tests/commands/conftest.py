"""The packaging tests' tiny model dir and fake AWS credentials, for the commands that build a package."""

from tests.packaging.conftest import aws_env, tiny_src

__all__ = ["aws_env", "tiny_src"]
