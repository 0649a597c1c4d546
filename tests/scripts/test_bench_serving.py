"""The serving comparison's command line, server processes, peer command and its docs section."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import bench
from scripts.bench_common import write_doc
from scripts.bench_servers import ServerFailed, free_port, serving, vllm_command
from scripts.bench_serving import parse_args
from scripts.bench_serving_report import PEER_BEGIN, PEER_END, render


@pytest.mark.parametrize(("argv", "message"), [
    (["--models", "7b"], "--models must name 20m and/or 170m, got 7b"),
    (["--clients", "1,0"], "every value must be at least 1"),
    (["--clients", "one"], "expected comma-separated integers"),
    (["--per-client", "0"], "--per-client must be at least 1, got 0"),
    (["--new-tokens", "600"], "at most 512"),
    (["--peer-python", "/nonexistent/python"], "is not an executable file"),
])
def test_bad_command_lines_exit_2_with_the_reason(argv: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_bench_py_hands_the_serving_subcommand_over(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["serving", "--models", "7b"])
    assert exit_info.value.code == 2
    assert "lora-endpoint bench serving: error: --models" in capsys.readouterr().err


def test_defaults_are_the_issues_load() -> None:
    args = parse_args([])
    assert (args.models, args.clients, args.new_tokens) == (["20m", "170m"], (1, 4, 16), 64)


def test_vllm_command_serves_every_adapter_by_name(tmp_path: Path) -> None:
    cmd = vllm_command("/py", tmp_path, 8000, adapters=["a0", "a1"], max_num_seqs=16, max_model_len=1024)
    assert cmd[:3] == ["/py", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == str(tmp_path / "base")
    start = cmd.index("--lora-modules") + 1
    assert cmd[start : start + 2] == [f"a0={tmp_path / 'adapters' / 'a0'}", f"a1={tmp_path / 'adapters' / 'a1'}"]
    assert cmd[cmd.index("--max-loras") + 1] == "2" and cmd[cmd.index("--served-model-name") + 1] == "base"


def test_a_server_that_exits_fails_with_the_last_line_of_its_log(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; print('starting'); print('no such model'); sys.exit(3)"]
    with pytest.raises(ServerFailed, match="exited with 3: no such model"), \
            serving(cmd, port=free_port(), log=tmp_path / "log"):
        pass


def test_a_server_is_up_inside_the_block_and_gone_after(tmp_path: Path) -> None:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    with serving(cmd, port=port, log=tmp_path / "log", ready_path="/", timeout_s=60) as server:
        assert httpx.get(server.url + "/").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/", timeout=2)


def _summary(tok_s: float, p50: float) -> dict[str, Any]:
    return {"clients": 1, "requests": 2, "tokens": 128, "wall_s": 1.0, "tok_s": tok_s, "p50_s": p50, "p99_s": p50,
            "errors": 0, "wrong_counts": 0, "first_error": ""}


def _figures(vllm: dict[str, Any]) -> dict[str, Any]:
    ttft = {"solo_ttft_s": 0.05, "step_s": 0.01, "ttft_during_s": 1.2, "bound_s": 0.07, "long_finished_first": True}
    ours = {"params": 21_000_000, "startup_s": 5.0, "load_at_start": 0.25, "load_at_serving": 1.75, "ttft": ttft,
            "1": _summary(100, 0.6), "16": _summary(400, 2.4),
            "static": {"rows": 16, "seconds": 2.0, "tok_s": 500.0}, "identical_1": _summary(110, 0.5),
            "identical_16": _summary(450, 2.0),
            "mixed": {"single_adapter_tok_s": 800.0, "mixed_adapter_tok_s": 520.0, "ratio": 0.65}}
    return {"commit": "abc1234", "machine": "x86_64, 2 CPU cores", "load_before": 0.5, "load_after": 1.5,
            "versions": {"torch": "2.13.0", "transformers": "5.24.0", "peft": "0.21.2"},
            "peer_versions": {"vllm": "0.32.0", "torch": "2.13.0", "transformers": "5.19.0"},
            "load": {"clients": [1, 16], "per_client": 2, "new_tokens": 64, "stagger_s": 0.01, "long_tokens": 128,
                     "max_rows": 16, "repeat": 2},
            "models": {"20m": {"ours": ours, "vllm": vllm}}}


def test_the_section_sets_the_sides_next_to_each_other_with_the_targets() -> None:
    vllm = {"startup_s": 40.0, "load_at_serving": 1.75, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}, "1": _summary(50, 1.0),
            "16": _summary(380, 2.0), "ttft": None}
    text = render(_figures(vllm), "python scripts/bench.py serving")
    assert text.startswith(PEER_BEGIN) and text.endswith(PEER_END)
    rows = [line for line in text.splitlines() if line.startswith("| 21.0M |")]
    assert rows[0].split(" | ")[2:5] == ["100", "50", "2.00x"] and rows[0].endswith("| >= 1.0x |")
    assert rows[1].split(" | ")[2:5] == ["400", "380", "1.05x"] and rows[1].endswith("| >= 1.3x |")
    assert "| 450 vs 500 tok/s = 0.90x | >= 0.9x |" in text
    assert "| 520 vs 800 tok/s = 0.65x | >= 0.95x |" in text
    assert "Measured on commit abc1234." in text and "before / after the run: 0.50 / 1.50" in text
    assert "vLLM 0.32.0 (torch 2.13.0, transformers 5.19.0)" in text
    assert "| 0.25 / 1.75 | measured |" in text and "| 5 s / 40 s | measured |" in text


def test_a_peer_that_did_not_run_says_why_and_shows_no_figures() -> None:
    text = render(_figures({"skipped": "api_server exited with 1: head size 16 is not supported"}), "cmd")
    assert "vLLM did not run on the 21.0M model: api_server exited with 1: head size 16 is not supported" in text
    row = next(line for line in text.splitlines() if line.startswith("| 21.0M | 16 |"))
    assert row.split(" | ")[3:5] == ["not run", "n/a"]


def test_the_section_replaces_only_its_own_markers(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:serving -->\nold serving\n<!-- /bench:serving -->\n")
    write_doc(f"{PEER_BEGIN}\nfirst\n{PEER_END}", doc, PEER_BEGIN, PEER_END)
    write_doc(f"{PEER_BEGIN}\nsecond\n{PEER_END}", doc, PEER_BEGIN, PEER_END)
    text = doc.read_text()
    assert "old serving" in text and "second" in text and "first" not in text
    assert text.count(PEER_BEGIN) == 1 and text.index("old serving") < text.index("second")
    assert [p.name for p in tmp_path.iterdir()] == ["benchmarks.md"]


SIGTERM_CHILD = """
import sys, time
from pathlib import Path
from scripts import bench_serving
from scripts.bench_servers import free_port, serving

