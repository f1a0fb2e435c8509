from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from llm_http_fakes import Server

from retain.errors import ConfigError
from retain.llm import LLM, AnthropicLLM, LocalLLM, OpenAILLM, llm_from_spec, llm_names, register_llm
from retain.llm.registry import parse_spec
from retain.testing.llm import ScriptedLLM


def test_builtin_providers_are_registered_under_their_class_names() -> None:
    classes: list[type[LLM]] = [OpenAILLM, AnthropicLLM, LocalLLM, ScriptedLLM]
    assert {cls.name for cls in classes} <= set(llm_names())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
        (" anthropic:claude-3-5-haiku-latest ", ("anthropic", "claude-3-5-haiku-latest")),
        ("local:qwen2.5-0.5b", ("local", "qwen2.5-0.5b")),
        ("local:", ("local", "")),
        ("scripted:", ("scripted", "")),
        ("OpenAI:org/model:tag", ("openai", "org/model:tag")),
    ],
)
def test_parse_spec(spec: str, expected: tuple[str, str]) -> None:
    assert parse_spec(spec) == expected


def test_openai_spec_builds_the_provider_with_options() -> None:
    server = Server([])
    llm = llm_from_spec("openai:gpt-4o-mini", api_key="sk-x", transport=server.transport, env={})

    assert isinstance(llm, OpenAILLM)
    assert llm.model == "gpt-4o-mini"


@pytest.mark.parametrize("spec", [None, "", "   "])
def test_no_spec_says_how_to_configure_one(spec: str | None) -> None:
    with pytest.raises(ConfigError, match=r"No LLM configured: set RETAIN_LLM=openai:gpt-4o-mini .*llm="):
        llm_from_spec(spec)


@pytest.mark.parametrize("spec", ["gpt-4o-mini", "ollama:llama3", "opeani:gpt-4o-mini"])
def test_unknown_provider_names_the_fix(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        llm_from_spec(spec)

    message = str(caught.value)
    assert "RETAIN_LLM=openai:gpt-4o-mini" in message
    for name in ("anthropic", "local", "openai", "scripted"):
        assert name in message


def test_missing_model_names_an_example() -> None:
    with pytest.raises(ConfigError, match="openai:gpt-4o-mini"):
        llm_from_spec("openai:")


def test_missing_openai_key_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set: export it, or point OPENAI_BASE_URL"):
        llm_from_spec("openai:gpt-4o-mini", env={})


def test_missing_anthropic_key_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        llm_from_spec("anthropic:claude-3-5-haiku-latest", env={})


def test_unknown_local_model_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"local:qwen2\.5-1\.5b, local:qwen2\.5-0\.5b"):
        llm_from_spec("local:llama-70b")


def test_scripted_spec_builds_a_scripted_llm() -> None:
    llm = llm_from_spec("scripted:", replies=["hi"])

    assert isinstance(llm, ScriptedLLM)
    assert llm.complete([{"role": "user", "content": "hello"}]).text == "hi"


class EchoLLM(ScriptedLLM):
    name = "echo-test"


def test_registered_provider_works_through_the_same_entry_point() -> None:
    def factory(model: str, **options: Any) -> LLM:
        return EchoLLM([f"{model}:{options['greeting']}"], model=model)

    register_llm("echo-test", factory)

    assert "echo-test" in llm_names()
    llm = llm_from_spec("echo-test:m1", greeting="hey")
    assert llm.complete([{"role": "user", "content": "x"}]).text == "m1:hey"
    with pytest.raises(ConfigError, match="already registered"):
        register_llm("echo-test", factory)
    register_llm("echo-test", factory, replace=True)


def test_registered_provider_can_require_a_model() -> None:
    register_llm("needs-model-test", lambda model, **_: ScriptedLLM(model=model))

    with pytest.raises(ConfigError, match="names no model"):
        llm_from_spec("needs-model-test:")


@pytest.mark.parametrize("prefix", ["", "has space", "a:b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError):
        register_llm(prefix, lambda model, **_: ScriptedLLM())


def test_public_surface_is_explicit_and_importable() -> None:
    import retain.llm

    assert sorted(retain.llm.__all__) == sorted(set(retain.llm.__all__))
    for name in retain.llm.__all__:
        assert hasattr(retain.llm, name), name


def test_import_loads_no_model_library() -> None:
    code = "import sys, retain.llm, retain.testing.llm; assert 'xllamacpp' not in sys.modules"
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )
