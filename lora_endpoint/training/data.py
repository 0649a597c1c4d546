"""Fine-tuning data: read prompt/response pairs or chat conversations, tokenise with response-only labels.

Two record shapes, one per JSONL line or as the items of a JSON list:

- ``{"prompt": str, "response": str}``: trained as ``prompt`` followed by ``response`` and EOS, the way
  the endpoint sees ``{"inputs": prompt}`` (``--prompt-format raw``), or as one user turn and one
  assistant turn through the tokenizer's chat template (``--prompt-format chat``);
- ``{"messages": [{"role", "content"}, ...]}``: rendered with the tokenizer's chat template, the way the
  endpoint's chat route renders them.

Only response tokens (every assistant turn) carry a loss; prompt tokens get the label -100.
No torch here: lists of ints, so the shapes are testable without a model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100  # torch's cross-entropy ignore_index
PROMPT_FORMATS = ("raw", "chat")
ROLES = frozenset({"system", "user", "assistant"})


class DatasetError(ValueError):
    """A dataset the trainer cannot use; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class Example:
    """One training record: ``messages`` is set for chat records, ``prompt``/``response`` otherwise."""

    prompt: str = ""
    response: str = ""
    messages: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one example (labels are -100 where no loss is taken)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _example(record: Any, where: str) -> Example:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DatasetError(f"{where}: messages must be a non-empty list")
        out = []
        for index, message in enumerate(messages):
            if (not isinstance(message, dict) or message.get("role") not in ROLES
                    or not isinstance(message.get("content"), str)):
                raise DatasetError(f"{where}: messages[{index}] must be {{\"role\": one of "
                                   f"{', '.join(sorted(ROLES))}, \"content\": string}}")
            out.append({"role": message["role"], "content": message["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise DatasetError(f"{where}: messages has no assistant turn to learn from")
        return Example(messages=tuple(out))
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DatasetError(f"{where}: expected {{\"prompt\": string, \"response\": string}} or {{\"messages\": [...]}}")
    if not response:
        raise DatasetError(f"{where}: response is empty")
    return Example(prompt=prompt, response=response)


def load_examples(path: str | Path) -> list[Example]:
    """Read a ``.jsonl`` file (one record a line, blank lines skipped) or a ``.json`` list of records."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: no such file")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{source}: cannot read: {err}") from None
    examples: list[Example] = []
    stripped = text.lstrip()
    if source.suffix == ".json" or stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{source}: line {err.lineno}: invalid JSON: {err.msg}") from None
        if not isinstance(records, list):
            raise DatasetError(f"{source}: a .json dataset must be a list of records")
        examples = [_example(r, f"{source}: item {i}") for i, r in enumerate(records)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{source}: line {number}: invalid JSON: {err.msg}") from None
            examples.append(_example(record, f"{source}: line {number}"))
    if not examples:
        raise DatasetError(f"{source}: the dataset is empty")
    return examples


def _chat_segments(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split a rendered conversation into (text, is_target) pieces: every assistant turn is a target."""
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError("the tokenizer has no chat template: use prompt/response records with --prompt-format raw")
    segments: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(list(messages[:index]), tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(list(messages[: index + 1]), tokenize=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise DatasetError("the chat template does not render conversations incrementally; "
                               "cannot tell prompt tokens from response tokens")
        segments += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    return segments


def encode(tokenizer: Any, example: Example, *, max_length: int, prompt_format: str = "raw") -> Encoded:
    """Token ids and response-only labels, truncated to ``max_length`` tokens.

    Prompt and response are tokenised separately, as at serving time: the endpoint tokenises the prompt
    alone and the model then produces the response tokens, so the boundary matches exactly.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    labels: list[int] = []
    if example.messages or prompt_format == "chat":
        messages = example.messages or ({"role": "user", "content": example.prompt},
                                        {"role": "assistant", "content": example.response})
        for text, target in _chat_segments(tokenizer, messages):
            piece = tokenizer(text, add_special_tokens=False).input_ids
            if target and eos is not None and eos not in piece:
                piece = [*piece, eos]
            ids += piece
            labels += piece if target else [IGNORE_INDEX] * len(piece)
    else:
        prompt_ids = tokenizer(example.prompt).input_ids  # special tokens as the endpoint adds them
        response_ids = tokenizer(example.response, add_special_tokens=False).input_ids
        if eos is not None:
            response_ids = [*response_ids, eos]
        ids = [*prompt_ids, *response_ids]
        labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return Encoded(tuple(ids[:max_length]), tuple(labels[:max_length]))


def encode_all(tokenizer: Any, examples: Sequence[Example], *, max_length: int,
               prompt_format: str = "raw") -> tuple[list[Encoded], int]:
    """Encode every example; ones left with no response token after truncation are dropped (and counted)."""
    if prompt_format not in PROMPT_FORMATS:
        raise DatasetError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    encoded = [encode(tokenizer, e, max_length=max_length, prompt_format=prompt_format) for e in examples]
    kept = [e for e in encoded if e.target_tokens > 0]
    if not kept:
        raise DatasetError(f"no example has a response token within --max-length {max_length}")
    return kept, len(encoded) - len(kept)


def split(items: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded shuffle split into (train, eval); eval holds ``fraction`` of the items, at least one if > 0."""
    import random

    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if fraction <= 0 or len(items) < 2 else min(len(items) - 1, max(1, round(len(items) * fraction)))
    return [items[i] for i in order[n_eval:]], [items[i] for i in order[:n_eval]]
