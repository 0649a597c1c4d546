"""Adapters at run time: registered through DJL's calls, refused when broken, held, evicted, unregistered."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.errors import (
    AdapterConflict,
    AdapterRejected,
    HandlerError,
    ModelOverloaded,
    UnknownAdapter,
)
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler import entry
from lora_endpoint.handler.generate import GenerateRequest
from lora_endpoint.handler.generation import Row, generate
from lora_endpoint.handler.info import render as info
from lora_endpoint.handler.loading import LoadedModel, load_model
from lora_endpoint.handler.sampling import SamplingParams
from lora_endpoint.handler.service import run

PROMPT = "The quick brown fox"
GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)
NAMES = tuple(f"ad{i}" for i in range(6))


@pytest.fixture(scope="module")
def pool(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real adapters for the tiny base, outside any model dir (what an operator registers)."""
    from scripts.tiny_model import build_lora_adapter

    root = tmp_path_factory.mktemp("pool")
    for index, name in enumerate(NAMES):
        build_lora_adapter(tiny_model_dir / "base", root / name, seed=500 + index, scale=4.0)
    return root


@pytest.fixture(scope="module")
def expected(tiny_model_dir: Path, pool: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str | None, str]:
    """Each adapter's greedy answer when it is packaged (the start-up path), and the base's."""
    model_dir = tmp_path_factory.mktemp("packaged") / "pkg"
    shutil.copytree(tiny_model_dir / "base", model_dir / "base")
    for name in NAMES:
        shutil.copytree(pool / name, model_dir / "adapters" / name)
    lm = load_model(model_dir, HandlerSettings())
    ids = tuple(lm.tokenizer(PROMPT).input_ids)
    answers = {name: generate(lm, [Row(ids, name, GREEDY)])[0].token_ids for name in (None, *NAMES)}
    return {name: lm.tokenizer.decode(list(tokens), skip_special_tokens=True) for name, tokens in answers.items()}


def _base_only(tiny_model_dir: Path, tmp_path: Path, **settings: Any) -> LoadedModel:
    model_dir = tmp_path / "pkg"
    shutil.copytree(tiny_model_dir / "base", model_dir / "base")
    return load_model(model_dir, HandlerSettings(adapter_cache_dir=str(tmp_path / "cache"), **settings))


def _answer(lm: LoadedModel, adapter: str | None) -> str:
    request = GenerateRequest(inputs=(PROMPT,), adapters=(adapter,), params=GREEDY)
    answer = run(lm, [request])[0]
    if isinstance(answer, HandlerError):
        raise answer
    return str(answer["generated_text"])


def _djl_input(djl: Any, **properties: str) -> Any:
    options = {k: properties.pop(k) for k in ("preload", "pin") if k in properties}
    return djl.Input(properties, [(k, v.encode()) for k, v in options.items()])


def _decoded(output: Any) -> dict[str, Any]:
    """An async-mode Output's record as DJL's frontend reads it (``code`` as an int when there is one)."""
    from djl_python.outputs import decode_record

    record: dict[str, Any] = decode_record(output.content[0][1])
    if "code" in record:
        record["code"] = int(record["code"])
    return record


