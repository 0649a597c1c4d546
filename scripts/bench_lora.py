"""Micro-benchmark of mixed-adapter batches: peft's ``adapter_names`` vs the batched LoRA path.

Builds a Llama-shaped model (hidden 512, 6 layers, head dim 64, about 20M parameters) with four LoRA
adapters (r=16 on q/k/v/o), then times the model's forward passes for one batch of rows: a prefill of
``--prompt-tokens`` tokens per row and ``--new-tokens`` greedy decode steps, for

    a  one adapter, peft's plain path          d  one adapter, batched path
    b  four adapters mixed, peft adapter_names e  base only, peft's adapters disabled
    c  four adapters mixed, batched path       f  base only, batched path

The variants run in turns, ``--repeat`` rounds, and each figure is the median round (the box may be
shared: compare the ratios of one run). A script, not a test: it prints a table and asserts nothing.

    python scripts/bench_lora.py                 # CPU, float32 (about a minute on 2 cores)
    python scripts/bench_lora.py --device cuda   # the same on a GPU
    python scripts/bench_lora.py --quick         # tiny model, for a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lora_endpoint.contract.settings import HandlerSettings  # noqa: E402
from lora_endpoint.handler.loading import BASE_ADAPTER_NAME, LoadedModel, load_model  # noqa: E402
from lora_endpoint.handler.lora_batch import BatchedLora  # noqa: E402
from scripts.tiny_model import BENCH_CONFIG, TinyModelConfig, build_lora_adapter, build_tiny_model  # noqa: E402

QUICK = TinyModelConfig(hidden_size=64, intermediate_size=128, max_position_embeddings=512, initializer_range=0.02)
ADAPTERS = ("a0", "a1", "a2", "a3")
VARIANTS = {
    "a": "one adapter, peft plain path",
    "b": "4 adapters mixed, peft adapter_names",
    "c": "4 adapters mixed, batched path",
    "d": "one adapter, batched path",
    "e": "base only, peft (adapters disabled)",
    "f": "base only, batched path",
}
Routing = Callable[[], contextlib.AbstractContextManager[dict[str, Any]]]


def build(work: Path, config: TinyModelConfig, rank: int) -> Path:
    """A model dir in the handler's layout: ``base/`` and four adapters."""
    build_tiny_model(work / "base", config)
    for seed, name in enumerate(ADAPTERS):
        build_lora_adapter(
            work / "base", work / "adapters" / name, seed=seed, r=rank, alpha=2 * rank, scale=0.5,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        )
    return work


def routings(lm: LoadedModel, rows: int) -> dict[str, Routing]:
    """How each variant routes its rows, as a context manager giving the forward's extra kwargs."""
    model = lm.model
    mixed: list[str | None] = [ADAPTERS[i % len(ADAPTERS)] for i in range(rows)]
    batched = BatchedLora(model, ADAPTERS)
    if not batched.supported:
        raise SystemExit(f"batched LoRA is not supported here: {batched.reason}")

    @contextlib.contextmanager
    def peft_single() -> Iterator[dict[str, Any]]:
        model.set_adapter(ADAPTERS[0])
        yield {}

    @contextlib.contextmanager
    def peft_mixed() -> Iterator[dict[str, Any]]:
        yield {"adapter_names": [name or BASE_ADAPTER_NAME for name in mixed]}

    @contextlib.contextmanager
    def routed(adapters: list[str | None]) -> Iterator[dict[str, Any]]:
        with batched.routing(adapters):
            yield {}

    @contextlib.contextmanager
    def base() -> Iterator[dict[str, Any]]:
        with model.disable_adapter():
            yield {}

    return {
        "a": peft_single,
        "b": peft_mixed,
        "c": lambda: routed(mixed),
        "d": lambda: routed([ADAPTERS[0]] * rows),
        "e": base,
        "f": lambda: routed([None] * rows),
    }


