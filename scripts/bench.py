"""Serving benchmark: handler overhead, batching throughput, mixed adapters, merged weights, cold start.

Builds a small Llama-shaped model locally (big enough that matrix work dominates Python overhead on
a 2-core CPU), measures every figure side by side in one run, prints a table and writes it to
docs/benchmarks.md with the command and the machine. A script, not a test: it asserts nothing.

    python scripts/bench.py                 # CPU, default sizes (a few minutes on 2 cores)
    python scripts/bench.py --device cuda   # the same on a GPU
    python scripts/bench.py --quick         # smaller, for a smoke run
    python scripts/bench.py serving --help  # the side-by-side run against vLLM's OpenAI server
    python scripts/bench.py adapters --help  # adapters registered, loaded and evicted at run time
    python scripts/bench.py telemetry --help  # what the metrics and request records cost (on vs off)
    .venv-vllm/bin/python scripts/bench.py engines --help  # the handler on vLLM beside its own engine
                                                          # (also: bench.py --engine vllm)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lora_endpoint.contract.settings import HandlerSettings  # noqa: E402
from lora_endpoint.handler.loading import LoadedModel, load_model  # noqa: E402
from lora_endpoint.handler.service import run  # noqa: E402
from scripts.bench_clients import BASE, OURS, drive, plan  # noqa: E402
from scripts.bench_common import (  # noqa: E402
    PROMPTS,
    bench_mixed,
    machine,
    on_fresh_thread,
    positive_int,
    positive_list,
    release,
    request,
    timed,
    tokens_of,
    write_doc,
)
from scripts.bench_servers import ServerFailed, free_port, ours_command, ours_env, serving  # noqa: E402
from scripts.tiny_model import BENCH_CONFIG, TinyModelConfig, build_lora_adapter, build_tiny_model  # noqa: E402

BENCH_BEGIN, BENCH_END = "<!-- bench:serving -->", "<!-- /bench:serving -->"


def build_models(work: Path, config: TinyModelConfig, adapters: int) -> dict[str, Path]:
    """base-only, four-adapter and one-adapter model dirs over one shared base."""
    base = build_tiny_model(work / "base", config)
    dirs = {"base": work / "m-base", "multi": work / "m-multi", "single": work / "m-single"}
    for path in dirs.values():
        (path / "adapters").mkdir(parents=True)
        (path / "base").symlink_to(base)  # one base on disk, found where a package keeps it
    for index in range(adapters):
        build_lora_adapter(
            base,
            dirs["multi"] / "adapters" / f"a{index}",
            seed=index,
            r=16,
            alpha=32,
            scale=0.5,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        )
    build_lora_adapter(
        base,
        dirs["single"] / "adapters" / "a0",
        seed=0,
        r=16,
        alpha=32,
        scale=0.5,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    dirs["base_path"] = base
    return dirs


def bench_overhead(base_lm: LoadedModel, new_tokens: int, repeat: int) -> dict[str, float]:
    """The handler's path (``service.run``, what predict_fn and handle() call) vs a bare ``model.generate``
    on the same inputs, greedy, batch 1. Compared per generated token: either side may stop at EOS."""
    import torch

    prompt = PROMPTS[0]
    ids = base_lm.tokenizer(prompt, return_tensors="pt").input_ids.to(base_lm.device)

    def bare() -> int:
        with torch.inference_mode():
            out = base_lm.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=base_lm.tokenizer.pad_token_id,
            )
        return int(out.shape[1] - ids.shape[1])

    bare_s, bare_tokens = on_fresh_thread(lambda: timed(bare, repeat))
    handler_s, answers = timed(lambda: run(base_lm, [request([prompt], [None], new_tokens)]), repeat)
    handler_tokens = tokens_of(answers)
    per_bare, per_handler = bare_s / bare_tokens, handler_s / handler_tokens
    return {
        "bare_generate_s": bare_s,
        "handler_s": handler_s,
        "bare_tokens": bare_tokens,
        "handler_tokens": handler_tokens,
        "overhead_pct": 100 * (per_handler / per_bare - 1),
    }


def bench_merged(dirs: dict[str, Path], settings: HandlerSettings, new_tokens: int, repeat: int) -> dict[str, float]:
    """Latency of one request: base model, adapter unmerged (peft), adapter merged into the weights."""
    out: dict[str, float] = {}
    for label, path, merge, adapter in (
        ("base", dirs["base"], False, None),
        ("unmerged", dirs["single"], False, "a0"),
        ("merged", dirs["single"], True, None),
    ):
        lm = load_model(path, dataclasses.replace(settings, merge=merge))
        one = request([PROMPTS[1]], [adapter], new_tokens)
        out[f"{label}_s"], _ = timed(functools.partial(run, lm, [one]), repeat)
        release(lm)
    out["merged_vs_base_pct"] = 100 * (out["merged_s"] / out["base_s"] - 1)
    out["unmerged_vs_base_pct"] = 100 * (out["unmerged_s"] / out["base_s"] - 1)
    return out


def bench_cold_start(dirs: dict[str, Path], settings: HandlerSettings) -> dict[str, float]:
    """model_fn-equivalent load (base + 4 adapters) vs raw from_pretrained + PeftModel loading."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_endpoint.handler.loading import dtype_kwarg

    base_path = str(dirs["base_path"])
    start = time.perf_counter()
    lm = load_model(dirs["multi"], settings)
    handler_s = time.perf_counter() - start
    device = lm.device
    release(lm)
    start = time.perf_counter()
    AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(
        base_path, **dtype_kwarg(torch.float32 if device.type == "cpu" else torch.bfloat16)
    ).to(device)
    names = sorted(p.name for p in (dirs["multi"] / "adapters").iterdir())
    peft_model = PeftModel.from_pretrained(model, str(dirs["multi"] / "adapters" / names[0]), adapter_name=names[0])
    for name in names[1:]:
        peft_model.load_adapter(str(dirs["multi"] / "adapters" / name), adapter_name=name)
    raw_s = time.perf_counter() - start
    return {"model_fn_s": handler_s, "raw_load_s": raw_s}


