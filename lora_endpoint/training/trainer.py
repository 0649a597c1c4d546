"""LoRA fine-tuning (and the demo's little pretraining): a plain torch AdamW loop, seeded.

``train_lora`` is what ``lora_endpoint/commands/train.py`` runs: load the base model, attach a fresh LoRA
adapter, train on response tokens only, report eval loss on a held-out split, and write the adapter
with ``save_pretrained(safe_serialization=True)``, a folder that ``lora_endpoint.packaging build --adapter
NAME=PATH`` accepts. ``pretrain`` trains every weight of a (tiny) model on plain text. Both normalise
what they write so that older transformers / peft read it alike (``lora_endpoint.packaging.compat``).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_endpoint.packaging.compat import normalise_folder
from lora_endpoint.training.data import IGNORE_INDEX, PROMPT_FORMATS, Encoded, encode_all, load_examples, split

Log = Callable[[str], None]


class TrainingInputError(ValueError):
    """Settings the run cannot start with (missing base model, unknown target module, no CUDA)."""


@dataclass(frozen=True)
class TrainConfig:
    """LoRA and optimiser settings; validated on construction, messages name the option."""

    rank: int = 64
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: int = 3
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_length: int = 512
    eval_split: float = 0.1
    seed: int = 0
    prompt_format: str = "raw"
    warmup_steps: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.rank >= 1, f"--rank must be >= 1, got {self.rank}"),
            (self.alpha >= 1, f"--alpha must be >= 1, got {self.alpha}"),
            (0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}"),
            (bool(self.target_modules) and all(self.target_modules), "--target-modules must name at least one module"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (0.0 < self.learning_rate < 1.0, f"--learning-rate must be in (0, 1), got {self.learning_rate}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.max_length >= 2, f"--max-length must be >= 2, got {self.max_length}"),
            (0.0 <= self.eval_split <= 0.5, f"--eval-split must be in [0, 0.5], got {self.eval_split}"),
            (self.prompt_format in PROMPT_FORMATS, f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}"),
            (self.warmup_steps >= 0, f"warmup steps must be >= 0, got {self.warmup_steps}"),
            (self.device in ("auto", "cpu", "cuda"), f"--device must be auto, cpu or cuda, got {self.device!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class TrainResult:
    """What a run did: per-step training loss, eval loss before and after each epoch, where it wrote."""

    train_losses: list[float] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    train_examples: int = 0
    eval_examples: int = 0
    dropped_examples: int = 0
    trainable_parameters: int = 0
    output: Path | None = None


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(name: str = "auto") -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is visible")
    return torch.device(name)


def collate(batch: Sequence[Encoded], pad_id: int, device: Any) -> dict[str, Any]:
    """Right-pad a batch; padding gets attention 0 and label -100."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def evaluate(model: Any, data: Sequence[Encoded], *, batch_size: int, pad_id: int, device: Any) -> float:
    """Mean loss per target token over ``data`` (nan when empty)."""
    import torch

    if not data:
        return math.nan
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = collate(data[start : start + batch_size], pad_id, device)
            tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            total += float(model(**batch).loss) * tokens
            count += tokens
    model.train(was_training)
    return total / max(count, 1)