def one_round(lm: LoadedModel, route: Routing, prompt: Any, new_tokens: int) -> tuple[float, float, list[list[int]]]:
    """Seconds of the prefill, seconds of the decode steps, and the greedy tokens."""
    import torch

    from lora_endpoint.handler.generation import _new_cache

    device = lm.device
    cache = _new_cache(lm)
    ids = prompt.to(device)
    out_tokens = []
    with torch.inference_mode():
        start = time.perf_counter()
        with route() as kwargs:
            out = lm.model(input_ids=ids, past_key_values=cache, use_cache=True, **kwargs)
        token = out.logits[:, -1, :].argmax(-1)
        _sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new_tokens):
            out_tokens.append(token)
            with route() as kwargs:
                out = lm.model(input_ids=token[:, None], past_key_values=out.past_key_values, use_cache=True, **kwargs)
            token = out.logits[:, -1, :].argmax(-1)
        _sync(device)
        decode = time.perf_counter() - start
    return prefill, decode, torch.stack(out_tokens, dim=1).tolist()


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(lm: LoadedModel, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """tokens/s of each variant: prefill (prompt tokens) and decode (new tokens), median of the rounds."""
    import torch

    torch.manual_seed(0)
    prompt = torch.randint(10, lm.model.config.vocab_size, (args.rows, args.prompt_tokens))
    routes = routings(lm, args.rows)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in routes}
    tokens: dict[str, list[list[int]]] = {}
    for round_ in range(args.repeat + 1):  # round 0 warms up
        for key, route in routes.items():
            prefill, decode, tokens[key] = one_round(lm, route, prompt, args.new_tokens)
            if round_:
                times[key].append((prefill, decode))
    if tokens["b"] != tokens["c"] or tokens["a"] != tokens["d"] or tokens["e"] != tokens["f"]:
        print("warning: the batched path's greedy tokens differ from peft's", file=sys.stderr)
    return {
        key: {
            "prefill": args.rows * args.prompt_tokens / statistics.median(p for p, _ in runs),
            "decode": args.rows * args.new_tokens / statistics.median(d for _, d in runs),
        }
        for key, runs in times.items()
    }


def render(figures: dict[str, dict[str, float]]) -> str:
    ref = figures["a"]
    lines = [
        "| variant | decode tok/s | vs a | prefill tok/s | vs a |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in VARIANTS.items():
        f = figures[key]
        lines.append(
            f"| {key}: {label} | {f['decode']:.0f} | {f['decode'] / ref['decode']:.2f}x "
            f"| {f['prefill']:.0f} | {f['prefill'] / ref['prefill']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--quick", action="store_true", help="tiny model and counts (smoke run)")
    parser.add_argument("--rows", type=int, default=16, help="rows in the batch (default 16)")
    parser.add_argument("--prompt-tokens", type=int, default=16, help="prompt tokens per row (default 16)")
    parser.add_argument("--new-tokens", type=int, default=32, help="decode steps (default 32)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the four adapters (default 16)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds of every variant (default 5)")
    args = parser.parse_args(argv)
    for name in ("rows", "prompt_tokens", "new_tokens", "rank", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.quick:
        args.prompt_tokens, args.new_tokens, args.repeat = min(args.prompt_tokens, 4), min(args.new_tokens, 3), 1

    settings = HandlerSettings(device=args.device, dtype=args.dtype)
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        lm = load_model(build(Path(tmp), QUICK if args.quick else BENCH_CONFIG, args.rank), settings)
        params = sum(p.numel() for n, p in lm.model.named_parameters() if "lora_" not in n)
        figures = measure(lm, args)
    print(
        f"{params / 1e6:.1f}M-parameter Llama, 4 adapters r={args.rank} on q/k/v/o, {args.device} {args.dtype}, "
        f"{args.rows} rows, {args.prompt_tokens} prompt tokens, {args.new_tokens} decode steps, "
        f"median of {args.repeat} rounds"
    )
    print(render(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
