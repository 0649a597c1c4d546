"""Benchmark: ``lora_endpoint.packaging build`` against ``tar -czf`` on the same ~1 GB of safetensors files.

Writes a base model of bf16 weights (normally distributed, like trained weights) and one adapter into
a temporary folder, then times, in this one run and on warm page cache:
- ``tar -czf`` of the same files (gzip level 6),
- ``python -m lora_endpoint.packaging build`` at gzip level 6 (like for like) and at its default level 1,
- ``python -m lora_endpoint.packaging build --format dir`` (no compression),
- the default build on a quarter of the data, to show that peak memory does not grow with the input.

Peak memory is the largest resident set of any process of the command (``wait4`` rusage). The
figures go to stdout and replace the package section of ``docs/benchmarks.md``.

    .venv/bin/python scripts/bench_package.py            # ~1 GiB, a few minutes on 2 cores
    .venv/bin/python scripts/bench_package.py --size-mb 256 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:package:start -->", "<!-- bench:package:end -->"
HIDDEN = 4096  # one 4096 x 4096 bf16 matrix is 32 MiB
GNU_TIME = "/usr/bin/time"


@dataclass(frozen=True)
class Run:
    """One timed command."""

    label: str
    seconds: float
    cpu_seconds: float
    peak_mib: float
    output_bytes: int
    load: float


def make_inputs(root: Path, size_mb: int, shards: int) -> tuple[Path, Path]:
    """A fake Llama-style base (config, tokenizer, sharded bf16 safetensors) and one LoRA adapter."""
    import torch
    from safetensors.torch import save_file

    base, adapter = root / "base", root / "adapters" / "bench"
    base.mkdir(parents=True)
    adapter.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    matrices = max(1, size_mb // 32)
    per_shard = -(-matrices // shards)
    weight_map: dict[str, str] = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for index in range(shard * per_shard, min(matrices, (shard + 1) * per_shard)):
            layer, proj = divmod(index, 4)
            key = f"model.layers.{layer}.self_attn.{('q', 'k', 'v', 'o')[proj]}_proj.weight"
            tensors[key] = (torch.randn(HIDDEN, HIDDEN, generator=generator) * 0.02).to(torch.bfloat16)
            weight_map[key] = name
        if tensors:
            save_file(tensors, str(base / name), metadata={"format": "pt"})
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 32000,
                                                  "hidden_size": HIDDEN, "_name_or_path": "bench-base"}))
    (base / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}, "added_tokens": []}))
    lora = {f"base_model.model.model.layers.0.self_attn.{p}_proj.lora_{m}.weight":
            torch.randn(*((16, HIDDEN) if m == "A" else (HIDDEN, 16)), generator=generator).to(torch.bfloat16)
            for p in ("q",) for m in ("A", "B")}
    save_file(lora, str(adapter / "adapter_model.safetensors"), metadata={"format": "pt"})
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj"],
        "base_model_name_or_path": "bench-base"}))
    return base, adapter


def timed(label: str, command: list[str], output: Path) -> Run:
    """Run ``command``; wall time and the peak RSS of its largest process (children included)."""
    # GNU time reports its child's peak RSS (tar's includes gzip's); measuring from this process
    # would count the RSS it had when it forked (Linux keeps the pre-exec high-water mark).
    with tempfile.TemporaryDirectory() as scratch:
        rss_file = Path(scratch) / "rss"
        with open(Path(scratch) / "stderr", "w+b") as errors:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            done = subprocess.run([GNU_TIME, "-f", "%M %U %S", "-o", str(rss_file), *command],
                                  stdout=subprocess.DEVNULL, stderr=errors, cwd=ROOT, check=False)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                errors.seek(0)
                raise SystemExit(f"{label} failed: {errors.read().decode().strip()}")
        peak_kib, user, system = rss_file.read_text().split()[-3:]
    files = [output] if output.is_file() else [p for p in output.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    run = Run(label, seconds, float(user) + float(system), int(peak_kib) / 1024, size, load)
    print(f"{label:<44} {run.seconds:7.1f} s {run.cpu_seconds:7.1f} cpu-s {run.peak_mib:6.0f} MiB peak "
          f"{size / 2**20:7.0f} MiB out  load {load:.2f}", flush=True)
    return run


def machine() -> str:
    """nproc, RAM, CPU model, OS and Python, in one line."""
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    ram = re.search(r"MemTotal:\s+(\d+)", meminfo)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", cpuinfo)
    ram_text = f"{int(ram.group(1)) / 2**20:.0f} GiB RAM" if ram else "RAM unknown"
    return (f"{os.cpu_count()} CPUs (nproc), {ram_text}, {model.group(1).strip() if model else platform.machine()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def report(runs: dict[str, Run], data_bytes: int, quarter_bytes: int, command: str, load: str) -> str:
    """The markdown section (figures only from ``runs``)."""
    tar, like, fast = runs["tar"], runs["6"], runs["1"]
    lines = [
        START,
        "## Packaging: `lora_endpoint.packaging build` vs `tar -czf`",
        "",
        f"Command: `{command}` (inputs: {data_bytes / 2**30:.2f} GiB of bf16 safetensors shards plus one adapter,"
        " generated in a temporary folder; page cache warm for every run).",
        f"Machine: {machine()}; load average before / after the runs: {load} (a shared machine: other work"
        " running at the same time slows every row alike, so compare the ratios).",
        "",
        "| run | time (s) | vs `tar -czf` | CPU time (s) | peak RSS (MiB) | output (MiB) | load at start |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs.values():
        ratio = run.seconds / tar.seconds
        lines.append(f"| {run.label} | {run.seconds:.1f} | {ratio:.2f}x | {run.cpu_seconds:.1f} | {run.peak_mib:.0f} | "
                     f"{run.output_bytes / 2**20:.0f} | {run.load:.2f} |")
    lines += [
        "",
        f"The last row builds {quarter_bytes / 2**30:.2f} GiB: peak memory stays flat as the input grows "
        "(files are streamed in 1 MiB blocks; at most two blocks per thread are in flight).",
        "Times include hashing every file for the manifest and, for the builds, Python start-up. CPU time (user +"
        " system, all threads and processes) is less sensitive to other work on the machine than wall time.",
        "The builds compress on one thread per CPU; `tar -czf` runs gzip on one. At the default level 1 the"
        f" archive is {100 * (fast.output_bytes / like.output_bytes - 1):.1f}% larger than at level 6 and took"
        f" {fast.seconds / like.seconds:.2f}x its time ({fast.cpu_seconds / like.cpu_seconds:.2f}x its CPU time).",
        "Peak RSS is the largest process of the command (for `tar -czf`: tar or gzip).",
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(section: str) -> None:
    """Replace (or append) the package section of docs/benchmarks.md, leaving the rest alone."""
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nFigures written by the scripts in `scripts/`.\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the weights to package (default 1024)")
    parser.add_argument("--shards", type=int, default=4, help="safetensors shards (default 4)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if shutil.which("tar") is None or shutil.which("gzip") is None or not Path(GNU_TIME).is_file():
        raise SystemExit(f"tar, gzip and GNU time ({GNU_TIME}) are needed for the comparison")
    command = "python scripts/bench_package.py" + (f" --size-mb {args.size_mb}" if args.size_mb != 1024 else "")
    work = Path(tempfile.mkdtemp(prefix="bench-package-"))
    load_before = os.getloadavg()[0]
    try:
        src = work / "src"
        base, adapter = make_inputs(src, args.size_mb, args.shards)
        data_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        out = work / "out"
        out.mkdir()
        build = [sys.executable, "-m", "lora_endpoint.packaging", "build", "--base-model", str(base),
                 "--adapter", f"bench={adapter}", "--no-progress"]
        runs = {
            "tar": timed("`tar -czf` (gzip -6)", ["tar", "-czf", str(out / "tar.tar.gz"), "-C", str(src), "."],
                         out / "tar.tar.gz"),
            "6": timed("`build --compress-level 6` (like for like)", [*build, "--compress-level", "6", "--output",
                                                                        str(out / "l6.tar.gz")], out / "l6.tar.gz"),
            "1": timed("`build` (default, gzip level 1)", [*build, "--output", str(out / "l1.tar.gz")],
                       out / "l1.tar.gz"),
            "dir": timed("`build --format dir` (no compression)", [*build, "--format", "dir", "--output",
                                                                   str(out / "tree")], out / "tree"),
        }
        # A quarter of the data (a copy of the base with one shard) for the flat-memory check.
        small = work / "small"
        shutil.copytree(base, small / "base", ignore=shutil.ignore_patterns("model-0000[2-9]-*"))
        shards = sorted(p.name for p in (small / "base").glob("*.safetensors"))
        index = json.loads((small / "base" / "model.safetensors.index.json").read_text())
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v in shards}
        (small / "base" / "model.safetensors.index.json").write_text(json.dumps(index))
        quarter_bytes = sum(p.stat().st_size for p in small.rglob("*") if p.is_file())
        small_build = [arg if arg != str(base) else str(small / "base") for arg in build]
        runs["small"] = timed("`build` (default) on a quarter of the data",
                              [*small_build, "--output", str(out / "small.tar.gz")], out / "small.tar.gz")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = f"{load_before:.2f} / {os.getloadavg()[0]:.2f}"
    section = report(runs, data_bytes, quarter_bytes, command, load)
    print()
    print(section)
    if not args.no_write:
        write_section(section)
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
