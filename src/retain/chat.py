"""The chat loop: search before the LLM call, stream the reply, learn after it.

`Chat.stream` returns a generator of `ChatEvent`s that the HTTP layer forwards
as server-sent events and the CLI prints. The order of work is what keeps a
chat fast and lossless:

1. the user's message is stored in the session first, so nothing the user said
   is lost whatever fails next;
2. memories are searched with a time limit; a failing or slow memory search
   degrades to an answer without memory (and the events say so);
3. the reply streams token by token;
4. the reply is stored and one extraction job over both turns is queued. The
   caller never waits for extraction. When the LLM fails, the user's message is
   queued for extraction anyway, and the job retries until the provider is back.

In `agent` mode the model gets two tools, `search_memories` and `save_memory`,
through JSON-schema steps (which every provider supports, the local model
included), for at most `agent_max_steps` steps before it answers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import ConfigError, InvalidInputError, RetainError
from .inputs import check_text, make_scope
from .llm.base import LLM, Messages
from .memory import Memory
from .models import ChatMessage, Hit, Scope, SearchResult, Usage

logger = logging.getLogger(__name__)

ChatMode = Literal["simple", "agent"]

SYSTEM_PROMPT = (
    "You are a friendly, concise support assistant. Answer the user's latest message. "
    "Use what you remember about the user when it helps, and never invent facts about them."
)


@dataclass(frozen=True)
class ChatSettings:
    #: Memories injected into the system prompt (simple mode) or returned per tool call (agent mode).
    memory_limit: int = 6
    #: Earlier messages of the same session sent along with the new one.
    history_messages: int = 12
    #: A memory search slower than this is abandoned and the reply goes ahead without memory.
    search_timeout_seconds: float = 3.0
    agent_max_steps: int = 4


class RememberedMemory(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    memory: str
    category: str | None
    score: float


class ChatEvent(BaseModel):
    """One step of a chat reply, as sent to clients (one SSE `data:` line each)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["memories", "tool", "token", "done", "error"]
    #: `memories`: what was injected; `memory_status` is "ok" or "unavailable" (the reply goes on without memory).
    memories: list[RememberedMemory] | None = None
    memory_status: Literal["ok", "unavailable"] | None = None
    #: `tool` (agent mode): the tool, its arguments and what it found or saved.
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    #: `token`: the next piece of the reply.
    text: str | None = None
    #: `done`: the stored messages and the queued extraction job; `error`: what failed.
    user_message_id: str | None = None
    assistant_message_id: str | None = None
    job_id: str | None = None
    usage: Usage | None = None
    error: str | None = None
    detail: str | None = None


class ChatReply(BaseModel):
    """A whole reply, for callers that do not stream."""

    text: str
    memories: list[RememberedMemory]
    memory_status: Literal["ok", "unavailable"]
    user_message_id: str
    assistant_message_id: str | None
    job_id: str | None
    error: str | None = None


class AgentStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["search_memories", "save_memory", "answer"]
    #: The search query (search_memories) or the fact to keep (save_memory); null when answering.
    argument: str | None = None


AGENT_STEP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"type": "string", "enum": ["search_memories", "save_memory", "answer"]},
        "argument": {"type": ["string", "null"], "maxLength": 300},
    },
    "required": ["action", "argument"],
    "additionalProperties": False,
}

AGENT_PROMPT = (
    "Before answering you may use tools, one per step. Reply with JSON only:\n"
    '- {"action": "search_memories", "argument": "<query>"} searches what you remember about this user;\n'
    '- {"action": "save_memory", "argument": "<a durable fact about the user>"} remembers something for later '
    "conversations (only facts worth keeping: preferences, personal facts, goals, ongoing issues);\n"
    '- {"action": "answer", "argument": null} when you are ready to answer.'
)


