"""Finding and loading the base model: in the dir, by path, or from an S3 prefix (moto)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_endpoint.contract.errors import ModelLoadError
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler.loading import load_model, resolve_base_model


def test_base_is_found_in_the_model_dir(tiny_model_dir: Path) -> None:
    assert resolve_base_model(tiny_model_dir, HandlerSettings()) == str(tiny_model_dir / "base")
    assert resolve_base_model(tiny_model_dir / "base", HandlerSettings()) == str(tiny_model_dir / "base")
    assert resolve_base_model("/nowhere", HandlerSettings(base_model="org/model-7b")) == "org/model-7b"


def test_missing_base_is_a_clear_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no base model in"):
        resolve_base_model(tmp_path, HandlerSettings())
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_base_model(tmp_path, HandlerSettings(base_model="/no/such/folder"))


def test_merge_needs_exactly_one_adapter(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="exactly one adapter, found 2"):
        load_model(tiny_model_dir, HandlerSettings(merge=True))


def test_base_model_from_s3_prefix(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        # GIVEN the base model uploaded under a prefix, and a model dir that holds only the adapters
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        for path in (tiny_model_dir / "base").iterdir():
            s3.upload_file(str(path), "models", f"bases/tiny/{path.name}")
        settings = HandlerSettings(base_model="s3://models/bases/tiny/", base_model_cache=str(tmp_path / "cache"))
        # WHEN the handler loads THEN it downloads the prefix once and serves base + adapters
        lm = load_model(tiny_model_dir, settings)
        assert sorted(lm.adapters) == ["alpha", "beta"]
        assert (tmp_path / "cache" / "config.json").is_file()
        assert lm.base_name == "tiny"  # callers see the name, not the bucket
        s3.delete_object(Bucket="models", Key="bases/tiny/config.json")  # a second start uses the cache
        assert resolve_base_model(tiny_model_dir, settings) == str(tmp_path / "cache")


def test_loading_runs_on_a_thread_that_ends_with_it(tiny_model_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    from lora_endpoint.contract.settings import HandlerSettings
    from lora_endpoint.handler import attach, loading

    seen: list[str] = []
    real_attach = attach.attach

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread().name)
        return real_attach(*args, **kwargs)

    monkeypatch.setattr(attach, "attach", spy)
    lm = loading.load_model(tiny_model_dir, HandlerSettings.from_env({}))
    # torch's OpenMP pool lives as long as the thread that made it: none is left beside the engine's
    assert len(seen) == len(lm.adapters) > 0 and set(seen) == {"lora-attach"}
    assert not {"lora-load", "lora-attach"} & {t.name for t in threading.enumerate()}
    # and a failure is raised on the caller's thread, with its own type
    monkeypatch.setattr(loading, "resolve_base_model", lambda *a, **k: (_ for _ in ()).throw(ValueError("boom")))
    with pytest.raises(ValueError, match="boom"):
        loading.load_model(tiny_model_dir, HandlerSettings.from_env({}))
