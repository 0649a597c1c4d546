"""A package built under one transformers, asked the same questions under another.

``python -m tests.compat.probe OUT`` (run with the main venv's python, transformers 5) writes bases and
adapters exactly as transformers 5 / peft save them (not normalised), builds a package from them with
``lora_endpoint.packaging build`` into ``OUT/package``, serves it the way the local endpoint does (the package's
own ``model.py``, DJL's init call, DJL Inputs, its async mode) and records every answer in ``OUT/expected.json``. The
compat tier (transformers 4.x) serves the same package with :func:`ask` and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# RoPE that transformers 4.x would silently replace by its defaults if the package kept 5.x's spelling.
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}
ROPE_THETA = 500000.0
CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant]"
GREEDY = {"max_new_tokens": 12, "do_sample": False, "details": True}
# (request body, extra headers); generate per adapter, a batch, chat through an adapter's own tokenizer, a stream.
REQUESTS: list[tuple[dict[str, Any], dict[str, str]]] = [
    ({"inputs": "The quick brown fox", "parameters": GREEDY}, {}),
    ({"inputs": "The quick brown fox", "parameters": GREEDY, "adapters": "alpha"}, {}),
    ({"inputs": "Question: what is the capital of France? Answer:", "parameters": GREEDY}, {
        "X-Amzn-SageMaker-Adapter-Identifier": "beta"}),
    ({"inputs": ["Hello world", "A LoRA adapter"], "parameters": GREEDY, "adapters": ["alpha", "chatty"]}, {}),
    ({"model": "chatty", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "temperature": 0}, {}),
    ({"inputs": "SageMaker endpoints", "parameters": {"max_new_tokens": 6, "do_sample": False}, "stream": True}, {}),
]
# Top-level fields of a chat completion that differ on every call.
VOLATILE = frozenset({"id", "created", "system_fingerprint"})


def make_sources(root: Path) -> tuple[Path, dict[str, Path]]:
    """A base (llama3 RoPE) and adapters alpha, beta, chatty (with its own tokenizer), as the libraries save them."""
    from scripts.tiny_model import TinyModelConfig, build_lora_adapter, build_tiny_model, build_tokenizer

    base = build_tiny_model(root / "base", TinyModelConfig(rope_theta=ROPE_THETA, rope_scaling=ROPE), portable=False)
    adapters = {name: build_lora_adapter(base, root / name, seed=seed, scale=4.0, portable=False)
                for name, seed in (("alpha", 1), ("beta", 2), ("chatty", 3))}
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(adapters["chatty"])
    return base, adapters


def build_package(root: Path) -> Path:
    """Sources under ``root/src``, the package (a tree) at ``root/package``."""
    from lora_endpoint.packaging import BuildOptions, build

    base, adapters = make_sources(root / "src")
    options = BuildOptions(base_model=str(base), adapters=tuple(adapters.items()), output=root / "package",
                           format="dir", progress=False)
    return build(options).path


def _decode(body: bytes) -> Any:
    text = body.decode("utf-8")
    try:
        data = json.loads(text)
    except ValueError:  # JSON lines (a stream)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return {k: v for k, v in data.items() if k not in VOLATILE} if isinstance(data, dict) else data


def mismatches(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where two answers differ: exactly, except floats (log-probs), which may differ in the 4th decimal."""
    if isinstance(expected, float) and isinstance(actual, float):
        return [] if abs(expected - actual) <= 2e-3 else [f"{path}: {expected} != {actual}"]
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(expected)} != {sorted(actual)}"]
        return [m for k in expected for m in mismatches(expected[k], actual[k], f"{path}.{k}")]
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        pairs = enumerate(zip(expected, actual, strict=True))
        return [m for i, (e, a) in pairs for m in mismatches(e, a, f"{path}[{i}]")]
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]


def ask(package: Path) -> dict[str, Any]:
    """Serve ``package`` like the local endpoint (its own model.py, in DJL's async mode as the package
    says) and answer every request in ``REQUESTS``."""
    import asyncio

    import transformers

    from lora_endpoint.local import async_frontend, djl_io
    from lora_endpoint.local.package import ServedModel, resolve
    from lora_endpoint.local.streaming import pump_answer

    served = ServedModel.from_spec(resolve(package))
    served.load()

    async def answer_all() -> list[dict[str, Any]]:
        answers = []
        for body, headers in REQUESTS:
            call = djl_io.Call.from_http({"Content-Type": "application/json", **headers}, json.dumps(body).encode(),
                                         model_dir=served.model_dir)
            answer = await async_frontend.answer(served, call)
            raw = b"".join([c async for c in pump_answer(answer)]) if answer.stream is not None else answer.body
            answers.append({"status": answer.status, "body": _decode(raw)})
        return answers

    return {"transformers": transformers.__version__, "answers": asyncio.run(answer_all())}


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    package = build_package(out)
    (out / "expected.json").write_text(json.dumps(ask(package), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
