"""Adapters at run time, measured in process: ``python scripts/bench.py adapters [--quick] [--record]``.

1. **Registering while streams run.** Streams decode on the engine (base and an adapter); meanwhile a
   rank-16 adapter over every projection is registered (validated, read into host memory) and then asked
   for (moved onto the device). Prints the registration time, the device load time and the longest gap
   between two tokens of the running streams during all that, in decode steps (gap / median gap - 1),
   next to the longest gap in a 1 s window just before it with nothing registered (the control: Python
   threads and a shared machine make gaps vary by themselves).
2. **100 adapters, 8 on the device.** 100 registered adapters are each asked for in turn, twice; the
   resident set stays at ``--max-loras``. Prints the process's RSS after the first 8 and at the end, that
   every adapter answered the same both times (and not as the base), and what a request for an adapter
   pays when it was evicted from device and host (its reload) next to one that is resident.

The model is the serving benchmark's 20M Llama (``--quick``: a 1-layer one). ``--record`` writes the
figures to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lora_endpoint.contract.settings import HandlerSettings  # noqa: E402
from lora_endpoint.handler.engine import engine_for  # noqa: E402
from lora_endpoint.handler.generate import GenerateRequest  # noqa: E402
from lora_endpoint.handler.loading import LoadedModel, load_model  # noqa: E402
from lora_endpoint.handler.sampling import SamplingParams  # noqa: E402
from lora_endpoint.handler.service import prepare_held, run, submit  # noqa: E402
from scripts.bench_common import commit_label, load_average, machine, positive_int, write_doc  # noqa: E402
from scripts.bench_serving import MODELS  # noqa: E402

BEGIN, END = "<!-- bench:adapters -->", "<!-- /bench:adapters -->"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = "The quick brown fox jumps over the lazy dog"


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build(root: Path, quick: bool, count: int) -> tuple[Path, Path]:
    """The base (``root/pkg/base``) and ``count`` rank-16 adapters under ``root/pool`` (one made by peft, the
    rest its config with random factors of the same spread)."""
    from safetensors.torch import load_file, save_file

    from scripts.tiny_model import build_lora_adapter, build_tiny_model

    base = build_tiny_model(root / "pkg" / "base", MODELS["quick" if quick else "20m"])
    first = build_lora_adapter(base, root / "pool" / "a000", seed=7, r=16, alpha=32, target_modules=TARGETS,
                               scale=3.0)
    import torch

    tensors = load_file(first / "adapter_model.safetensors")
    for index in range(1, count):
        folder = root / "pool" / f"a{index:03d}"
        shutil.copytree(first, folder)
        generator = torch.Generator().manual_seed(index)
        # new random factors of the same size, so that each adapter answers in its own way
        own = {k: torch.randn(v.shape, generator=generator) * v.std() for k, v in tensors.items()}
        save_file(own, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return root / "pkg", root / "pool"


def _answer(lm: LoadedModel, adapter: str | None, tokens: int = 4) -> str:
    request = GenerateRequest(inputs=(PROMPT,), adapters=(adapter,),
                              params=SamplingParams(max_new_tokens=tokens, ignore_eos=True))
    answer = run(lm, [request])[0]
    if not isinstance(answer, dict):
        raise RuntimeError(f"request for {adapter} failed: {answer}")
    return str(answer["generated_text"])


def registering_while_streaming(lm: LoadedModel, pool: Path, streams: int) -> dict[str, float]:
    """Figures of part 1 (see the module docstring)."""
    registry = lm.registry
    registry.register("a000", str(pool / "a000"))
    _answer(lm, "a000")  # on the device, and the engine warm
    gaps: list[tuple[float, float]] = []  # (time of the token, gap since the stream's last one)
    ready = threading.Barrier(streams + 1)

    def stream(adapter: str | None) -> None:
        request = GenerateRequest(inputs=(PROMPT,), adapters=(adapter,),
                                  params=SamplingParams(max_new_tokens=600, ignore_eos=True))
        prepared, lease = prepare_held(lm, request, None)
        steps = submit(lm, prepared, lease, deadline=None).steps()
        last = None
        for count, _ in enumerate(steps):
            now = time.perf_counter()
            if last is not None and count > 3:
                gaps.append((now, now - last))
            last = now
            if count == 20:
                ready.wait()

    threads = [threading.Thread(target=stream, args=(None if i % 2 else "a000",)) for i in range(streams)]
    for thread in threads:
        thread.start()
    ready.wait()
    control_start = time.perf_counter()
    time.sleep(1.0)  # the control: a window of the same streams with nothing registered
    window_start = time.perf_counter()
    started = time.perf_counter()
    registry.register("a001", str(pool / "a001"))
    register_ms = (time.perf_counter() - started) * 1000
    time.sleep(0.3)
    started = time.perf_counter()
    lease = registry.acquire(["a001"])  # what the first request for it does before the engine
    device_ms = (time.perf_counter() - started) * 1000
    lease.release()
    window_end = time.perf_counter() + 0.05
    for thread in threads:
        thread.join()
    control = [g for t, g in gaps if control_start <= t < window_start]
    during = [g for t, g in gaps if window_start <= t <= window_end]
    median = statistics.median(control)
    if os.environ.get("BENCH_ADAPTERS_TRACE"):
        print([(round((t - window_start) * 1000), round(g * 1000, 1)) for t, g in gaps
               if window_start <= t <= window_end and g > 1.5 * median], file=sys.stderr)
    return {"register_ms": register_ms, "device_ms": device_ms, "median_gap_ms": median * 1000,
            "max_gap_ms": max(during) * 1000 if during else 0.0,
            "stall_steps": (max(during) / median - 1) if during else 0.0, "streams": streams,
            "control_max_gap_ms": max(control) * 1000,
            "control_stall_steps": max(control) / median - 1}


def hundred_adapters(lm: LoadedModel, pool: Path, count: int) -> dict[str, Any]:
    """Figures of part 2 (see the module docstring)."""
    registry = lm.registry
    names = sorted(p.name for p in pool.iterdir())[:count]
    for name in names:
        registry.register(name, str(pool / name), preload=False)
    base = _answer(lm, None)
    first: dict[str, str] = {}
    rss_after_cap = 0.0
    for index, name in enumerate(names):
        first[name] = _answer(lm, name)
        if index + 1 == lm.settings.max_loras:
            rss_after_cap = _rss_mib()
    rss_peak = rss_after_cap
    same = 0
    for name in names:
        same += _answer(lm, name) == first[name]
        rss_peak = max(rss_peak, _rss_mib())
    # a resident adapter next to one evicted from the device and from host memory
    resident = lm.resident[-1]
    evicted = next(n for n in names if n not in lm.resident and registry._entries[n].host is None)
    started = time.perf_counter()
    _answer(lm, resident)
    warm_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    _answer(lm, evicted)
    reload_ms = (time.perf_counter() - started) * 1000
    return {"adapters": len(names), "max_loras": lm.settings.max_loras, "rss_after_cap_mib": rss_after_cap,
            "rss_end_mib": _rss_mib(), "rss_peak_mib": rss_peak, "same_both_times": same,
            "differ_from_base": sum(text != base for text in first.values()),
            "distinct_answers": len(set(first.values())), "resident_request_ms": warm_ms,
            "evicted_request_ms": reload_ms, "evictions": registry.stats.evictions,
            "host_loads": registry.stats.host_loads}


def render(args: argparse.Namespace, part1: dict[str, float], part2: dict[str, Any]) -> str:
    growth = (part2["rss_end_mib"] / part2["rss_after_cap_mib"] - 1) * 100
    return "\n".join([
        BEGIN,
        "## Adapters at run time",
        "",
        f"`python scripts/bench.py adapters{' --quick' if args.quick else ''} --record` on commit {commit_label()}, "
        f"{machine('cpu')}, load average {load_average():.1f}; model: the serving benchmark's "
        f"{'1-layer' if args.quick else '20M'} Llama, adapters of rank 16 on all seven projections.",
        "",
        "| figure | measured |",
        "| --- | --- |",
        f"| registering an adapter (validate, read into host memory) | {part1['register_ms']:.0f} ms |",
        f"| moving it onto the device (its first request's wait) | {part1['device_ms']:.0f} ms |",
        f"| {part1['streams']:.0f} running streams: median gap between tokens | {part1['median_gap_ms']:.1f} ms |",
        f"| their longest gap while the adapter is registered and moved onto the device | "
        f"{part1['max_gap_ms']:.1f} ms ({part1['stall_steps']:.2f} decode steps more than the median) |",
        f"| their longest gap in a 1 s window before it, nothing registered (the control) | "
        f"{part1['control_max_gap_ms']:.1f} ms ({part1['control_stall_steps']:.2f} steps more) |",
        f"| {part2['adapters']} registered, {part2['max_loras']} on the device: RSS after the first "
        f"{part2['max_loras']} / at the end / peak | {part2['rss_after_cap_mib']:.0f} / {part2['rss_end_mib']:.0f} / "
        f"{part2['rss_peak_mib']:.0f} MiB ({growth:+.1f}%) |",
        f"| adapters answering the same after eviction and reload | {part2['same_both_times']} of "
        f"{part2['adapters']} ({part2['distinct_answers']} distinct answers, {part2['differ_from_base']} differ "
        "from the base) |",
        f"| a 4-token request: adapter resident / evicted from device and host (reload) | "
        f"{part2['resident_request_ms']:.0f} / {part2['evicted_request_ms']:.0f} ms |",
        f"| evictions, reads from disk | {part2['evictions']}, {part2['host_loads']} |",
        "",
        END,
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-endpoint bench adapters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 1-layer model and 20 adapters (a smoke run)")
    parser.add_argument("--adapters", type=positive_int, default=None, help="adapters registered (default 100)")
    parser.add_argument("--max-loras", type=positive_int, default=8, help="device slots (default 8)")
    parser.add_argument("--streams", type=positive_int, default=4, help="streams running while registering")
    parser.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.md")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    count = args.adapters or (20 if args.quick else 100)
    if count <= args.max_loras:
        parser.error("--adapters must exceed --max-loras (otherwise nothing is ever evicted)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-adapters-") as tmp:
        print(f"building the model and {count} adapters ...", file=sys.stderr)
        model_dir, pool = build(Path(tmp), args.quick, count)
        settings = HandlerSettings(max_loras=args.max_loras, adapter_cache_dir=str(Path(tmp) / "cache"),
                                   time_budget_s=0)
        lm = load_model(model_dir, settings)
        engine_for(lm)
        print("registering while streams run ...", file=sys.stderr)
        part1 = registering_while_streaming(lm, pool, args.streams)
        for name in lm.registry.names():
            lm.registry.unregister(name)
        print(f"{count} adapters, {args.max_loras} on the device ...", file=sys.stderr)
        part2 = hundred_adapters(lm, pool, count)
        lm.engine.stop()
    print(json.dumps({"registering": part1, "residency": part2}, indent=2))
    section = render(args, part1, part2)
    print(section)
    if args.record:
        write_doc(section, args.output, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
