"""Tiny Llama models, a tokenizer made in code and real peft LoRA adapters, all built offline.

Tests, the demo and the benchmarks use these instead of a hub download: the loading code they
exercise is the real one, only the weights are small and seeded. What they write is normalised for
transformers 4.x (``lora_endpoint.packaging.compat``) unless ``portable=False`` asks for the installed
transformers' own output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_endpoint.packaging.compat import normalise_folder

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")

DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. A LoRA adapter adds a low-rank update to a frozen "
    "base model. SageMaker endpoints serve models behind an HTTPS API. Question: what is the capital "
    "of France? Answer: Paris. Question: how many legs does a spider have? Answer: eight. "
    "Hello world, this is a tiny language model used for tests and demos. 0123456789 !?.,;:'\"()[]{}"
)


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny Llama; the defaults give a model of about 100k parameters."""

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    vocab_size: int = 384
    initializer_range: float = 0.2
    seed: int = 0
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """e.g. ``{"rope_type": "llama3", "factor": 8.0, ...}``; None is plain RoPE."""


# The ~20M-parameter Llama the benchmarks use: hidden 512, 6 layers, head dim 64 (vLLM's CPU attention
# rejects 16), big enough that matrix work dominates Python overhead on a 2-core CPU.
BENCH_CONFIG = TinyModelConfig(
    hidden_size=512,
    intermediate_size=1408,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=1024,
    initializer_range=0.02,
)


def build_tokenizer(corpus: Iterable[str] = (DEFAULT_CORPUS,), vocab_size: int = 384) -> Any:
    """Train a byte-level BPE tokenizer in code and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level means any text round-trips (no unknown token), which the handler relies on for
    incremental detokenisation and stop sequences.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(corpus), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=256,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _rope_kwargs(config: TinyModelConfig) -> dict[str, Any]:
    """RoPE settings as the installed transformers spells them (5.x: one ``rope_parameters`` dict)."""
    import transformers

    scaling = dict(config.rope_scaling) if config.rope_scaling else None
    if int(transformers.__version__.split(".")[0]) >= 5:
        return {"rope_parameters": {"rope_type": "default", **(scaling or {}), "rope_theta": config.rope_theta}}
    return {"rope_theta": config.rope_theta, "rope_scaling": scaling}


def build_tiny_model(
    out_dir: str | Path,
    config: TinyModelConfig = TinyModelConfig(),
    *,
    corpus: Iterable[str] = (DEFAULT_CORPUS,),
    tokenizer: Any = None,
    portable: bool = True,
) -> Path:
    """Save a seeded, randomly initialised ``LlamaForCausalLM`` and its tokenizer to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or build_tokenizer(corpus, vocab_size=config.vocab_size)
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        initializer_range=config.initializer_range,
        **_rope_kwargs(config),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(llama_config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if portable:
        normalise_folder(out, owner="tiny model")
    return out


def build_lora_adapter(
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int,
    r: int = 4,
    alpha: int = 8,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    scale: float = 1.0,
    base_model_name_or_path: str | None = None,
    use_dora: bool = False,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
    portable: bool = True,
) -> Path:
    """Write a real peft LoRA adapter with seeded, non-zero weights for the model in ``base_dir``.

    peft initialises ``lora_B`` to zero (an adapter that changes nothing); ``init_lora_weights=False``
    makes both factors random, and ``scale`` multiplies ``lora_B`` so adapters differ visibly.
    ``use_dora`` writes a DoRA adapter (with its magnitude vectors) instead; ``rank_pattern`` /
    ``alpha_pattern`` give some modules another rank / alpha (peft's regex keys).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_endpoint.handler.loading import dtype_kwarg

    out = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, **dtype_kwarg(torch.float32))
    torch.manual_seed(seed)
    peft_config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        use_dora=use_dora,
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
    )
    model = get_peft_model(base, peft_config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)
    model.save_pretrained(str(out), safe_serialization=True)
    if base_model_name_or_path is not None:
        config_path = out / "adapter_config.json"
        data = json.loads(config_path.read_text())
        data["base_model_name_or_path"] = base_model_name_or_path
        config_path.write_text(json.dumps(data, indent=2, sort_keys=True))
    if portable:
        normalise_folder(out, owner="tiny adapter")
    return out


def build_model_dir(
    out_dir: str | Path,
    adapters: Sequence[str] = ("alpha", "beta"),
    *,
    config: TinyModelConfig = TinyModelConfig(),
    base_subdir: str = "base",
    portable: bool = True,
) -> Path:
    """A model dir in the layout the handler serves: ``base/`` plus ``adapters/<name>/``."""
    out = Path(out_dir)
    base = build_tiny_model(out / base_subdir, config, portable=portable)
    for index, name in enumerate(adapters):
        build_lora_adapter(base, out / "adapters" / name, seed=1000 + index, scale=4.0, portable=portable)
    return out
