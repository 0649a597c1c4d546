"""The request contract, written once: every shape's fields as JSON schemas (draft 4, what API Gateway
validates with), the parameter vocabulary real clients send, and a validator for those schemas.

Three readers, one source: the handler's parsers take their accepted field names and the neutral values
of parameters they do not implement from here; the CDK app turns the schemas into API Gateway request
models; the local endpoint validates its API routes with them. The schemas are the structural part of
the contract (types, shapes, bounds that do not depend on settings); the handler checks the rest
(settings caps, token counts, adapters) and refuses everything a schema refuses.

Parameter vocabulary. Clients of LMI, TGI, LoRAX and vLLM send parameters this handler does not
implement, usually as their "off" value (``null``, ``false``, ``0``, ``1.0``). Those are accepted as
no-ops when they carry a neutral value, and refused with a message naming the parameter otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Schema = dict[str, Any]

# The container statuses the deployed API passes through to callers as they are (its own statuses and
# the runtime's 429): everything else becomes 500, and a CUDA out-of-memory 507 becomes 503.
PASSTHROUGH_CONTAINER_STATUSES = (400, 404, 406, 413, 415, 422, 429, 500, 503)

STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
INTEGER: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
OBJECT: Schema = {"type": "object"}
MAX_STOP_SEQUENCES = 4
STOP: Schema = {"anyOf": [STRING, {"type": "array", "items": STRING, "maxItems": MAX_STOP_SEQUENCES}]}


def nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (null means "the default" everywhere in this API)."""
    return {"anyOf": [schema, {"type": "null"}]}


@dataclass(frozen=True)
class Unsupported:
    """A parameter accepted only with a neutral value (``neutral``); ``feature`` names what it asks for."""

    schema: Schema
    neutral: tuple[Any, ...]
    feature: str


# --- generate / RAG parameters ----------------------------------------------------------------------

GENERATE_PARAMETERS: dict[str, Schema] = {
    "max_new_tokens": {**INTEGER, "minimum": 1},
    "temperature": {**NUMBER, "minimum": 0, "maximum": 2},
    "top_p": {**NUMBER, "minimum": 0, "maximum": 1},
    "top_k": {**INTEGER, "minimum": -1},  # -1 is "off" in LMI and vLLM, 0 in TGI
    "do_sample": BOOLEAN,
    "repetition_penalty": {**NUMBER, "minimum": 0, "maximum": 10},
    "seed": {**INTEGER, "minimum": 0},
    "stop": STOP,
    "stop_sequences": STOP,
    "return_full_text": BOOLEAN,
    "details": BOOLEAN,
    "num_return_sequences": {**INTEGER, "minimum": 1},
    "n": {**INTEGER, "minimum": 1},  # vLLM's name for num_return_sequences
    "ignore_eos": BOOLEAN,
    "ignore_eos_token": BOOLEAN,  # LoRAX's name for ignore_eos
    "truncate": {**INTEGER, "minimum": 1},  # TGI: keep only the last N prompt tokens
    "adapter_id": STRING,  # TGI / LoRAX name the adapter here
}
# Where a request names its adapter inside ``parameters``, the name goes through as ``adapters`` would.

GENERATE_UNSUPPORTED: dict[str, Unsupported] = {
    "best_of": Unsupported({**INTEGER, "minimum": 1}, (1,), "best-of-n sampling (use num_return_sequences)"),
    "decoder_input_details": Unsupported(BOOLEAN, (False,), "prompt token details"),
    "watermark": Unsupported(BOOLEAN, (False,), "watermarking"),
    "typical_p": Unsupported(NUMBER, (1.0,), "typical sampling"),
    "top_n_tokens": Unsupported(INTEGER, (0,), "top-n token alternatives"),
    "return_k_alternatives": Unsupported(INTEGER, (0,), "token alternatives"),
    "frequency_penalty": Unsupported(NUMBER, (0.0,), "frequency_penalty (use repetition_penalty)"),
    "presence_penalty": Unsupported(NUMBER, (0.0,), "presence_penalty (use repetition_penalty)"),
    "min_p": Unsupported(NUMBER, (0.0,), "min_p sampling"),
    "min_tokens": Unsupported(INTEGER, (0,), "min_tokens"),
    "use_beam_search": Unsupported(BOOLEAN, (False,), "beam search"),
    "length_penalty": Unsupported(NUMBER, (1.0,), "length_penalty (beam search)"),
    "logprobs": Unsupported(INTEGER, (), "logprobs (use details: true)"),
    "prompt_logprobs": Unsupported(INTEGER, (), "prompt logprobs"),
    "skip_special_tokens": Unsupported(BOOLEAN, (True,), "keeping special tokens in the text"),
    "spaces_between_special_tokens": Unsupported(BOOLEAN, (True,), "spaces_between_special_tokens"),
    "grammar": Unsupported(OBJECT, (), "grammar-constrained generation"),
    "response_format": Unsupported(OBJECT, (), "structured output"),
    "adapter_source": Unsupported(STRING, (), "loading adapters by source (adapters are served by name)"),
    "merged_adapters": Unsupported(OBJECT, (), "merging adapters per request"),
    "api_token": Unsupported(STRING, (), "hub tokens (adapters are served by name)"),
}