def bench_endpoint(
    model_dir: Path,
    device: str,
    max_new_tokens: int,
    clients: list[int],
    per_client: int,
    new_tokens: int,
    max_rows: int,
) -> dict[str, Any]:
    """Throughput and latency through the local endpoint at several client counts: the engine running one
    request at a time (``LORA_MAX_BATCH_ROWS=1``, the sequential baseline) vs up to ``max_rows`` rows."""
    results: dict[str, Any] = {}
    for label, rows in (("sequential", 1), ("batched", max_rows)):
        port = free_port()
        env = ours_env(device, max_new_tokens=max_new_tokens, max_batch_rows=rows)
        try:
            with serving(ours_command(model_dir, port), port=port, log=model_dir.parent / f"serve-{label}.log",
                         env=env, timeout_s=300) as server:
                _drive(server.url, 1, 1, new_tokens)  # untimed: first-request costs (kernels for new shapes)
                for count in clients if rows > 1 else [1]:
                    results[f"{label}_{count}"] = _drive(
                        server.url, count, per_client if count > 1 else per_client * 2, new_tokens
                    )
        except ServerFailed as err:
            return {"skipped": str(err)}
    return results


def _drive(url: str, clients: int, per_client: int, new_tokens: int) -> dict[str, Any]:
    """``clients`` clients at once on the base model, each sending ``per_client`` requests in a row."""
    return drive(url, OURS, plan(clients, per_client, PROMPTS, [BASE]), new_tokens, stagger_s=0).summary()