class Chat:
    """A chat that remembers, over one `Memory` and one `LLM`. Thread-safe."""

    def __init__(
        self,
        memory: Memory,
        llm: LLM | None = None,
        *,
        settings: ChatSettings | None = None,
        system_prompt: str = SYSTEM_PROMPT,
    ) -> None:
        self.memory = memory
        self.llm = llm if llm is not None else memory.llm
        self.settings = settings or ChatSettings()
        self.system_prompt = system_prompt
        self._searches = ThreadPoolExecutor(max_workers=4, thread_name_prefix="retain-chat-search")

    def for_tenant(self, tenant_id: str) -> Chat:
        """The same chat over `tenant_id`'s memory (sharing this chat's search threads)."""
        view = object.__new__(Chat)
        view.__dict__.update(self.__dict__)
        view.memory = self.memory.for_tenant(tenant_id)
        return view

    def stream(
        self,
        message: str,
        *,
        user_id: str,
        session_id: str,
        mode: ChatMode = "simple",
        agent_id: str | None = None,
    ) -> Iterator[ChatEvent]:
        """Validate now (raising `InvalidInputError`/`ConfigError`), then return the reply's events."""
        text = check_text(message, field="message", max_chars=self.memory.settings.max_message_chars)
        for field, value in (("user_id", user_id), ("session_id", session_id)):
            if value is None:
                raise InvalidInputError(f"chat needs a {field}.", field=field)
        scope = make_scope(self.memory.tenant_id, user_id, agent_id, session_id)
        if mode not in ("simple", "agent"):
            raise InvalidInputError(f"mode must be 'simple' or 'agent', got {mode!r}.", field="mode")
        if self.llm is None:
            raise ConfigError(
                "No LLM configured for chat: set RETAIN_LLM=openai:gpt-4o-mini (with OPENAI_API_KEY), "
                "RETAIN_LLM=local:qwen2.5-1.5b (pip install 'retain[local]'), or pass llm=..."
            )
        # Done before the first event, so a store failure is an error the caller sees (503), not a broken stream.
        history = self.memory.messages(scope, self.settings.history_messages)
        user_message = self.memory.add_message(scope, "user", text)
        return self._run(self.llm, scope, text, mode, history, user_message)

    def reply(self, message: str, **kwargs: Any) -> ChatReply:
        """The whole reply at once (same arguments as `stream`)."""
        parts: list[str] = []
        memories: list[RememberedMemory] = []
        status: Literal["ok", "unavailable"] = "ok"
        user_id = assistant_id = job_id = error = None
        for event in self.stream(message, **kwargs):
            if event.type == "memories":
                memories += event.memories or []
                status = event.memory_status or status
            elif event.type == "tool" and event.memories:
                memories += event.memories
            elif event.type == "token":
                parts.append(event.text or "")
            elif event.type in ("done", "error"):
                user_id, assistant_id, job_id = event.user_message_id, event.assistant_message_id, event.job_id
                error = event.detail if event.type == "error" else None
        assert user_id is not None
        return ChatReply(
            text="".join(parts),
            memories=memories,
            memory_status=status,
            user_message_id=user_id,
            assistant_message_id=assistant_id,
            job_id=job_id,
            error=error,
        )

    def close(self) -> None:
        self._searches.shutdown(wait=False, cancel_futures=True)

    # -- the loop ---------------------------------------------------------------------

    def _run(
        self, llm: LLM, scope: Scope, text: str, mode: ChatMode, history: list[ChatMessage], user_message: ChatMessage
    ) -> Iterator[ChatEvent]:
        try:
            if mode == "agent":
                messages, saved_any = yield from self._agent_steps(llm, scope, history, text)
            else:
                hits, status = self._search(scope, text)
                yield ChatEvent(type="memories", memories=[_remembered(h) for h in hits], memory_status=status)
                messages = self._prompt(history, text, hits, status)
                saved_any = False
            stream = llm.complete(messages, stream=True)
            for chunk in stream:
                yield ChatEvent(type="token", text=chunk)
            reply = stream.text
            usage = stream.usage
        except GeneratorExit:  # the client went away mid-reply: keep learning from what the user said
            self._learn_safely(scope, user_message.id)
            raise
        except Exception as exc:  # the boundary: whatever failed, the client gets an event and nothing is lost
            if not isinstance(exc, RetainError):
                logger.exception("chat reply failed")
            job_id = self._learn_safely(scope, user_message.id)
            yield ChatEvent(
                type="error",
                error=type(exc).__name__,
                detail=f"The assistant could not reply: {exc}. Your message is saved.",
                user_message_id=user_message.id,
                job_id=job_id,
            )
            return
        assistant = self.memory.add_message(scope, "assistant", reply or "(no reply)")
        # In agent mode the model chose what to save; otherwise extraction learns from both turns.
        job_id = None if mode == "agent" or saved_any else self._learn(scope, [user_message.id, assistant.id])
        yield ChatEvent(
            type="done", user_message_id=user_message.id, assistant_message_id=assistant.id, job_id=job_id, usage=usage
        )

    def _search(self, scope: Scope, query: str) -> tuple[list[Hit], Literal["ok", "unavailable"]]:
        """Memories for `query` in the user's scope (any session), or none if the search fails or is slow."""
        future: Future[SearchResult] = self._searches.submit(
            functools.partial(
                self.memory.search,
                query[-2000:],
                user_id=scope.user_id,
                agent_id=scope.agent_id,
                limit=self.settings.memory_limit,
            )
        )
        try:
            return list(future.result(timeout=self.settings.search_timeout_seconds).results), "ok"
        except FutureTimeout:
            logger.warning(
                "memory search took over %.1fs; replying without memory", self.settings.search_timeout_seconds
            )
        except Exception:
            logger.exception("memory search failed; replying without memory")
        return [], "unavailable"

    def _prompt(
        self, history: list[ChatMessage], text: str, hits: list[Hit], status: Literal["ok", "unavailable"]
    ) -> Messages:
        if status == "unavailable":
            remembered = "Your memory of this user is unavailable right now; answer without it."
        elif hits:
            lines = [f"- ({h.valid_from.date().isoformat()}) {h.memory}" for h in hits]
            remembered = "What you remember about this user from earlier conversations:\n" + "\n".join(lines)
        else:
            remembered = "You do not remember anything about this user yet."
        return [
            {"role": "system", "content": f"{self.system_prompt}\n\n{remembered}"},
            *_turns(history),
            {"role": "user", "content": text},
        ]

    def _agent_steps(
        self, llm: LLM, scope: Scope, history: list[ChatMessage], text: str
    ) -> Generator[ChatEvent, None, tuple[Messages, bool]]:
        """Run tool steps; returns (messages for the final streamed answer, whether anything was saved)."""
        messages: Messages = [
            {"role": "system", "content": f"{self.system_prompt}\n\n{AGENT_PROMPT}"},
            *_turns(history),
            {"role": "user", "content": text},
        ]
        saved = False
        yield ChatEvent(type="memories", memories=[], memory_status="ok")
        for _ in range(self.settings.agent_max_steps):
            completion = llm.complete(messages, schema=AGENT_STEP_SCHEMA)
            try:
                step = AgentStep.model_validate_json(completion.text)
            except ValidationError:
                logger.warning("agent step was not valid JSON; answering without further tools")
                break
            if step.action == "answer" or not (step.argument or "").strip():
                break
            argument = (step.argument or "").strip()
            messages.append({"role": "assistant", "content": step.model_dump_json()})
            if step.action == "search_memories":
                hits, status = self._search(scope, argument)
                found = [_remembered(h) for h in hits]
                yield ChatEvent(
                    type="tool",
                    tool="search_memories",
                    arguments={"query": argument},
                    memories=found,
                    memory_status=status,
                )
                listing = "\n".join(f"- {m.memory}" for m in found) or "(nothing found)"
                messages.append({"role": "user", "content": f"search_memories result:\n{listing}"})
            else:
                result = self.memory.add(
                    [{"role": "assistant", "name": "agent", "content": argument}],
                    user_id=scope.user_id,
                    agent_id=scope.agent_id,
                    infer=False,
                    metadata={"saved_by": "agent"},
                )
                saved = True
                yield ChatEvent(type="tool", tool="save_memory", arguments={"memory": argument})
                ids = ", ".join(e.id for e in result.results)
                messages.append({"role": "user", "content": f"save_memory result: saved ({ids})."})
        messages.append({"role": "user", "content": "Now answer my last message in plain text."})
        return messages, saved

    def _learn_safely(self, scope: Scope, message_id: str) -> str | None:
        """Queue the user's message for extraction after a failed reply; a failure here is only logged."""
        try:
            return self._learn(scope, [message_id])
        except Exception:  # already on a failure path: the message itself is stored, so nothing is lost
            logger.exception("could not queue the user's message for extraction")
            return None

    def _learn(self, scope: Scope, message_ids: list[str]) -> str | None:
        """Queue extraction over these messages; None when memory has no LLM to extract with."""
        if self.memory.llm is None:
            return None
        return self.memory.extract(
            message_ids, user_id=scope.user_id, agent_id=scope.agent_id, run_id=scope.run_id, background=True
        ).job_id


def _turns(history: list[ChatMessage]) -> Messages:
    return [{"role": m.role, "content": m.content} for m in history if m.role in ("user", "assistant")]


def _remembered(hit: Hit) -> RememberedMemory:
    return RememberedMemory(id=hit.id, memory=hit.memory, category=hit.category, score=hit.score)


def event_json(event: ChatEvent) -> str:
    """The event as compact JSON, without empty fields."""
    return json.dumps(event.model_dump(mode="json", exclude_none=True), ensure_ascii=False, separators=(",", ":"))
