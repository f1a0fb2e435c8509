"""LLM providers behind one interface, chosen by a spec such as `openai:gpt-4o-mini`.

`LLM.complete(messages, schema=None, stream=False)` is the whole seam; the
registry in `retain.llm.registry` is the one place provider names live.
Importing this package loads no model and reads no environment.
"""

from retain.llm._http import RetryPolicy
from retain.llm.anthropic import AnthropicLLM
from retain.llm.base import LLM, Completion, CompletionStream
from retain.llm.local import LocalLLM
from retain.llm.openai import OpenAILLM
from retain.llm.registry import LLMFactory, llm_from_spec, llm_names, register_llm

__all__ = [
    "LLM",
    "AnthropicLLM",
    "Completion",
    "CompletionStream",
    "LLMFactory",
    "LocalLLM",
    "OpenAILLM",
    "RetryPolicy",
    "llm_from_spec",
    "llm_names",
    "register_llm",
]
