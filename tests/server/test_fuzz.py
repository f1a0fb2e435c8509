"""A bounded schemathesis run over the whole OpenAPI of a live server: no input may cause a 5xx."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import StartServer

from retain.llm.base import LLM, Completion, CompletionStream, JSONSchema, Messages
from retain.models import Usage

FUZZ_SECONDS = int(os.environ.get("RETAIN_FUZZ_SECONDS", "45"))


class AgreeableLLM(LLM):
    """Always answers: no operations for extraction, a short text otherwise (the fuzzer must not run it dry)."""

    name = "agreeable"

    def __init__(self) -> None:
        self.model = "agreeable"

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        text = '{"operations": []}' if schema is not None else "ok"
        if stream:
            return CompletionStream([text], model=self.model)
        return Completion(text=text, usage=Usage(llm_calls=1), model=self.model)


def test_fuzzing_the_api_finds_no_server_errors(start_server: StartServer, tmp_path: Path) -> None:
    live = start_server(llm=AgreeableLLM(), rate_limit_per_minute=1_000_000)
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    run = subprocess.run(
        [
            cli,
            "run",
            f"{live.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--header",
            f"Authorization: Bearer {live.admin}",
            "--max-examples",
            "25",
            "--max-time",
            str(FUZZ_SECONDS),
            "--workers",
            "1",
            "--seed",
            "20261123",
            "--exclude-path",
            "/v1/admin/keys/{key_id}",  # revoking the fuzzer's own key would turn the rest into 401s
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        cwd=tmp_path,
    )
    report = run.stdout[-4000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None and int(counts[1]) == int(counts[2]) >= 100, report
