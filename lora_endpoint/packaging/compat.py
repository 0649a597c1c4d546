"""Rewrite what transformers 5 / recent peft write into a form that transformers >= 4.45, peft >= 0.13 read alike.

The container runs the image's libraries (transformers 4.x in the HF DLC and, most likely, in LMI),
but bases and adapters are often saved with transformers 5. Found by saving with 5.24 / peft 0.21 and
loading with 4.45.2 / peft 0.13.2 and 4.57.6 / peft 0.17.1 (tests/compat re-checks it):

- ``tokenizer_config.json``: ``"tokenizer_class": "TokenizersBackend"`` does not exist in 4.x (the
  load fails). It becomes ``PreTrainedTokenizerFast``, the class 4.x uses for a plain ``tokenizer.json``
  and the one 5.x maps onto ``TokenizersBackend``; a model-specific class (``LlamaTokenizerFast``) would
  rebuild the post-processor in 4.x and could tokenise differently. A list under ``extra_special_tokens``
  (4.x expects a dict; 4.45 ignores it) moves to ``additional_special_tokens``, which 5.x reads back as
  ``extra_special_tokens``. A ``chat_template.jinja`` file (4.45 does not read it) is also inlined as
  ``chat_template``.
- ``config.json``: 5.x writes RoPE settings only as ``rope_parameters``; 4.x ignores that key and
  silently uses its defaults (``rope_theta`` 10000, no scaling), a different model. ``rope_theta``,
  ``rope_scaling`` and ``partial_rotary_factor`` are added beside it (5.x reads them into the same
  ``rope_parameters``). ``dtype`` gets its 4.x spelling ``torch_dtype`` too (4.45 reads only that one).
- ``adapter_config.json``: peft < 0.14 refuses every key it does not know. Keys that newer peft writes
  with their default (off) value are dropped, and so is ``peft_version`` (a record of who wrote the
  file, not a setting); a key with a live value is kept, so an adapter that needs a newer peft is
  refused at load rather than served wrong.

Files that need no change keep their bytes. Only files at the top of a model or adapter folder count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_endpoint.packaging.base import read_json_object
from lora_endpoint.packaging.config import PackageError

CONFIG, TOKENIZER_CONFIG, ADAPTER_CONFIG = "config.json", "tokenizer_config.json", "adapter_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
NORMALISED = frozenset({CONFIG, TOKENIZER_CONFIG, ADAPTER_CONFIG})

V5_ONLY_TOKENIZER_CLASSES = frozenset({"TokenizersBackend"})
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Sub-configs of composite models (e.g. a vision-language model's language half) that carry RoPE too.
SUB_CONFIGS = ("text_config", "language_config", "llm_config")
# LoraConfig fields newer than peft 0.13, with their defaults in peft 0.21 (the value that means "off").
NEWER_LORA_DEFAULTS: dict[str, Any] = {
    "exclude_modules": None, "trainable_token_indices": None, "eva_config": None,
    "corda_config": None, "lora_ga_config": None, "velora_config": None, "alora_invocation_tokens": None,
    "use_qalora": False, "monteclora_config": None, "lora_bias": False, "target_parameters": None,
    "use_bdlora": None, "arrow_config": None, "kasa_config": None, "ensure_weight_tying": False,
}


def normalise_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` with the 4.x spellings of RoPE settings and dtype added (see the module docstring)."""
    out = dict(config)
    if isinstance(out.get("dtype"), str) and "torch_dtype" not in out:
        out["torch_dtype"] = out["dtype"]
    rope = out.get("rope_parameters")
    # Per-layer-type RoPE (a dict of dicts, e.g. Gemma 3) has model-specific 4.x spellings: left alone.
    if isinstance(rope, dict) and not any(isinstance(v, dict) for v in rope.values()):
        if "rope_theta" in rope and "rope_theta" not in out:
            out["rope_theta"] = rope["rope_theta"]
        if "partial_rotary_factor" in rope and "partial_rotary_factor" not in out:
            out["partial_rotary_factor"] = rope["partial_rotary_factor"]
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
        # 4.x reads "no rope_scaling" as default RoPE; 5.x lets rope_scaling replace rope_parameters,
        # then fills rope_theta back in from the top-level key: the same dict either way.
        if scaling.get("rope_type", "default") != "default" and out.get("rope_scaling") is None:
            out["rope_scaling"] = scaling
    for key in SUB_CONFIGS:
        if isinstance(out.get(key), dict):
            out[key] = normalise_config(out[key])
    return out


def normalise_tokenizer_config(config: dict[str, Any], chat_template: str | None = None) -> dict[str, Any]:
    """``tokenizer_config.json`` that 4.x loads; ``chat_template`` is ``chat_template.jinja``'s text, if any."""
    out = dict(config)
    if out.get("tokenizer_class") in V5_ONLY_TOKENIZER_CLASSES:
        out["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    extra = out.get("extra_special_tokens")
    if isinstance(extra, list):
        del out["extra_special_tokens"]
        out.setdefault("additional_special_tokens", extra)
    if chat_template is not None and "chat_template" not in out:
        out["chat_template"] = chat_template
    return out


def normalise_adapter_config(config: dict[str, Any]) -> dict[str, Any]:
    """``adapter_config.json`` without the keys newer than peft 0.13 that hold their default."""
    if config.get("peft_type") != "LORA":
        return dict(config)
    out = {k: v for k, v in config.items() if k not in NEWER_LORA_DEFAULTS or v != NEWER_LORA_DEFAULTS[k]}
    out.pop("peft_version", None)
    if not out.get("use_qalora"):
        out.pop("qalora_group_size", None)  # read only when use_qalora is on
    return out


def _chat_template(folder: Path, owner: str) -> str | None:
    path = folder / CHAT_TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PackageError(f"{owner}: {CHAT_TEMPLATE_FILE} is unreadable: {err}") from None


def normalised_bytes(folder: Path, name: str, *, owner: str) -> bytes | None:
    """The normalised content of ``folder/name``, or None when the file is fine as it is (or not normalised)."""
    if name not in NORMALISED or not (folder / name).is_file():
        return None
    data = read_json_object(folder / name, owner=owner)
    if name == CONFIG:
        fixed = normalise_config(data)
    elif name == ADAPTER_CONFIG:
        fixed = normalise_adapter_config(data)
    else:
        fixed = normalise_tokenizer_config(data, _chat_template(folder, owner))
    if fixed == data:
        return None
    return (json.dumps(fixed, indent=2, ensure_ascii=False) + "\n").encode()


def pending(folder: Path, *, owner: str) -> list[str]:
    """The files of ``folder`` that normalising would still rewrite (none: 4.x reads it as 5.x does)."""
    return [name for name in sorted(NORMALISED) if normalised_bytes(folder, name, owner=owner) is not None]


def normalise_folder(folder: Path, *, owner: str) -> list[str]:
    """Rewrite the normalised files of a folder we wrote ourselves in place; the names changed."""
    changed = []
    for name in sorted(NORMALISED):
        data = normalised_bytes(folder, name, owner=owner)
        if data is not None:
            (folder / name).write_bytes(data)
            changed.append(name)
    return changed