def render(figures: dict[str, Any], command: str, machine: str) -> str:
    o, m, g, c, e = (figures[k] for k in ("overhead", "mixed", "merged", "cold_start", "endpoint"))
    lines = [
        BENCH_BEGIN,
        "## Serving (scripts/bench.py)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Model: {figures['model']}",
        "",
        "| figure | measured | target |",
        "| --- | --- | --- |",
        f"| handler overhead: `run()` vs bare `generate` (batch 1, {figures['new_tokens']} tokens) | "
        f"{o['handler_s'] * 1000:.0f} ms vs {o['bare_generate_s'] * 1000:.0f} ms = {o['overhead_pct']:+.1f}% | <= 5% |",
        f"| mixed-adapter batch (4 adapters) vs single-adapter batch, {figures['rows']} rows | "
        f"{m['mixed_adapter_tok_s']:.0f} vs {m['single_adapter_tok_s']:.0f} tok/s = {m['ratio']:.2f}x | >= 0.95x |",
        f"| merged single adapter vs base latency | {g['merged_s'] * 1000:.0f} ms vs {g['base_s'] * 1000:.0f} ms "
        f"= {g['merged_vs_base_pct']:+.1f}% | within 3% |",
        f"| unmerged (peft) single adapter vs base latency | {g['unmerged_s'] * 1000:.0f} ms "
        f"= {g['unmerged_vs_base_pct']:+.1f}% | measured |",
        f"| cold start: handler load vs raw `from_pretrained` + `PeftModel` (4 adapters) | "
        f"{c['model_fn_s']:.2f} s vs {c['raw_load_s']:.2f} s | measured |",
    ]
    if "skipped" in e:
        lines.append(f"| local endpoint throughput | skipped: {e['skipped']} | |")
    else:
        seq = e["sequential_1"]
        for key in sorted((k for k in e if k.startswith("batched_")), key=lambda k: int(k.split("_")[1])):
            r = e[key]
            lines.append(
                f"| local endpoint, {r['clients']} clients (engine, up to {figures['max_rows']} rows) "
                "vs one at a time | "
                f"{r['tok_s']:.0f} vs {seq['tok_s']:.0f} tok/s = {r['tok_s'] / seq['tok_s']:.1f}x; "
                f"p50 {r['p50_s']:.2f} s ({r['p50_s'] / seq['p50_s']:.1f}x single), p99 {r['p99_s']:.2f} s, "
                f"{r['errors']} errors | 16 clients: >= 6x tok/s, p50 <= 3x |"
            )
    lines += ["", "Raw figures:", "", "```json", json.dumps(figures, indent=1, sort_keys=True), "```", BENCH_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["engines"] or args_in[:2] == ["--engine", "vllm"]:
        from scripts.bench_engines import main as engines_main

        return engines_main(args_in[1:] if args_in[:1] == ["engines"] else args_in[2:])
    if args_in[:1] == ["adapters"]:
        from scripts.bench_adapters import main as adapters_main

        return adapters_main(args_in[1:])
    if args_in[:1] == ["telemetry"]:
        from scripts.bench_telemetry import main as telemetry_main

        return telemetry_main(args_in[1:])
    if args_in[:1] == ["serving"]:
        from scripts.bench_serving import main as serving_main

        return serving_main(args_in[1:])
    parser = argparse.ArgumentParser(prog="lora-endpoint bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="small model and counts (smoke run; figures not written)")
    parser.add_argument("--new-tokens", type=positive_int, default=32, help="tokens generated per request")
    parser.add_argument("--rows", type=positive_int, default=16, help="rows in the mixed-adapter batch")
    parser.add_argument("--clients", type=positive_list, default=(1, 4, 8, 16),
                        help="client counts for the endpoint run (default: 1,4,8,16)")
    parser.add_argument("--max-rows", type=positive_int, default=16,
                        help="the local endpoint engine's LORA_MAX_BATCH_ROWS for the endpoint run (default: 16)")
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(args_in)

    config = (
        TinyModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.02)
        if args.quick
        else BENCH_CONFIG
    )
    settings = HandlerSettings(
        device=args.device,
        max_new_tokens=max(args.new_tokens, 64),
        default_max_new_tokens=min(30, args.new_tokens),
        time_budget_s=0,
    )
    figures: dict[str, Any] = {"new_tokens": args.new_tokens, "rows": args.rows, "max_rows": args.max_rows}
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        # Built on a thread of its own, as the handler loads: no torch thread pool stays on this one.
        dirs = on_fresh_thread(lambda: build_models(Path(tmp), config, adapters=4))
        probe = load_model(dirs["base"], settings)
        params = sum(p.numel() for p in probe.model.parameters())
        release(probe)
        figures["model"] = (
            f"Llama hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
            f"{params / 1e6:.1f}M parameters, LoRA r=16 on q/k/v/o, float32"
            if args.device == "cpu"
            else f"{params / 1e6:.1f}M parameters on CUDA"
        )
        print(f"model: {figures['model']}", flush=True)
        base_lm = load_model(dirs["base"], settings)
        figures["overhead"] = bench_overhead(base_lm, args.new_tokens, args.repeat)
        print("overhead", figures["overhead"], flush=True)
        release(base_lm)
        multi = load_model(dirs["multi"], settings)
        figures["mixed"] = bench_mixed(multi, args.rows, args.new_tokens, args.repeat)
        print("mixed", figures["mixed"], flush=True)
        release(multi)
        figures["merged"] = bench_merged(dirs, settings, args.new_tokens, args.repeat)
        print("merged", figures["merged"], flush=True)
        figures["cold_start"] = on_fresh_thread(lambda: bench_cold_start(dirs, settings))
        print("cold start", figures["cold_start"], flush=True)
        figures["endpoint"] = bench_endpoint(
            dirs["base"],
            args.device,
            settings.max_new_tokens,
            list(args.clients),
            per_client=3 if not args.quick else 1,
            new_tokens=args.new_tokens,
            max_rows=args.max_rows,
        )
        print("endpoint", figures["endpoint"], flush=True)
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in args_in)
    section = render(figures, command.strip(), machine(args.device))
    print(section)
    if not (args.quick or args.no_write):
        write_doc(section, args.output, BENCH_BEGIN, BENCH_END)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
