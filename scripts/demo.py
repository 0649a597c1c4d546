"""``make demo``: the whole pipeline on a tiny model, offline, in a few minutes on a laptop CPU.

Train a tiny base model and a LoRA adapter, package them, serve the package on localhost, call it
with boto3 (base vs adapter, and a streamed answer), smoke-test it, synthesize the CDK stack for the
package, stop the server, and print the next steps for a real deployment. Everything lands in
``--workdir`` (default ``.demo/``). Exit code 0 when every step passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``scripts.*`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_endpoint.commands import train as train_lora
from scripts.demo_model import DEMO, QA, build_base, is_correct, questions

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "lora-local"
ADAPTER = "demo"
MAX_NEW_TOKENS = 12
MARKER = ".lora-demo"  # the demo empties only a work dir that holds this file (or an empty / new one)
# Tiny models run fastest on one thread, and a second one only fights other work on a 2-core machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1"}


class Skip(Exception):
    """A step that cannot run here (a missing optional piece); the demo goes on without it."""


class Demo:
    """Runs the steps in order, each under a header with its time; remembers what passed."""

    def __init__(self, total: int) -> None:
        self.total, self.index = total, 0
        self.results: list[tuple[str, str, float]] = []
        self.started = time.perf_counter()

    def step(self, title: str, action: Callable[[], Any]) -> Any:
        self.index += 1
        print(f"\n=== [{self.index}/{self.total}] {title} " + "=" * max(3, 70 - len(title)), flush=True)
        began = time.perf_counter()
        outcome, value = "ok", None
        try:
            value = action()
            if value is False:
                outcome = "FAILED"
        except Skip as reason:
            outcome = "skipped"
            print(f"skipped: {reason}")
        except Exception as err:  # one step failing should still let the server stop and the summary print
            outcome = "FAILED"
            print(f"FAILED: {type(err).__name__}: {err}")
        seconds = time.perf_counter() - began
        print(f"--- {outcome} in {seconds:.1f}s", flush=True)
        self.results.append((title, outcome, seconds))
        return value

    @property
    def passed(self) -> bool:
        return all(outcome != "FAILED" for _, outcome, _ in self.results)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    shown = [str(c) for c in cmd]
    if shown[:3] == [sys.executable, "-m", "lora_endpoint"]:  # what a user types: the console script
        shown = ["lora-endpoint", *shown[3:]]
    print("$ " + " ".join("python" if c == sys.executable else c for c in shown), flush=True)
    return subprocess.run([str(c) for c in cmd], cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout,
                          capture_output=True, text=True)


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def pretrain_base(base: Path) -> None:
    config = DEMO.model
    print(f"Llama: hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab {config.vocab_size}; "
          f"tokenizer trained on scripts/data/; {DEMO.pretrain_steps} steps of next-token loss on corpus.txt")
    build_base(base, DEMO, progress=sys.stderr.isatty())


def train_adapter(base: Path, adapter: Path) -> bool:
    args = ["--base-model", rel(base), "--data", rel(QA), "--output", rel(adapter), *DEMO.train_lora_args()]
    print("$ lora-endpoint train " + " ".join(args), flush=True)
    quiet = [] if sys.stderr.isatty() else ["--no-progress"]
    return train_lora.main([*args, "--threads", "1", *quiet]) == 0


def package(base: Path, adapter: Path, archive: Path) -> None:
    args = ["package", "build", "--base-model", rel(base), "--adapter", f"{ADAPTER}={rel(adapter)}", "--output",
            rel(archive), "--no-progress"]
    proc = run([sys.executable, "-m", "lora_endpoint", *args])
    print((proc.stdout + proc.stderr).strip())
    if proc.returncode != 0:
        raise RuntimeError(f"lora-endpoint package build exited {proc.returncode}")


class Server:
    """``lora-endpoint serve`` as a child process; its log goes to a file in the work dir."""

    def __init__(self, archive: Path, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = log_path.open("w")
        cmd = [sys.executable, "-m", "lora_endpoint", "serve", rel(archive), "--port", str(port), "--endpoint-name",
               ENDPOINT, "--log-level", "warning"]
        print("$ lora-endpoint " + " ".join(cmd[3:]), flush=True)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ONE_THREAD}, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as response:
                    if response.status == 200:
                        print(f"GET {self.url}/ping -> 200 (server pid {self.proc.pid})")
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"no 200 from {self.url}/ping within {timeout:.0f}s:\n{self.tail()}")

    def stop(self, timeout: float = 30) -> bool:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"the server did not stop within {timeout:.0f}s of SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        code = self.proc.returncode
        print(f"server stopped, exit code {code} (0 or -{signal.SIGTERM.value}: a clean SIGTERM shutdown)")
        return code in (0, -signal.SIGTERM)

    def tail(self, lines: int = 15) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def runtime_client(url: str) -> Any:
    import boto3

    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="demo", aws_secret_access_key="demo")


def ask(client: Any, prompt: str, adapter: str | None) -> str:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}, "adapters": adapter}
    response = client.invoke_endpoint(EndpointName=ENDPOINT, ContentType="application/json", Body=json.dumps(body))
    return str(json.loads(response["Body"].read())["generated_text"])


def compare(client: Any) -> bool:
    """Every bundled question to the base model and to the adapter; >= 8 of 10 vs none is the claim."""
    rows, right, base_right = [], 0, 0
    for example in questions():
        base, tuned = ask(client, example.prompt, None), ask(client, example.prompt, ADAPTER)
        ok, base_ok = is_correct(tuned, example.response), is_correct(base, example.response)
        right, base_right = right + ok, base_right + base_ok
        question = example.prompt.removeprefix("Question: ").split("\n")[0]
        rows.append((question, example.response.strip(), first_line(base), first_line(tuned), "yes" if ok else "no"))
    print_table(("question", "expected", "base model", f"adapter {ADAPTER!r}", "right"), rows)
    count = len(rows)
    print(f"\nadapter: {right}/{count} right, base model: {base_right}/{count} right (greedy, {MAX_NEW_TOKENS} tokens)")
    return right >= 0.8 * count and base_right == 0


def first_line(text: str, width: int = 24) -> str:
    line = text.strip().split("\n")[0]
    return line if len(line) <= width else line[: width - 1] + "~"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for index, row in enumerate([header, *rows]):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def stream_one(client: Any) -> bool:
    example = questions(1)[0]
    body = {"inputs": example.prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}, "adapters": ADAPTER,
            "stream": True}  # as with LMI: the body asks for token streaming, one JSON line per token
    print(f"invoke_endpoint_with_response_stream, adapter {ADAPTER!r}:\n{example.prompt}", end="", flush=True)
    response = client.invoke_endpoint_with_response_stream(EndpointName=ENDPOINT, ContentType="application/json",
                                                           Body=json.dumps(body))
    buffer, text, events = b"", "", 0
    for event in response["Body"]:
        if "PayloadPart" not in event:
            continue
        events += 1
        buffer += event["PayloadPart"]["Bytes"]
        *lines, buffer = buffer.split(b"\n")
        for line in filter(None, lines):
            item = json.loads(line)
            piece = item["token"]["text"] if "token" in item else item.get("generated_text", "")
            text += piece
            print(piece, end="", flush=True)
    print(f"\n({events} PayloadPart events)")
    return is_correct(text, example.response)


def smoke(url: str) -> bool:
    proc = run([sys.executable, "-m", "lora_endpoint", "smoke", "--endpoint-url", url, "--endpoint-name", ENDPOINT],
               env=FAKE_AWS)
    print((proc.stdout + proc.stderr).strip())
    return proc.returncode == 0


def synth(archive: Path, out: Path) -> None:
    if importlib.util.find_spec("aws_cdk") is None:  # find, not import: importing starts a node process
        raise Skip("aws-cdk-lib is not installed (pip install -e '.[cdk]')")
    if not (ROOT / "cdk" / "app.py").is_file():
        raise Skip("cdk/app.py is missing")
    if shutil.which("node") is None:
        raise Skip("Node.js is not on PATH (the CDK libraries run on it)")
    context = {"model_data": str(archive.resolve())}
    proc = run([sys.executable, "-m", "cdk.app"], timeout=240, env={
        "CDK_OUTDIR": str(out), "CDK_CONTEXT_JSON": json.dumps(context),
        "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION": "1", "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1"})
    print(f"(CDK_OUTDIR={rel(out)} CDK_CONTEXT_JSON='{json.dumps(context)}')")
    if proc.returncode != 0:
        raise RuntimeError(f"synth exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    templates = sorted(out.glob("*.template.json"))
    if not templates:
        raise RuntimeError(f"no template in {out}")
    for template in templates:
        resources = json.loads(template.read_text()).get("Resources", {})
        counts = Counter(resource["Type"] for resource in resources.values())
        print(f"\n`cdk deploy` would create {len(resources)} resources ({rel(template)}):")
        print_table(("resource type", "count"), [(kind, str(n)) for kind, n in sorted(counts.items())])


NEXT_STEPS = """\
Next steps for a real deployment (README: "From the demo to AWS"):
  1. Train on your data against your base model:
       lora-endpoint train --base-model ./my-base --data my-data.jsonl --output out/my-adapter
  2. Serve it locally as the container will:
       lora-endpoint package build --base-model ./my-base --adapter mine=out/my-adapter --output dist/model.tar.gz
       lora-endpoint serve dist/model.tar.gz --port 8080
  3. Package, upload and deploy in one command (GPU quota for ml.g5.2xlarge, AWS credentials, Node.js with
     `npm ci` and `npx cdk bootstrap aws://ACCOUNT/us-east-1` once):
       lora-endpoint deploy --base-model ./my-base --adapter mine=out/my-adapter --upload s3://my-bucket/models \\
           -c account=ACCOUNT -c region=us-east-1
  4. Smoke-test the endpoint:
       lora-endpoint smoke --endpoint-name lora-endpoint --region us-east-1
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-endpoint demo",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo",
                        help="where every artifact goes; emptied first if a previous demo made it (default: .demo/)")
    parser.add_argument("--port", type=int, default=0, help="local endpoint port (default: a free one)")
    parser.add_argument("--skip-cdk", action="store_true", help="do not synthesize the CDK stack")
    args = parser.parse_args(argv)
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # the steps have their own headers and timings
    work = args.workdir.resolve()
    if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        print(f"demo: refusing to empty --workdir {work}: it is not empty and not a demo work dir (no {MARKER})",
              file=sys.stderr)
        return 2
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARKER).write_text("made by scripts/demo.py; emptied by its next run\n")
    base, adapter, archive = work / "base", work / "adapters" / ADAPTER, work / "model.tar.gz"
    demo = Demo(total=9)
    print(f"lora-endpoint demo: everything goes to {rel(work)}/")
    demo.step("Build a tiny base model and pretrain it on bundled text", lambda: pretrain_base(base))
    demo.step("Train a LoRA adapter on 10 invented facts", lambda: train_adapter(base, adapter))
    demo.step("Package base + adapter (lora-endpoint package build)", lambda: package(base, adapter, archive))
    server: Server | None = None
    try:
        def start() -> None:
            nonlocal server
            if not archive.is_file():
                raise Skip("no package was built")
            server = Server(archive, args.port or free_port(), work / "server.log")
            server.wait_ready()

        demo.step("Start the local endpoint (lora-endpoint serve)", start)
        client = runtime_client(server.url) if server else None

        def needs_server(action: Callable[[Any], bool]) -> Callable[[], bool]:
            def call() -> bool:
                if client is None:
                    raise Skip("the local endpoint is not running")
                return action(client)
            return call

        demo.step("Ask the base model and the adapter, via boto3 invoke_endpoint", needs_server(compare))
        demo.step("Stream one answer, via boto3 invoke_endpoint_with_response_stream", needs_server(stream_one))
        demo.step("Smoke test (lora-endpoint smoke)", needs_server(lambda _: smoke(server.url)))  # type: ignore[union-attr]

        def cdk() -> None:
            if args.skip_cdk:
                raise Skip("--skip-cdk")
            if not archive.is_file():
                raise Skip("no package was built")
            synth(archive, work / "cdk.out")

        demo.step("Synthesize the CDK stack for this package", cdk)
    finally:
        demo.step("Stop the local endpoint (SIGTERM)", lambda: server.stop() if server else None)
    total = time.perf_counter() - demo.started
    print("\n=== Summary " + "=" * 66)
    print_table(("step", "result", "seconds"), [(t, o, f"{s:.1f}") for t, o, s in demo.results])
    print(f"\ntotal {total:.0f}s; artifacts in {rel(work)}/\n")
    print(NEXT_STEPS)
    return 0 if demo.passed else 1


if __name__ == "__main__":
    sys.exit(main())
