"""The demo's model: a tiny Llama pretrained a little on bundled text, and a LoRA adapter on a bundled Q&A set.

``make demo`` runs these with ``DEMO`` sizes; the tests run them with ``REDUCED`` sizes on a subset of
the questions. The Q&A answers are invented, so the base model cannot know them: the adapter must.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lora_endpoint.training.data import Example, load_examples
from lora_endpoint.training.trainer import Log, TrainConfig, TrainResult, pretrain, train_lora
from scripts.tiny_model import TinyModelConfig, build_tiny_model, build_tokenizer

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS = DATA_DIR / "corpus.txt"
QA = DATA_DIR / "qa.jsonl"


@dataclass(frozen=True)
class DemoSizes:
    """How big the demo model is and how long each training phase runs."""

    # Head dim 32 (96 / 3 heads): the smallest vLLM's CPU attention accepts, so both engines serve the demo.
    model: TinyModelConfig = field(default_factory=lambda: TinyModelConfig(
        hidden_size=96, intermediate_size=288, num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=3,
        max_position_embeddings=256, vocab_size=512, initializer_range=0.02, seed=0))
    pretrain_steps: int = 150
    lora_epochs: int = 200
    lora_batch_size: int = 10
    lora_learning_rate: float = 2e-2
    seed: int = 0

    def lora_config(self) -> TrainConfig:
        """The CLI defaults (r=64, alpha=16, dropout 0.1, q_proj/v_proj) with a higher learning rate and
        many epochs, since ten facts must be memorised; no eval split: every question is trained on."""
        return TrainConfig(epochs=self.lora_epochs, batch_size=self.lora_batch_size,
                           learning_rate=self.lora_learning_rate, eval_split=0.0, seed=self.seed)

    def train_lora_args(self) -> list[str]:
        """The same run spelled as ``lora_endpoint/commands/train.py`` options (printed by the demo)."""
        c = self.lora_config()
        return ["--epochs", str(c.epochs), "--batch-size", str(c.batch_size), "--learning-rate", str(c.learning_rate),
                "--eval-split", "0", "--seed", str(c.seed)]


DEMO = DemoSizes()
REDUCED = DemoSizes(pretrain_steps=60, lora_epochs=150, lora_batch_size=2)


def questions(limit: int | None = None) -> list[Example]:
    """The bundled Q&A pairs (the first ``limit`` of them)."""
    return load_examples(QA)[:limit]


def write_subset(examples: Sequence[Example], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.response}) + "\n" for e in examples))
    return path


def build_base(out_dir: Path, sizes: DemoSizes = DEMO, *, progress: bool = True, log: Log = print) -> TrainResult:
    """A tokenizer trained on the bundled text and questions, a seeded tiny Llama, a little pretraining.

    The answers' words are in the tokenizer's training text (so they are a few tokens each), never in
    the pretraining text (so the base model has not seen them).
    """
    corpus = CORPUS.read_text(encoding="utf-8")
    tokenizer = build_tokenizer([corpus, *(e.prompt + e.response for e in questions())],
                                vocab_size=sizes.model.vocab_size)
    build_tiny_model(out_dir, sizes.model, tokenizer=tokenizer)
    return pretrain(out_dir, [corpus], steps=sizes.pretrain_steps, seed=sizes.seed, progress=progress, log=log)


def train_adapter(base_dir: Path, data: Path, out_dir: Path, sizes: DemoSizes = DEMO, *, progress: bool = True,
                  log: Log = print) -> TrainResult:
    return train_lora(base_dir, data, out_dir, sizes.lora_config(), progress=progress, log=log)


def is_correct(generated: str, expected: str) -> bool:
    """The answer counts when the generated text starts with it (trailing full stop optional)."""
    want = expected.strip().rstrip(".").lower()
    return bool(want) and generated.strip().lower().startswith(want)