# RAG answers one prompt (no extra sequences) and fits its context by dropping passages (no truncate).
RAG_EXCLUDED = frozenset({"num_return_sequences", "n", "truncate"})

GENERATE_FIELDS = ("inputs", "parameters", "adapters", "stream")
SIMPLE_FIELDS = ("prompt", "max_length", "max_new_tokens", "temperature", "top_p", "adapters", "stream")
RAG_FIELDS = ("query", "context", "parameters", "adapters", "stream")

# --- chat ---------------------------------------------------------------------------------------------

CHAT_ROLES = ("system", "developer", "user", "assistant")  # developer is OpenAI's newer name for system
CHAT_PARAMETERS: dict[str, Schema] = {
    "model": STRING,
    "max_tokens": {**INTEGER, "minimum": 1},
    "max_completion_tokens": {**INTEGER, "minimum": 1},
    "temperature": {**NUMBER, "minimum": 0, "maximum": 2},
    "top_p": {**NUMBER, "minimum": 0, "maximum": 1},
    "n": {**INTEGER, "minimum": 1},
    "stop": STOP,
    "seed": {**INTEGER, "minimum": 0},
    "stream": BOOLEAN,
    "stream_options": {"type": "object", "additionalProperties": False,
                       "properties": {"include_usage": nullable(BOOLEAN)}},
    "user": STRING,
    "adapters": STRING,  # LMI's name for the adapter, as in the generate shape
    # vLLM's extra sampling parameters on the OpenAI routes
    "top_k": {**INTEGER, "minimum": -1},
    "repetition_penalty": {**NUMBER, "minimum": 0, "maximum": 10},
    "ignore_eos": BOOLEAN,
}
CHAT_UNSUPPORTED: dict[str, Unsupported] = {
    "tools": Unsupported({"type": "array"}, (), "tool calling"),
    "tool_choice": Unsupported({}, ("none",), "tool calling"),
    "parallel_tool_calls": Unsupported(BOOLEAN, (False,), "tool calling"),
    "functions": Unsupported({"type": "array"}, (), "function calling"),
    "function_call": Unsupported({}, ("none",), "function calling"),
    "response_format": Unsupported(OBJECT, (), "structured output"),
    "logit_bias": Unsupported(OBJECT, (), "logit_bias"),
    "logprobs": Unsupported(BOOLEAN, (False,), "logprobs"),
    "top_logprobs": Unsupported(INTEGER, (0,), "logprobs"),
    "audio": Unsupported(OBJECT, (), "audio"),
    "modalities": Unsupported({"type": "array"}, (["text"],), "modalities other than text"),
    "presence_penalty": Unsupported(NUMBER, (0.0,), "presence_penalty"),
    "frequency_penalty": Unsupported(NUMBER, (0.0,), "frequency_penalty"),
    "min_p": Unsupported(NUMBER, (0.0,), "min_p sampling"),
    "min_tokens": Unsupported(INTEGER, (0,), "min_tokens"),
    "store": Unsupported(BOOLEAN, (False,), "stored completions"),
    "metadata": Unsupported(OBJECT, (), "stored completions"),
    "service_tier": Unsupported(STRING, ("auto", "default"), "service tiers"),
    "prediction": Unsupported(OBJECT, (), "predicted outputs"),
    "web_search_options": Unsupported(OBJECT, (), "web search"),
    "reasoning_effort": Unsupported(STRING, (), "reasoning effort"),
}
MESSAGE_FIELDS = ("role", "content", "name")
TEXT_PART: Schema = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
                     "properties": {"type": {"enum": ["text"]}, "text": STRING}}


def is_neutral(value: Any, spec: Unsupported) -> bool:
    """``value`` is null or one of ``spec``'s neutral values (same kind: ``true`` is not ``1``)."""
    if value is None:
        return True
    for neutral in spec.neutral:
        if isinstance(value, bool) or isinstance(neutral, bool):
            if isinstance(value, bool) and isinstance(neutral, bool) and value == neutral:
                return True
        elif isinstance(value, int | float) and isinstance(neutral, int | float):
            if math.isfinite(value) and value == neutral:
                return True
        elif value == neutral:
            return True
    return False