def run_loop(model: Any, train: Sequence[Encoded], *, epochs: int, batch_size: int, learning_rate: float,
             seed: int, pad_id: int, device: Any, warmup_steps: int = 0, eval_set: Sequence[Encoded] = (),
             progress: bool = True, log: Log = print, desc: str = "train", epoch_log: bool = True) -> TrainResult:
    """AdamW over the trainable parameters, linear warmup then linear decay, gradient clipping at 1.0."""
    import torch
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    per_epoch = math.ceil(len(train) / batch_size)
    total = per_epoch * epochs
    warmup = min(warmup_steps, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.05, 1.0 - (step - warmup) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    result = TrainResult(train_examples=len(train), eval_examples=len(eval_set),
                         trainable_parameters=sum(p.numel() for p in params))
    if eval_set:
        result.eval_losses.append(evaluate(model, eval_set, batch_size=batch_size, pad_id=pad_id, device=device))
        log(f"eval loss before training: {result.eval_losses[-1]:.4f}")
    order_rng = random.Random(seed)
    model.train()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    grad_was_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(True)  # a loaded handler turns gradients off for its thread
    for epoch in range(1, epochs + 1):
        order = list(range(len(train)))
        order_rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = collate([train[i] for i in order[start : start + batch_size]], pad_id, device)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            result.train_losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{result.train_losses[-1]:.4f}")
        if not epoch_log or (epoch % max(1, epochs // 10) and epoch != epochs):
            continue  # about ten epoch lines per run
        recent = result.train_losses[-per_epoch:]
        message = f"epoch {epoch}/{epochs}: train loss {sum(recent) / len(recent):.4f}"
        if eval_set:
            result.eval_losses.append(evaluate(model, eval_set, batch_size=batch_size, pad_id=pad_id, device=device))
            message += f", eval loss {result.eval_losses[-1]:.4f}"
        if progress:
            bar.write(message, file=sys.stderr)  # above the bar; stdout stays free for results
        else:
            log(message)
    bar.close()
    torch.set_grad_enabled(grad_was_enabled)
    model.eval()
    return result


def load_base(base_model: str | Path, device: Any) -> tuple[Any, Any]:
    """The base model (float32 on CPU, bfloat16 where CUDA supports it) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_endpoint.handler.loading import dtype_kwarg

    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out; any id will do
    dtype = torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(base_model), **dtype_kwarg(dtype)).to(device)
    return model, tokenizer


def train_lora(base_model: str | Path, dataset: str | Path, output: str | Path, config: TrainConfig = TrainConfig(),
               *, progress: bool = True, log: Log = print) -> TrainResult:
    """Train a LoRA adapter for ``base_model`` on ``dataset`` and save it to ``output``.

    Raises ``DatasetError`` for an unusable dataset (before loading the model) and ``ValueError`` for
    bad settings such as a target module the model does not have.
    """
    from peft import LoraConfig, get_peft_model

    examples = load_examples(dataset)
    ref = str(base_model)
    if not Path(ref).is_dir() and (ref.startswith((".", "/", "~")) or ref.count("/") != 1):
        raise TrainingInputError(f"--base-model {ref}: no such folder (a saved transformers model or a hub id)")
    try:
        device = pick_device(config.device)
    except ValueError as err:
        raise TrainingInputError(str(err)) from None
    seed_everything(config.seed)
    try:
        model, tokenizer = load_base(base_model, device)
    except OSError as err:  # a hub id that cannot be fetched, a folder without config.json
        raise TrainingInputError(f"--base-model {ref}: cannot load: {err}") from None
    encoded, dropped = encode_all(tokenizer, examples, max_length=config.max_length,
                                  prompt_format=config.prompt_format)
    train, held_out = split(encoded, config.eval_split, config.seed)
    log(f"{len(examples)} examples: {len(train)} train, {len(held_out)} eval"
        + (f", {dropped} dropped (no response token within --max-length)" if dropped else ""))
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM")
    seed_everything(config.seed)  # the adapter's initial weights do not depend on data loading
    try:
        peft_model = get_peft_model(model, lora)
    except ValueError as err:  # e.g. a target module the model does not have
        raise TrainingInputError(f"--target-modules {','.join(config.target_modules)}: {err}") from None
    result = run_loop(peft_model, train, epochs=config.epochs, batch_size=config.batch_size,
                      learning_rate=config.learning_rate, seed=config.seed, pad_id=tokenizer.pad_token_id,
                      device=device, warmup_steps=config.warmup_steps, eval_set=held_out, progress=progress,
                      log=log, desc="lora")
    result.dropped_examples = dropped
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out), safe_serialization=True)
    normalise_folder(out, owner="adapter")
    result.output = out
    return result


def lm_chunks(tokenizer: Any, text: str, length: int) -> list[Encoded]:
    """Plain text as overlapping windows of ``length`` tokens (stride half a window), every token a target."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    stride = max(1, length // 2)
    starts = range(0, max(1, len(ids) - length + 1), stride)
    return [Encoded(tuple(ids[s : s + length]), tuple(ids[s : s + length])) for s in starts]


def pretrain(model_dir: str | Path, texts: Sequence[str], *, steps: int, seq_len: int = 64, batch_size: int = 16,
             learning_rate: float = 3e-3, seed: int = 0, progress: bool = True, log: Log = print) -> TrainResult:
    """Train every weight of the model in ``model_dir`` on next-token prediction, about ``steps`` steps,
    and save it back in place (safetensors)."""
    seed_everything(seed)
    device = pick_device("auto")
    model, tokenizer = load_base(model_dir, device)
    model.float()
    chunks = [c for text in texts for c in lm_chunks(tokenizer, text, seq_len)]
    epochs = max(1, math.ceil(steps / math.ceil(len(chunks) / batch_size)))
    result = run_loop(model, chunks, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                      pad_id=tokenizer.pad_token_id, device=device, warmup_steps=min(20, steps // 10),
                      progress=progress, log=log, desc="pretrain", epoch_log=False)
    log(f"pretrained {len(result.train_losses)} steps on {len(chunks)} windows of {seq_len} tokens: "
        f"loss {result.train_losses[0]:.3f} -> {result.train_losses[-1]:.3f}")
    model.save_pretrained(str(model_dir), safe_serialization=True)
    normalise_folder(Path(model_dir), owner="base model")
    return result
