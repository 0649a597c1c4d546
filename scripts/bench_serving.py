"""Side by side with vLLM: our local endpoint and vLLM's OpenAI server on the same models, adapters and load.

    python scripts/bench.py serving --peer-python .venv-vllm/bin/python   # make bench-serving
    python scripts/bench.py serving                                      # our side only
    python scripts/bench.py serving --quick --peer-python ...            # smoke run, nothing written

For each model (Llama-shaped, head dim 64, vocab of the tokenizer made in code; 4 LoRA adapters r=16 on
q/k/v/o) it serves the same model dir through lora_endpoint/commands/serve.py and through vLLM's OpenAI server
(``--enable-lora``, the same adapters), both up at once and taking turns (so both see the same machine,
which may be shared), and sends the same prompts: greedy, ``ignore_eos``, the same
token count, at each client count, clients starting a few ms apart and each sending several requests in
a row, round-robin over the base model and the 4 adapters. Every answer's token count is checked (ours
``details.generated_tokens``, vLLM's ``usage.completion_tokens``). Our side also measures, in the same
run: 16 staggered clients vs the ideal static batch of 16 identical prompts (the handler's ``run()``),
a mixed 4-adapter vs a single-adapter batch, and the time to first token of a request that arrives
during a long stream (vLLM's too, for reference). The section in docs/benchmarks.md between its markers
is rewritten with the command, the machine, the versions, the commit and the targets.

Exit codes: 0 done; 1 a server failed (ours: nothing written; the peer: its rows say why, the rest is
written); 2 bad command line; 130 interrupted (Ctrl-C or SIGTERM: the servers are stopped first).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shlex
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler.loading import load_model
from scripts.bench_clients import BASE, OURS, VLLM, Api, drive, plan, ttft_during_stream
from scripts.bench_common import (
    PROMPTS,
    ROOT,
    bench_mixed,
    bench_static,
    commit_label,
    load_average,
    machine,
    on_fresh_thread,
    positive_list,
    release,
    settle,
    write_doc,
)
from scripts.bench_servers import (
    Server,
    ServerFailed,
    free_port,
    ours_command,
    ours_env,
    peer_versions,
    serving,
    vllm_command,
    vllm_env,
)
from scripts.bench_serving_report import PEER_BEGIN, PEER_END, render
from scripts.tiny_model import TinyModelConfig, build_lora_adapter, build_tiny_model

ADAPTERS = ("a0", "a1", "a2", "a3")
STATIC_ROWS = 16
# Head dim 64 throughout (vLLM's CPU attention rejects 16); the sizes of the table.
MODELS = {
    "20m": TinyModelConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=7, num_attention_heads=8,
                           num_key_value_heads=4, max_position_embeddings=1024, initializer_range=0.02),
    "170m": TinyModelConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=14, num_attention_heads=16,
                            num_key_value_heads=8, max_position_embeddings=1024, initializer_range=0.02),
    "quick": TinyModelConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2,
                             num_key_value_heads=1, max_position_embeddings=1024, initializer_range=0.02),
}


@dataclass(frozen=True)
class Load:
    """The load both sides get, and the most rows each side runs at once."""

    clients: tuple[int, ...]
    per_client: int
    new_tokens: int
    stagger_s: float
    long_tokens: int
    max_rows: int
    repeat: int


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lora-endpoint bench serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", help="python of a venv with vLLM (make vllm-venv: .venv-vllm/bin/python); "
                                              "without it only our side runs")
    parser.add_argument("--models", default="20m,170m", help="comma-separated, of: 20m, 170m (default: both)")
    parser.add_argument("--clients", type=positive_list, default=(1, 4, 16), help="client counts (default: 1,4,16)")
    parser.add_argument("--per-client", type=int, default=3, help="requests each client sends in a row (default: 3)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per request (default: 64)")
    parser.add_argument("--stagger-ms", type=float, default=10.0, help="ms between two clients' starts (default: 10)")
    parser.add_argument("--long-tokens", type=int, default=128,
                        help="tokens of the long stream a request arrives during (default: 128)")
    parser.add_argument("--max-rows", type=int, default=16,
                        help="most rows each side runs at once: our engine's LORA_MAX_BATCH_ROWS, vLLM's "
                             "--max-num-seqs (default: 16)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="timed runs of the in-process batches after one warm-up; the median counts (default: 2)")
    parser.add_argument("--peer-omp-bind", choices=("all", "auto"), default="all",
                        help="vLLM's OpenMP threads on every core (all, default) or vLLM's own choice (auto: on 2 "
                             "cores it keeps one for its scheduler and computes on the other)")
    parser.add_argument("--peer-timeout", type=float, default=900, help="seconds vLLM may take to start (default: 900)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="our side's device (default: cpu)")
    parser.add_argument("--quick", action="store_true", help="a 1-layer model, 2 clients, 8 tokens; nothing written")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in MODELS or m == "quick"]
    if unknown:
        parser.error(f"--models must name 20m and/or 170m, got {', '.join(unknown)}")
    args.models = ["quick"] if args.quick else models
    for name in ("per_client", "new_tokens", "long_tokens", "max_rows", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.new_tokens > 512 or args.long_tokens > 512:
        parser.error("--new-tokens and --long-tokens must be at most 512 (the servers' context)")
    if args.stagger_ms < 0:
        parser.error("--stagger-ms must be 0 or more")
    if args.peer_python and not os.access(args.peer_python, os.X_OK):
        parser.error(f"--peer-python {args.peer_python} is not an executable file (make vllm-venv creates one)")
    if args.quick:
        args.clients, args.per_client, args.new_tokens, args.long_tokens = (1, 2), 1, 8, 16
    return args


def build(work: Path, config: TinyModelConfig) -> Path:
    """``base/`` + ``adapters/a0..a3``: the model dir both servers serve."""
    base = build_tiny_model(work / "base", config)
    for index, name in enumerate(ADAPTERS):
        build_lora_adapter(base, work / "adapters" / name, seed=index, r=16, alpha=32, scale=0.5,
                           target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    return work


def in_process(model_dir: Path, load: Load, device: str) -> dict[str, Any]:
    """Our side's batches through the handler's ``run()``: the ideal static batch, mixed vs single adapter."""
    settings = HandlerSettings(device=device, max_new_tokens=max(load.new_tokens, load.long_tokens),
                               default_max_new_tokens=min(30, load.new_tokens), time_budget_s=0)
    lm = load_model(model_dir, settings)
    # The base model's parameters: the adapters' LoRA factors are not counted.
    params = sum(p.numel() for name, p in lm.model.named_parameters() if "lora_" not in name)
    out: dict[str, Any] = {"params": params, "load_at_start": load_average()}
    out["static"] = bench_static(lm, STATIC_ROWS, load.new_tokens, load.repeat)
    out["mixed"] = bench_mixed(lm, STATIC_ROWS, load.new_tokens, load.repeat)
    print(f"  ours in-process: static {out['static']}, mixed {out['mixed']}", flush=True)
    release(lm)
    return out


@dataclass(frozen=True)
class Peer:
    python: str
    omp_bind: str
    timeout_s: float

    def start(self, model_dir: Path, load: Load) -> tuple[contextlib.AbstractContextManager[Server], dict[str, str]]:
        port = free_port()
        cmd = vllm_command(self.python, model_dir, port, adapters=ADAPTERS, max_num_seqs=load.max_rows,
                           max_model_len=1024)
        env = vllm_env(os.cpu_count() or 1) if self.omp_bind == "all" else {"VLLM_CPU_KVCACHE_SPACE": "1"}
        return serving(cmd, port=port, log=model_dir / "vllm.log", ready_path="/health", env=env,
                       timeout_s=self.timeout_s), env


def _run_one(out: dict[str, Any], key: str, url: str, api: Api, requests: list[list[tuple[str, str]]],
             load: Load) -> None:
    settled_s = settle()
    out[key] = {**drive(url, api, requests, load.new_tokens, load.stagger_s).summary(), "load_before": load_average(),
                "settled_s": settled_s}
    print(f"  {api.name} {key}: {out[key]}", flush=True)


def served(model_dir: Path, load: Load, device: str, peer: Peer | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Both servers up at once, the same load on each in turn (which goes first alternates by client count),
    so that both sides see the same machine; then our side's identical-prompt runs. The peer's figures are
    ``{"skipped": why}`` if it cannot start."""
    mine: dict[str, Any] = {}
    theirs: dict[str, Any] | None = None
    port = free_port()
    env = ours_env(device, max_new_tokens=max(load.new_tokens, load.long_tokens),
                   max_batch_rows=load.max_rows)
    with contextlib.ExitStack() as stack:
        ours_server = stack.enter_context(serving(
            ours_command(model_dir, port), port=port,
            log=model_dir / "ours.log", env=env, timeout_s=300))
        mine.update(startup_s=ours_server.startup_s, load_at_serving=load_average())
        sides = [(OURS, ours_server.url, mine)]
        if peer is not None:
            context, peer_env = peer.start(model_dir, load)
            try:
                server = stack.enter_context(context)
            except ServerFailed as err:
                theirs = {"skipped": str(err)}
            else:
                theirs = {"startup_s": server.startup_s, "env": peer_env, "load_at_serving": load_average()}
                sides.append((VLLM, server.url, theirs))
        names = [BASE, *ADAPTERS]
        for api, url, _ in sides:  # one untimed request per model name: every adapter is loaded and warm
            drive(url, api, [[(PROMPTS[0], name) for name in names]], load.new_tokens, 0)
        for index, count in enumerate(load.clients):
            for api, url, out in sides if index % 2 == 0 else sides[::-1]:
                _run_one(out, str(count), url, api, plan(count, load.per_client, PROMPTS, names), load)
        for api, url, out in sides:
            settle()
            out["ttft"] = ttft_during_stream(url, api, PROMPTS[1], long_tokens=load.long_tokens,
                                             new_tokens=load.new_tokens, after_tokens=8)
            print(f"  {api.name} ttft: {out['ttft']}", flush=True)
        same = [PROMPTS[0]]
        _run_one(mine, "identical_1", ours_server.url, OURS, plan(1, load.per_client, same, [BASE]), load)
        _run_one(mine, "identical_16", ours_server.url, OURS, plan(STATIC_ROWS, load.per_client, same, [BASE]), load)
    return mine, theirs


