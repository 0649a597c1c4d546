"""Dataset loading and tokenisation: record shapes, response-only labels, errors that name the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.training.data import IGNORE_INDEX, DatasetError, Example, encode, encode_all, load_examples, split
from scripts.tiny_model import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_jsonl_and_json_list_give_the_same_examples(tmp_path: Path) -> None:
    records = [{"prompt": "Q: a?\nA:", "response": " b"},
               {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    from_jsonl = load_examples(write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\n"))
    from_json = load_examples(write(tmp_path / "d.json", json.dumps(records)))
    assert from_jsonl == from_json
    assert from_jsonl[0] == Example(prompt="Q: a?\nA:", response=" b")
    assert from_jsonl[1].messages[1] == {"role": "assistant", "content": "hello"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "a", "response": "b"}\n{"prompt": \n', "line 2: invalid JSON"),
        ('{"prompt": "a", "response": "b"}\n\n[1, 2]\n', "line 3: expected an object"),
        ('{"prompt": "a"}\n', "line 1: expected {\"prompt\": string"),
        ('{"prompt": "a", "response": ""}\n', "line 1: response is empty"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1: messages has no assistant turn"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}\n', "line 1: messages[0] must be"),
        ("\n\n", "the dataset is empty"),
    ],
)
def test_bad_records_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_examples(write(tmp_path / "d.jsonl", text))


def test_missing_file_and_json_that_is_not_a_list(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_examples(tmp_path / "absent.jsonl")
    with pytest.raises(DatasetError, match="must be a list"):
        load_examples(write(tmp_path / "d.json", '{"prompt": "a", "response": "b"}'))


def test_raw_pair_labels_only_the_response_and_eos(tokenizer: Any) -> None:
    encoded = encode(tokenizer, Example(prompt="Question: what?\nAnswer:", response=" Paris."), max_length=64)
    prompt_ids = tokenizer("Question: what?\nAnswer:").input_ids
    response_ids = tokenizer(" Paris.", add_special_tokens=False).input_ids
    assert encoded.input_ids == (*prompt_ids, *response_ids, tokenizer.eos_token_id)
    assert encoded.labels == (*[IGNORE_INDEX] * len(prompt_ids), *response_ids, tokenizer.eos_token_id)


def test_chat_labels_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ciao"})
    encoded = encode(tokenizer, Example(messages=messages), max_length=256)
    # THEN the ids are the chat template's rendering, as the endpoint's chat route tokenises it
    rendered = tokenizer.apply_chat_template(list(messages), tokenize=False)
    assert tokenizer.decode(list(encoded.input_ids)) == rendered
    # AND the labelled text is exactly the two assistant turns with their end markers
    targets = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(targets) == "hello</s>\nciao</s>\n"


def test_prompt_format_chat_renders_a_pair_as_two_turns(tokenizer: Any) -> None:
    pair = encode(tokenizer, Example(prompt="hi", response="hello"), max_length=64, prompt_format="chat")
    chat = encode(tokenizer, Example(messages=({"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "hello"})), max_length=64)
    assert pair == chat


def test_truncation_drops_examples_left_without_a_response_token(tokenizer: Any) -> None:
    long_prompt = Example(prompt="word " * 50, response=" yes")
    short = Example(prompt="Q:", response=" yes")
    kept, dropped = encode_all(tokenizer, [long_prompt, short], max_length=8)
    assert dropped == 1 and len(kept) == 1 and all(len(e.input_ids) <= 8 for e in kept)
    with pytest.raises(DatasetError, match="--max-length 8"):
        encode_all(tokenizer, [long_prompt], max_length=8)


def test_split_is_seeded_and_keeps_a_training_example() -> None:
    items = list(range(10))
    train, held = split(items, 0.2, seed=1)
    assert sorted(train + held) == items and len(held) == 2
    assert split(items, 0.2, seed=1) == (train, held)
    assert split([1], 0.5, seed=0) == ([1], [])
    assert split(items, 0.0, seed=0)[1] == []
