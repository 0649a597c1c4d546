"""The side-by-side figures as the docs/benchmarks.md section, with the issue's targets beside them."""

from __future__ import annotations

import json
import math
from typing import Any

PEER_BEGIN, PEER_END = "<!-- bench:peer -->", "<!-- /bench:peer -->"
NOT_RUN = "not run"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not (math.isnan(a) or math.isnan(b)) else "n/a"


def _size(row: dict[str, Any]) -> str:
    return f"{row['ours']['params'] / 1e6:.1f}M"


def _target(name: str, clients: int) -> str:
    return ">= 1.3x" if name == "20m" and clients == 16 else ">= 1.0x"


def _side(side: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    return None if side is None or "skipped" in side else side.get(key)


def side_by_side(figures: dict[str, Any]) -> list[str]:
    """One row per model and client count: tokens/s, p50/p99, p50 over the solo (1-client) p50, checks."""
    lines = ["| model | clients | ours tok/s | vLLM tok/s | ours / vLLM | ours p50 / p99 (s) | vLLM p50 / p99 (s) "
             "| ours p50 / solo | vLLM p50 / solo | errors, wrong token counts (ours; vLLM) | target (ours / vLLM) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, row in figures["models"].items():
        mine, theirs = row["ours"], row.get("vllm")
        for clients in figures["load"]["clients"]:
            a, b = mine[str(clients)], _side(theirs, str(clients))
            solo_a, solo_b = mine.get("1"), _side(theirs, "1")
            cells = [
                _size(row), str(clients), f"{a['tok_s']:.0f}", f"{b['tok_s']:.0f}" if b else NOT_RUN,
                _ratio(a["tok_s"], b["tok_s"]) if b else "n/a",
                f"{a['p50_s']:.2f} / {a['p99_s']:.2f}", f"{b['p50_s']:.2f} / {b['p99_s']:.2f}" if b else NOT_RUN,
                _ratio(a["p50_s"], solo_a["p50_s"]) if solo_a else "n/a",
                _ratio(b["p50_s"], solo_b["p50_s"]) if b and solo_b else "n/a",
                f"{a['errors']}, {a['wrong_counts']}; " + (f"{b['errors']}, {b['wrong_counts']}" if b else NOT_RUN),
                _target(name, clients),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    for row in figures["models"].values():
        if row.get("vllm") and "skipped" in row["vllm"]:
            lines += ["", f"vLLM did not run on the {_size(row)} model: {row['vllm']['skipped']}"]
    return lines


def _ttft(t: dict[str, Any] | None) -> str:
    if not t:
        return NOT_RUN
    after = "; it came after the stream had ended" if t["long_finished_first"] else ""
    return (f"{t['ttft_during_s']:.2f} s (alone {t['solo_ttft_s']:.3f} s, decode step {t['step_s'] * 1000:.0f} ms: "
            f"bound {t['bound_s']:.3f} s = {_ratio(t['ttft_during_s'], t['bound_s'])} of it{after})")


def ours_only(figures: dict[str, Any]) -> list[str]:
    """Our side's figures per model: staggered vs static, mixed vs single adapter, TTFT during a stream."""
    rows = list(figures["models"].values())
    long_tokens = figures["load"]["long_tokens"]
    lines = ["| figure | " + " | ".join(_size(r) for r in rows) + " | target |",
             "| --- | " + " | ".join("---" for _ in rows) + " | --- |"]

    def add(label: str, cell: Any, target: str) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in rows) + f" | {target} |")

    add("16 staggered clients (one prompt, base model) vs the ideal static batch of 16 identical prompts (`run()`)",
        lambda r: f"{r['ours']['identical_16']['tok_s']:.0f} vs {r['ours']['static']['tok_s']:.0f} tok/s = "
                  f"{_ratio(r['ours']['identical_16']['tok_s'], r['ours']['static']['tok_s'])}", ">= 0.9x")
    add("p50 of those 16 clients vs a solo request (same prompt)",
        lambda r: f"{r['ours']['identical_16']['p50_s']:.2f} vs {r['ours']['identical_1']['p50_s']:.2f} s = "
                  f"{_ratio(r['ours']['identical_16']['p50_s'], r['ours']['identical_1']['p50_s'])}", "<= 2x")
    add("mixed 4-adapter batch vs single-adapter batch, 16 rows (`run()`)",
        lambda r: f"{r['ours']['mixed']['mixed_adapter_tok_s']:.0f} vs "
                  f"{r['ours']['mixed']['single_adapter_tok_s']:.0f} tok/s = {r['ours']['mixed']['ratio']:.2f}x",
        ">= 0.95x")
    add(f"time to first token of a request arriving during a {long_tokens}-token stream (ours)",
        lambda r: _ttft(r["ours"]["ttft"]), "<= its own prefill + 2 decode steps")
    add("the same on vLLM", lambda r: _ttft(_side(r.get("vllm"), "ttft")), "for reference")
    add("load average (1 min) before the in-process batches / before the served runs",
        lambda r: f"{r['ours']['load_at_start']:.2f} / {r['ours']['load_at_serving']:.2f}", "measured")
    add("start-up until ready: ours / vLLM",
        lambda r: f"{r['ours']['startup_s']:.0f} s / "
                  + (f"{r['vllm']['startup_s']:.0f} s" if _side(r.get("vllm"), "startup_s") else NOT_RUN),
        "measured")
    return lines


def render(figures: dict[str, Any], command: str) -> str:
    load, versions = figures["load"], figures["versions"]
    peer = figures.get("peer_versions")
    if peer is None:
        peer_text = "vLLM: not run (no `--peer-python`)"
    elif "error" in peer:
        peer_text = f"vLLM: not run ({peer['error']})"
    else:
        peer_text = f"vLLM {peer['vllm']} (torch {peer['torch']}, transformers {peer['transformers']})"
    envs = {k: v for row in figures["models"].values() for k, v in (row.get("vllm") or {}).get("env", {}).items()}
    lines = [
        PEER_BEGIN,
        "## Side by side with vLLM (scripts/bench.py serving)",
        "",
        f"Command: `{command}`  ",
        f"Measured on commit {figures['commit']}.  ",
        f"Machine: {figures['machine']}; load average (1 min) before / after the run: "
        f"{figures['load_before']:.2f} / {figures['load_after']:.2f}  ",
        f"Versions: ours torch {versions['torch']}, transformers {versions['transformers']}, peft {versions['peft']}; "
        f"{peer_text}  ",
        f"Load: {load['new_tokens']} new tokens per request, greedy, `ignore_eos`; clients start "
        f"{load['stagger_s'] * 1000:.0f} ms apart and each sends {load['per_client']} request(s) in a row, round-robin "
        "over the base model and 4 adapters (r=16 on q/k/v/o, the same files on both sides). Ours: "
        "lora_endpoint/commands/serve.py in DJL async mode (the engine: continuous batching), "
        f"`LORA_MAX_BATCH_ROWS={load['max_rows']}`, `POST /invocations`. "
        "vLLM: its OpenAI server, `--enable-lora --max-loras 4 --max-lora-rank 16 "
        f"--max-num-seqs {load['max_rows']}`, `POST /v1/completions` with the "
        "adapter as `model`, " + (", ".join(f"{k}={v}" for k, v in sorted(envs.items())) or "default env") + ". "
        "Every answer's token count is checked (ours `details.generated_tokens`, vLLM `usage.completion_tokens`). "
        "Before each timed run the bench waits until the machine is quiet (under 10% CPU over 0.5 s; vLLM's "
        "worker keeps a core busy for about a second after its last request). "
        "Latencies are per request, as the client sees them; p99 is the nearest rank.",
        "",
        *side_by_side(figures),
        "",
        "Our side only (same run, same models):",
        "",
        *ours_only(figures),
        "",
        "Raw figures:",
        "",
        "```json",
        json.dumps(figures, indent=1, sort_keys=True),
        "```",
        PEER_END,
    ]
    return "\n".join(lines)