def test_registered_through_djl_answers_as_if_packaged_and_unregistered_is_404(
    tiny_model_dir: Path, pool: Path, expected: dict[str | None, str], tmp_path: Path, djl: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an endpoint serving the base only
    lm = _base_only(tiny_model_dir, tmp_path)
    monkeypatch.setattr(entry._runtime, "model", lm)
    # WHEN DJL registers an adapter as its PyAdapter does (properties, options as content entries)
    out = asyncio.run(entry.register_adapter(_djl_input(djl, name="ad0", src=str(pool / "ad0"), preload="true",
                                                        pin="false")))
    record = _decoded(out)
    assert "code" not in record, record
    answer = json.loads(record["data"])
    assert answer["message"] == "Adapter ad0 registered" and answer["adapter"]["origin"] == "registered"
    assert str(pool) not in record["data"]  # no local paths in answers
    # THEN it answers exactly as the packaged adapter does, the base is unchanged, and info lists it
    assert _answer(lm, "ad0") == expected["ad0"]
    assert _answer(lm, None) == expected[None]
    assert [a["name"] for a in info(lm)["adapters"]] == ["ad0"]
    # AND registering it again from the same src is a no-op; from another src a 409
    again = asyncio.run(entry.register_adapter(_djl_input(djl, name="ad0", src=str(pool / "ad0"))))
    assert "code" not in _decoded(again)
    conflict = _decoded(asyncio.run(entry.register_adapter(_djl_input(djl, name="ad0", src=str(pool / "ad1")))))
    assert conflict["code"] == 409 and conflict["error"].startswith("adapter_conflict: ")
    # WHEN it is unregistered THEN requests for it are the usual 404
    record = _decoded(asyncio.run(entry.unregister_adapter(djl.Input({"name": "ad0"}))))
    assert "code" not in record and json.loads(record["data"])["message"] == "Adapter ad0 unregistered"
    with pytest.raises(UnknownAdapter):
        _answer(lm, "ad0")
    assert info(lm)["adapters"] == [] and _answer(lm, None) == expected[None]
    again = _decoded(asyncio.run(entry.unregister_adapter(djl.Input({"name": "ad0"}))))
    assert again["code"] == 404


def test_the_sync_mode_calls_answer_plain_outputs(
    tiny_model_dir: Path, pool: Path, tmp_path: Path, djl: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lm = _base_only(tiny_model_dir, tmp_path)
    monkeypatch.setattr(entry._runtime, "model", lm)
    out = entry.register_adapter_sync(_djl_input(djl, name="ad1", src=str(pool / "ad1")))
    assert json.loads(out.content[0][1])["adapter"]["name"] == "ad1"
    bad = entry.register_adapter_sync(_djl_input(djl, name="ad2", src=str(pool / "nope")))
    assert bad.code == 400 and json.loads(bad.content[0][1])["type"] == "invalid_adapter"
    assert entry.update_adapter_sync(_djl_input(djl, name="ad1", pin="true")).code in (None, 200)
    assert lm.registry.describe("ad1")["pinned"] is True
    gone = entry.unregister_adapter_sync(djl.Input({"name": "ad1"}))
    assert json.loads(gone.content[0][1])["adapter"]["name"] == "ad1"


def _edit(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


BAD_SOURCES = {
    "missing": (lambda f: shutil.rmtree(f), r"does not exist"),
    "not-an-adapter": (lambda f: (f / "adapter_config.json").unlink(), r"adapter_config.json is missing"),
    "wrong-base": (lambda f: _edit(f, base_model_name_or_path="meta-llama/Llama-3.1-70B"),
                   r"base_model_name_or_path.*contradicts"),
    "over-the-rank-cap": (lambda f: _edit(f, r=128), r"rank 128, above LORA_MAX_LORA_RANK 64"),
    "wrong-shapes": (lambda f: _edit(f, r=8), r"has shape \[4, 32\], expected \[8, 32\]"),
    "missing-module": (lambda f: _edit(f, target_modules=["q_proj", "no_such_proj"]), r"no_such_proj"),
    "nan-weights": (lambda f: _nan(f), r"non-finite"),
}


def _nan(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("kind", sorted(BAD_SOURCES))
def test_a_bad_src_is_refused_with_its_reason_and_nothing_is_left(
    kind: str, tiny_model_dir: Path, pool: Path, tmp_path: Path,
) -> None:
    lm = _base_only(tiny_model_dir, tmp_path)
    folder = tmp_path / "offered"
    shutil.copytree(pool / "ad2", folder)
    breaker, reason = BAD_SOURCES[kind]
    breaker(folder)
    with pytest.raises(AdapterRejected, match=reason) as err:
        lm.registry.register("offered", str(folder))
    # the src the caller gave may be quoted back; no other local path is
    assert err.value.status == 400 and str(tmp_path) not in err.value.message.replace(repr(str(folder)), "")
    assert lm.adapters == {} and lm.resident == () and lm.registry.names() == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 65, "base"])
def test_unsafe_names_are_refused(name: str, tiny_model_dir: Path, pool: Path, tmp_path: Path) -> None:
    lm = _base_only(tiny_model_dir, tmp_path)
    with pytest.raises(AdapterRejected, match="name"):
        lm.registry.register(name, str(pool / "ad0"))
    with pytest.raises(AdapterConflict, match="base model's name"):
        lm.registry.register(lm.base_name, str(pool / "ad0"))
    assert lm.registry.names() == []


def test_relative_and_foreign_srcs_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    lm = _base_only(tiny_model_dir, tmp_path)
    for src in ("adapters/x", "https://example.com/x", ""):
        with pytest.raises(AdapterRejected, match="src"):
            lm.registry.register("x", src)


def test_with_a_cap_of_two_every_adapter_still_answers_and_pins_and_held_ones_stay(
    tiny_model_dir: Path, pool: Path, expected: dict[str | None, str], tmp_path: Path,
) -> None:
    # GIVEN six adapters registered and room for two on the device (and two in host memory)
    lm = _base_only(tiny_model_dir, tmp_path, max_loras=2, max_cpu_loras=2)
    registry = lm.registry
    registry.register("ad0", str(pool / "ad0"), pin=True)
    for name in NAMES[1:]:
        registry.register(name, str(pool / name), preload=False)
    # WHEN each is asked for in turn, twice
    for name in [*NAMES, *reversed(NAMES)]:
        assert _answer(lm, name) == expected[name], name
        # THEN at most two are on the device, and the pinned one is always one of them
        assert len(lm.resident) <= 2 and "ad0" in lm.resident
    assert registry.stats.evictions >= 8
    assert sum(1 for e in registry._entries.values() if e.host is not None) <= 2
    # AND an adapter a request holds is never evicted: with ad1 held, the other slot is the pinned one
    lease = registry.acquire(["ad1"])
    try:
        with pytest.raises(ModelOverloaded, match="no device slot"):
            registry.acquire(["ad2"], deadline=0.0)
        assert set(lm.resident) == {"ad0", "ad1"}
    finally:
        lease.release()
    assert _answer(lm, "ad2") == expected["ad2"] and set(lm.resident) == {"ad0", "ad2"}
    # AND a third pin past the two slots is refused, and with both slots pinned another adapter is a 503 at
    # once (waiting would not free a slot)
    registry.update("ad2", pin=True)
    with pytest.raises(AdapterConflict, match="pinned"):
        registry.update("ad3", pin=True)
    with pytest.raises(HandlerError, match="hold pinned adapters") as err:
        _answer(lm, "ad3")
    assert err.value.status == 503
    assert _answer(lm, "ad2") == expected["ad2"]


def test_requests_and_registrations_at_once_never_fail_or_cross(
    tiny_model_dir: Path, pool: Path, expected: dict[str | None, str], tmp_path: Path,
) -> None:
    # GIVEN two served adapters and room for three
    lm = _base_only(tiny_model_dir, tmp_path, max_loras=3)
    lm.registry.register("ad0", str(pool / "ad0"))
    lm.registry.register("ad1", str(pool / "ad1"))
    answers: list[tuple[str | None, str]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def caller(adapter: str | None) -> None:
        while not stop.is_set():
            try:
                answers.append((adapter, _answer(lm, adapter)))
            except BaseException as err:
                failures.append(err)

    threads = [threading.Thread(target=caller, args=(a,)) for a in (None, "ad0", "ad1")]
    for thread in threads:
        thread.start()
    try:
        # WHEN other adapters come and go meanwhile (loads, evictions, unregistering)
        for _ in range(3):
            for name in NAMES[2:]:
                lm.registry.register(name, str(pool / name))
                assert _answer(lm, name) == expected[name]
            for name in NAMES[2:]:
                lm.registry.unregister(name)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    # THEN no request failed and every answer is its own adapter's
    assert not failures, failures[:3]
    assert len(answers) >= 6
    assert all(text == expected[adapter] for adapter, text in answers)


def test_unregister_waits_for_the_requests_that_hold_the_adapter(
    tiny_model_dir: Path, pool: Path, tmp_path: Path,
) -> None:
    lm = _base_only(tiny_model_dir, tmp_path)
    lm.registry.register("ad0", str(pool / "ad0"))
    lease = lm.registry.acquire(["ad0"])
    done = threading.Event()
    worker = threading.Thread(target=lambda: (lm.registry.unregister("ad0"), done.set()))
    worker.start()
    assert not done.wait(0.3)  # still held
    with pytest.raises(UnknownAdapter):  # but no longer served to new requests
        _answer(lm, "ad0")
    assert "ad0" in lm.resident
    lease.release()
    assert done.wait(10)
    worker.join()
    assert "ad0" not in lm.resident and lm.registry.names() == []
    # past its timeout unregister answers 503 and the adapter goes when its last request ends
    lm.registry.register("ad1", str(pool / "ad1"))
    lease = lm.registry.acquire(["ad1"])
    with pytest.raises(HandlerError, match="freed when they end") as err:
        lm.registry.unregister("ad1", timeout_s=0.05)
    assert err.value.status == 503
    lease.release()
    for _ in range(100):
        if "ad1" not in lm.registry._entries:
            break
        threading.Event().wait(0.05)
    assert "ad1" not in lm.registry._entries and "ad1" not in lm.resident


def test_just_in_time_adapters_load_on_first_use_inside_the_prefix_only(
    tiny_model_dir: Path, pool: Path, expected: dict[str | None, str], tmp_path: Path,
) -> None:
    # GIVEN a prefix holding ad3 (and a secret beside the prefix)
    prefix = tmp_path / "store" / "adapters"
    shutil.copytree(pool / "ad3", prefix / "ad3")
    shutil.copytree(pool / "ad4", tmp_path / "store" / "secret")
    lm = _base_only(tiny_model_dir, tmp_path, adapter_jit_prefix=str(prefix))
    # WHEN a request names ad3 THEN it is loaded and answers as the packaged one
    assert _answer(lm, "ad3") == expected["ad3"]
    assert lm.registry.describe("ad3")["origin"] == "jit" and lm.registry.stats.jit_loads == 1
    # AND a name that is not there, or that would leave the prefix, is a 404 that loads nothing
    for name in ("ad5", "../secret", "..", "a/../../secret"):
        with pytest.raises(UnknownAdapter):
            _answer(lm, name)
    assert lm.registry.names() == ["ad3"]


def test_an_s3_src_is_downloaded_once_and_removed_with_the_adapter(
    tiny_model_dir: Path, pool: Path, expected: dict[str | None, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="adapters")
        for path in (pool / "ad4").iterdir():
            s3.upload_file(str(path), "adapters", f"team/ad4/{path.name}")
        lm = _base_only(tiny_model_dir, tmp_path)
        lm.registry.register("ad4", "s3://adapters/team/ad4/")
        assert _answer(lm, "ad4") == expected["ad4"]
        assert any((tmp_path / "cache").iterdir())
        with pytest.raises(AdapterRejected, match="no objects under"):
            lm.registry.register("ad5", "s3://adapters/team/ad5/")
        lm.registry.unregister("ad4")
        assert not any((tmp_path / "cache").iterdir())
        # just in time from an S3 prefix: first use downloads it; a missing name is a 404
        jit = _base_only(tiny_model_dir, tmp_path / "jit", adapter_jit_prefix="s3://adapters/team/")
        assert _answer(jit, "ad4") == expected["ad4"] and jit.registry.describe("ad4")["origin"] == "jit"
        with pytest.raises(UnknownAdapter, match="not under the just-in-time prefix"):
            _answer(jit, "ad9")


def _keyed(lm: LoadedModel, name: str) -> list[dict[str, Any]]:
    """Every LoRA layer's per-adapter entries for ``name``: plain values, and module types and weights."""
    import torch

    found = []
    for module in lm.model.modules():
        if name not in getattr(module, "lora_A", {}):
            continue
        entries: dict[str, Any] = {k: v[name] for k, v in vars(module).items() if isinstance(v, dict) and name in v}
        for key, holder in module._modules.items():
            if hasattr(holder, "keys") and name in holder:
                sub = holder[name]
                weight = getattr(sub, "weight", None)
                entries[key] = (type(sub).__name__, None if weight is None else weight.detach().clone(),
                                getattr(sub, "bias", None))
        found.append(entries)
    assert found and all(isinstance(e["lora_A"][1], torch.Tensor) for e in found)
    return found


def test_the_fast_attach_leaves_what_peft_leaves_and_serves_the_same_tokens(
    tiny_model_dir: Path, pool: Path, expected: dict[str | None, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from lora_endpoint.handler import attach
    from lora_endpoint.handler.engine import engine_for

    # GIVEN one model where ad1 comes in through the fast path (engine running, ad0 resident) ...
    used: list[str] = []
    real_insert = attach.FastAttach.insert
    monkeypatch.setattr(attach.FastAttach, "insert", lambda self: (used.append(self.name), real_insert(self))[1])
    fast = _base_only(tiny_model_dir, tmp_path / "fast")
    fast.registry.register("ad0", str(pool / "ad0"))
    engine_for(fast)
    _answer(fast, "ad0")
    fast.registry.register("ad1", str(pool / "ad1"))
    assert _answer(fast, "ad1") == expected["ad1"]
    assert used == ["ad1"]
    # ... and one where peft's add_adapter loads it (no engine yet)
    slow = _base_only(tiny_model_dir, tmp_path / "slow")
    slow.registry.register("ad0", str(pool / "ad0"))
    slow.registry.register("ad1", str(pool / "ad1"))
    slow.registry.acquire(["ad0", "ad1"]).release()
    assert used == ["ad1"]
    # THEN every layer holds the same entries for it (values, module types, weights)
    for got, want in zip(_keyed(fast, "ad1"), _keyed(slow, "ad1"), strict=True):
        assert set(got) == set(want)
        for key in want:
            if isinstance(want[key], tuple):
                assert got[key][0] == want[key][0] and got[key][2] is None and want[key][2] is None
                assert (got[key][1] is None) == (want[key][1] is None)
                if want[key][1] is not None:
                    assert torch.equal(got[key][1], want[key][1]), key
            else:
                assert got[key] == want[key], key
    # AND peft's own mixed-batch path (adapter_names) gives the same logits on both
    ids = torch.tensor([fast.tokenizer(PROMPT).input_ids] * 3)
    names = ["ad1", "ad0", "__base__"]
    with torch.inference_mode():
        fast.engine.stop()
        fast.engine = None
        out_fast = fast.model(input_ids=ids, adapter_names=names).logits
        out_slow = slow.model(input_ids=ids, adapter_names=names).logits
    assert torch.allclose(out_fast, out_slow, atol=1e-5)
    # AND unregistering it leaves nothing of it in the layers
    fast.registry.unregister("ad1")
    assert not any("ad1" in getattr(m, "lora_A", {}) for m in fast.model.modules())


def test_registering_computes_with_torch_only_on_threads_that_end(
    tiny_model_dir: Path, pool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # torch's thread pool lives as long as the thread that made it: a pool left on a server's worker
    # thread would slow every engine step after it (lora_endpoint/handler/loading.py)
    import lora_endpoint.handler.registry as registry_module
    from lora_endpoint.handler import attach

    seen: list[str] = []
    for module, name in ((registry_module, "check_adapter_weights"), (attach, "host_copy")):
        real = getattr(module, name)

        def spy(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.append(threading.current_thread().name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    lm = _base_only(tiny_model_dir, tmp_path)
    lm.registry.register("ad0", str(pool / "ad0"))
    assert sorted(seen) == ["lora-check", "lora-read"]
    assert not {"lora-check", "lora-read"} & {t.name for t in threading.enumerate()}
