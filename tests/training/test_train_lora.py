"""``lora-endpoint train`` on the session's tiny Llama: loss goes down, the output loads with peft and the
handler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_endpoint.commands import train as train_lora
from lora_endpoint.packaging.compat import pending
from lora_endpoint.training.data import load_examples
from lora_endpoint.training.trainer import TrainConfig


def yes_dataset(path: Path, count: int = 12) -> Path:
    """A pattern a tiny model learns in a few steps, and that generalises to held-out records."""
    records = [{"prompt": f"Question: is {n} a number?\nAnswer:", "response": " Yes."} for n in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def trained(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Run the command once: (adapter dir, stdout, stderr)."""
    import contextlib
    import io

    import torch

    work = tmp_path_factory.mktemp("train")
    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = train_lora.main([
                "--base-model", str(tiny_model_dir / "base"), "--data", str(yes_dataset(work / "yes.jsonl")),
                "--output", str(work / "adapter"), "--rank", "8", "--alpha", "16", "--epochs", "6",
                "--target-modules", "q_proj,v_proj,o_proj,down_proj", "--batch-size", "4",
                "--learning-rate", "3e-2", "--eval-split", "0.25", "--seed", "3",
                "--no-progress",
            ])
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err.getvalue()
    return work / "adapter", out.getvalue(), err.getvalue()


def test_training_lowers_train_and_eval_loss(tiny_model_dir: Path, tmp_path: Path, one_thread: None) -> None:
    from lora_endpoint.training.trainer import train_lora as train

    result = train(tiny_model_dir / "base", yes_dataset(tmp_path / "yes.jsonl"), tmp_path / "out",
                   TrainConfig(rank=8, epochs=5, batch_size=4, learning_rate=3e-2, eval_split=0.25, seed=1),
                   progress=False, log=lambda _: None)
    assert (result.train_examples, result.eval_examples) == (9, 3)
    assert len(result.train_losses) == 5 * 3 and len(result.eval_losses) == 1 + 5
    first, last = result.train_losses[:3], result.train_losses[-3:]
    assert sum(last) / 3 < 0.5 * sum(first) / 3
    assert result.eval_losses[-1] < 0.6 * result.eval_losses[0]


def test_same_seed_same_adapter(tiny_model_dir: Path, tmp_path: Path, one_thread: None) -> None:
    from safetensors.torch import load_file

    from lora_endpoint.training.trainer import train_lora as train

    data = yes_dataset(tmp_path / "yes.jsonl", count=4)
    config = TrainConfig(rank=4, epochs=1, batch_size=2, seed=7)
    for name in ("a", "b"):
        train(tiny_model_dir / "base", data, tmp_path / name, config, progress=False, log=lambda _: None)
    a, b = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_command_writes_a_peft_adapter_with_the_options_given(trained: tuple[Path, str, str]) -> None:
    adapter, stdout, stderr = trained
    assert stdout.strip().splitlines()[-1] == str(adapter)
    assert "epoch 6/6: train loss" in stderr and "eval loss" in stderr
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 16, 0.1)
    assert sorted(config["target_modules"]) == ["down_proj", "o_proj", "q_proj", "v_proj"]
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "adapter_model.bin").exists()
    assert pending(adapter, owner="trained") == [], "written so that peft 0.13+ reads it"


def test_output_loads_with_peft(trained: tuple[Path, str, str], tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir / "base", dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(trained[0]))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained: peft initialises lora_B to zero


def test_handler_serves_the_trained_adapter(trained: tuple[Path, str, str], tiny_model_dir: Path,
                                            tmp_path: Path) -> None:
    from lora_endpoint.contract.settings import HandlerSettings
    from lora_endpoint.handler.kinds import parse_body
    from lora_endpoint.handler.loading import load_model
    from lora_endpoint.handler.service import run

    # GIVEN a model dir in the endpoint's layout with the trained adapter under adapters/yes
    shutil.copytree(tiny_model_dir / "base", tmp_path / "base")
    shutil.copytree(trained[0], tmp_path / "adapters" / "yes")
    settings = HandlerSettings.from_env({})
    lm = load_model(tmp_path, settings)
    assert sorted(lm.adapters) == ["yes"]
    # WHEN the same held-out style prompt goes to the base and to the adapter, greedy
    prompt = "Question: is 99 a number?\nAnswer:"
    body = {"inputs": [prompt, prompt], "adapters": [None, "yes"], "parameters": {"max_new_tokens": 4}}
    base_answer, adapter_answer = run(lm, [parse_body(body, settings)])[0]
    # THEN the adapter has learnt the pattern and the base has not
    assert adapter_answer["generated_text"].startswith(" Yes")
    assert not base_answer["generated_text"].startswith(" Yes")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ('{"prompt": "a", "response": "b"}\nnot json\n', "line 2: invalid JSON"),
        ("", "the dataset is empty"),
    ],
)
def test_bad_dataset_exits_2_with_one_line(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                           content: str | None, message: str) -> None:
    data = tmp_path / "data.jsonl"
    if content is not None:
        data.write_text(content)
    code = train_lora.main(["--base-model", str(tiny_model_dir / "base"), "--data", str(data),
                            "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "0"], "--rank must be >= 1"),
        (["--eval-split", "0.9"], "--eval-split must be in [0, 0.5]"),
        (["--target-modules", "nope_proj"], "--target-modules nope_proj"),
        (["--base-model", "./no/such/base"], "--base-model ./no/such/base: no such folder"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                            args: list[str], message: str) -> None:
    data = yes_dataset(tmp_path / "yes.jsonl", count=2)
    code = train_lora.main(["--base-model", str(tiny_model_dir / "base"), "--data", str(data),
                            "--output", str(tmp_path / "out"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train_lora.main(["--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for action in train_lora.parser()._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, action.dest


def test_bundled_qa_set_is_valid() -> None:
    from scripts.demo_model import QA

    examples = load_examples(QA)
    assert len(examples) == 10 and len({e.response for e in examples}) == 10
