"""An LLM for the scale-out test's subprocesses: it states each new message as a fact, instantly.

Importing this module registers it as `echo:facts`, so `RETAIN_LLM=echo:facts` works in
`retain serve` and `retain worker` processes started with this directory on PYTHONPATH.
"""

from __future__ import annotations

import json

from retain.llm.base import LLM, Completion, CompletionStream, JSONSchema, Messages
from retain.llm.registry import register_llm
from retain.models import Usage


class EchoFacts(LLM):
    name = "echo"

    def __init__(self, model: str = "facts") -> None:
        self.model = model

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        if schema is None:
            return (
                CompletionStream(["Noted."], model=self.model)
                if stream
                else Completion(text="Noted.", usage=Usage(llm_calls=1), model=self.model)
            )
        new = checked[-1]["content"].split("NEW MESSAGES:")[-1].strip().splitlines()
        said = [line.split(": ", 1)[-1].strip() for line in new if line.strip()]
        ops = [{"op": "ADD", "id": None, "text": f"User said: {s}", "category": "fact", "reason": "echo"} for s in said]
        return Completion(text=json.dumps({"operations": ops}), usage=Usage(llm_calls=1), model=self.model)


register_llm("echo", lambda model, **options: EchoFacts(model), replace=True)