def run(args, argv):
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    with serving(cmd, port=port, log=Path(sys.argv[1]) / "log", ready_path="/") as server:
        (Path(sys.argv[1]) / "url").write_text(server.url)
        time.sleep(60)
    return 0

bench_serving._run = run
sys.exit(bench_serving.main([]))
"""


def test_sigterm_stops_the_servers_and_exits_130(tmp_path: Path) -> None:
    import signal
    import subprocess
    import time

    import httpx

    from scripts.bench_common import ROOT

    # GIVEN a serving run with a server up
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(tmp_path)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "url").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.1)
    url = (tmp_path / "url").read_text()
    # WHEN the run gets SIGTERM
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    # THEN it says so, exits 130, and its server is gone
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "interrupted: servers stopped, nothing written"
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/", timeout=2)


def test_a_peer_that_cannot_start_is_reported_and_our_side_still_runs(tmp_path: Path) -> None:
    from scripts.bench_serving import MODELS, Load, Peer, build, served

    # GIVEN the smallest model dir and a "python" for the peer that fails the way a broken venv does
    model_dir = build(tmp_path / "model", MODELS["quick"])
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named vllm' >&2\nexit 1\n")
    broken.chmod(0o755)
    load = Load(clients=(1, 2), per_client=1, new_tokens=4, stagger_s=0.0, long_tokens=12, max_rows=16,
                repeat=1)
    # WHEN both sides are served
    mine, theirs = served(model_dir, load, "cpu", Peer(str(broken), "all", timeout_s=60))
    # THEN the peer says why it did not run, and ours has every run, each with the tokens asked for
    assert theirs == {"skipped": "vllm.entrypoints.openai.api_server exited with 1: "
                                 "ModuleNotFoundError: No module named vllm"}
    for key, requests in (("1", 1), ("2", 2), ("identical_1", 1), ("identical_16", 16)):
        assert (mine[key]["requests"], mine[key]["errors"], mine[key]["wrong_counts"]) == (requests, 0, 0), key
    assert mine["ttft"]["solo_ttft_s"] > 0