# --- the schemas -----------------------------------------------------------------------------------

def _object(properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False,
                      "properties": {k: nullable(v) for k, v in properties.items()}}
    if required:
        schema["required"] = list(required)
        for key in required:
            schema["properties"][key] = properties[key]
    return schema


def _parameters(excluded: frozenset[str] = frozenset()) -> Schema:
    fields = {k: v for k, v in GENERATE_PARAMETERS.items() if k not in excluded}
    fields.update({k: v.schema for k, v in GENERATE_UNSUPPORTED.items()})
    return _object(fields)


ADAPTER: Schema = {"anyOf": [STRING, {"type": "array", "items": nullable(STRING)}]}
PROMPTS: Schema = {"anyOf": [{**STRING, "minLength": 1},
                             {"type": "array", "minItems": 1, "items": {**STRING, "minLength": 1}}]}
PASSAGE: Schema = {"anyOf": [{**STRING, "minLength": 1},
                             {"type": "object", "required": ["text"], "additionalProperties": False,
                              "properties": {"id": nullable({"anyOf": [STRING, INTEGER]}),
                                             "text": {**STRING, "minLength": 1}}}]}
MESSAGE: Schema = {
    "type": "object", "required": ["role"], "additionalProperties": False,
    "properties": {"role": {"enum": list(CHAT_ROLES)},
                   "content": nullable({"anyOf": [STRING, {"type": "array", "items": TEXT_PART}]}),
                   "name": nullable(STRING)},
}


def request_schemas(*, streaming: bool = True) -> dict[str, Schema]:
    """Every request shape's schema; ``streaming=False`` (API Gateway's AWS integration) refuses ``stream: true``."""
    stream = BOOLEAN if streaming else {"enum": [False]}
    chat_fields = {**CHAT_PARAMETERS, "stream": stream, **{k: v.schema for k, v in CHAT_UNSUPPORTED.items()},
                   "messages": {"type": "array", "minItems": 1, "items": MESSAGE}}
    return {
        "Generate": _object({"inputs": PROMPTS, "parameters": _parameters(), "adapters": ADAPTER, "stream": stream},
                            ("inputs",)),
        "Simple": _object({"prompt": {**STRING, "minLength": 1}, "max_length": {**INTEGER, "minimum": 1},
                           "max_new_tokens": {**INTEGER, "minimum": 1},
                           "temperature": GENERATE_PARAMETERS["temperature"], "top_p": GENERATE_PARAMETERS["top_p"],
                           "adapters": STRING, "stream": stream}, ("prompt",)),
        "Rag": _object({"query": {**STRING, "minLength": 1},
                        "context": {"type": "array", "minItems": 1, "items": PASSAGE},
                        "parameters": _parameters(RAG_EXCLUDED), "adapters": STRING, "stream": stream},
                       ("query", "context")),
        "ChatCompletion": _object(chat_fields, ("messages",)),
        "Info": _object({"task": {"enum": ["info"]}}, ("task",)),
    }


# --- a validator for the draft-4 subset above (what API Gateway checks) ------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "number": (int, float),
    "integer": (int,), "null": (type(None),),
}


def _is(value: Any, kind: str) -> bool:
    if kind in ("number", "integer") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[kind])


def schema_errors(value: Any, schema: Schema, where: str = "") -> list[str]:
    """What is wrong with ``value`` against ``schema``: one line per problem, naming the field."""
    label = where or "the request body"
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else list(kinds)
        if not any(_is(value, kind) for kind in allowed):
            return [f"{label} must be of type {' or '.join(allowed)}"]
    if "anyOf" in schema:
        options = [schema_errors(value, option, where) for option in schema["anyOf"]]
        if all(options):
            # For "X or null" the problems with X say more than "matches no form".
            real = [found for option, found in zip(schema["anyOf"], options, strict=True) if option != {"type": "null"}]
            return real[0] if len(real) == 1 else [f"{label} does not match any allowed form"]
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        return [f"{label} must be one of {schema['enum']}"]
    problems: list[str] = []
    prefix = f"{where}." if where else ""
    if isinstance(value, dict):
        problems += [f"{prefix}{key} is required" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                problems += schema_errors(item, properties[key], f"{prefix}{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{prefix}{key} is not an accepted field")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{label} must have at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{label} must have at most {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                problems += schema_errors(item, schema["items"], f"{label}[{index}]")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        problems.append(f"{label} must not be empty")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{label} must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{label} must be <= {schema['maximum']}")
    return problems
