"""The real local model on the CPU. Needs the [local] extra; takes about 10-20 s."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator

import pytest

from retain.errors import ConfigError
from retain.llm import LocalLLM

pytestmark = pytest.mark.local_llm

SCHEMA = {
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["facts"],
    "additionalProperties": False,
}
MESSAGES = [
    {
        "role": "system",
        "content": "Extract durable facts about the user from the conversation, "
        "each as a short sentence about the user. Reply in JSON.",
    },
    {"role": "user", "content": "I'm vegetarian and I live in Berlin"},
]


@pytest.fixture(scope="module")
def llm() -> Iterator[LocalLLM]:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip('xllamacpp is not installed: pip install -e ".[local]"')
    try:
        model = LocalLLM("qwen2.5-1.5b", max_tokens=256)
    except ConfigError as exc:
        pytest.skip(str(exc))
    yield model
    model.close()


def test_schema_constrained_extraction(llm: LocalLLM) -> None:
    completion = llm.complete(MESSAGES, schema=SCHEMA)

    data = json.loads(completion.text)
    assert set(data) == {"facts"}
    assert all(isinstance(fact, str) for fact in data["facts"])
    assert any("vegetarian" in fact.lower() for fact in data["facts"])
    assert completion.usage.prompt_tokens > 10
    assert completion.usage.completion_tokens > 0
    assert completion.model == "qwen2.5-1.5b"


def test_streaming_reply_and_usage(llm: LocalLLM) -> None:
    prompt = "Count from 1 to 10 in words, separated by commas."
    stream = llm.complete([{"role": "user", "content": prompt}], stream=True)

    chunks = list(stream)

    assert len(chunks) >= 2
    assert "".join(chunks).strip()
    assert stream.usage.completion_tokens >= len(chunks) - 1
    assert stream.usage.prompt_tokens > 0


def test_closing_a_stream_early_frees_the_model(llm: LocalLLM) -> None:
    stream = llm.complete([{"role": "user", "content": "Write a long story about a dragon."}], stream=True)
    first = next(stream)
    stream.close()

    assert first
    assert llm.complete([{"role": "user", "content": "Reply with the word ok."}]).text.strip()