class _Terminated(Exception):
    """SIGTERM: unwind, so that every server is stopped and the temporary models are removed."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args, argv)
    except (KeyboardInterrupt, _Terminated):
        print("interrupted: servers stopped, nothing written", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    load = Load(clients=args.clients, per_client=args.per_client, new_tokens=args.new_tokens,
                stagger_s=args.stagger_ms / 1000, long_tokens=args.long_tokens, max_rows=args.max_rows,
                repeat=args.repeat)
    import peft
    import torch
    import transformers

    figures: dict[str, Any] = {
        "commit": commit_label(), "machine": machine(args.device), "load_before": load_average(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "load": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(load).items()}, "models": {},
    }
    if args.peer_python:
        try:
            figures["peer_versions"] = peer_versions(args.peer_python)
        except ServerFailed as err:
            figures["peer_versions"] = {"error": str(err)}
            print(f"warning: {err}", file=sys.stderr)
    peer_failed = False
    with tempfile.TemporaryDirectory(prefix="lora-bench-serving-") as tmp:
        for name in args.models:
            print(f"model {name}", flush=True)
            # On a thread of its own, as the handler loads: no torch thread pool stays on this one.
            model_dir = on_fresh_thread(functools.partial(build, Path(tmp) / name, MODELS[name]))
            versions = figures.get("peer_versions", {})
            peer = Peer(args.peer_python, args.peer_omp_bind, args.peer_timeout) \
                if args.peer_python and "error" not in versions else None
            row: dict[str, Any] = {"ours": in_process(model_dir, load, args.device)}
            try:
                mine, theirs = served(model_dir, load, args.device, peer)
            except ServerFailed as err:
                print(f"error: our endpoint failed: {err}", file=sys.stderr)
                return 1
            row["ours"].update(mine)
            if args.peer_python:
                row["vllm"] = {"skipped": versions["error"]} if "error" in versions else theirs
                peer_failed |= "skipped" in row["vllm"]
            figures["models"][name] = row
    figures["load_after"] = load_average()
    command = "python scripts/bench.py serving " + " ".join(shlex.quote(a) for a in argv)
    section = render(figures, command.strip())
    print(section)
    if not (args.quick or args.no_write):
        write_doc(section, args.output, PEER_BEGIN, PEER_END)
        print(f"wrote {args.output}")
    return 1 if peer_failed else 0
