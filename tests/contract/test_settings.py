"""Settings: parsed once, from env or DJL options, with errors that name the variable."""

from __future__ import annotations

import pytest

from lora_endpoint.contract.settings import ENV_MAX_NEW_TOKENS, HandlerSettings, SettingsError, env_var


def test_defaults_and_env() -> None:
    assert HandlerSettings.from_env({}) == HandlerSettings()
    settings = HandlerSettings.from_env(
        {
            "LORA_MAX_NEW_TOKENS": "256",
            "LORA_MERGE": "true",
            "LORA_DTYPE": "bfloat16",
            "LORA_TIME_BUDGET_S": "25.5",
            "OTHER": "x",
        }
    )
    assert (settings.max_new_tokens, settings.merge, settings.dtype, settings.time_budget_s) == (
        256,
        True,
        "bfloat16",
        25.5,
    )


def test_djl_options_win_over_env_and_unrelated_options_are_ignored() -> None:
    settings = HandlerSettings.from_options(
        {"max_new_tokens": "99", "entryPoint": "model.py", "rolling_batch": "disable"},
        env={"LORA_MAX_NEW_TOKENS": "10", "LORA_DEVICE": "cpu"},
    )
    assert (settings.max_new_tokens, settings.device) == (99, "cpu")


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LORA_MAX_NEW_TOKENS": "lots"}, "LORA_MAX_NEW_TOKENS must be an integer"),
        ({"LORA_MERGE": "maybe"}, "LORA_MERGE must be true or false"),
        ({"LORA_DTYPE": "int4"}, "LORA_DTYPE must be one of"),
        ({"LORA_MAX_NEW_TOKENS": "10", "LORA_DEFAULT_MAX_NEW_TOKENS": "20"}, "must not exceed LORA_MAX_NEW_TOKENS"),
        ({"LORA_RAG_TEMPLATE": "no fields"}, "LORA_RAG_TEMPLATE must contain {context}"),
        ({"LORA_MAX_INPUTS": "0"}, "LORA_MAX_INPUTS must be at least 1"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        HandlerSettings.from_env(env)


def test_env_var_names_follow_the_fields() -> None:
    assert env_var("max_new_tokens") == ENV_MAX_NEW_TOKENS
    with pytest.raises(KeyError):
        env_var("nope")
