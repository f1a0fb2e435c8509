"""The `retain` command: noun groups and verbs over the same `Memory` API.

User errors print one line to stderr and exit with status 1 (2 for bad
input); no tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import ConfigError, InvalidInputError, RetainError
from .memory import Memory
from .models import HistoryEntry, MemoryRecord
from .settings import Settings
from .transfer import export_jsonl, import_jsonl
from .worker import Worker

F = TypeVar("F", bound=Callable[..., Any])


def scope_options(func: F) -> F:
    for option in (
        click.option("--run", "run_id", help="Session (run) id."),
        click.option("--agent", "agent_id", help="Agent id."),
        click.option("--user", "user_id", help="User id."),
    ):
        func = option(func)
    return func


@contextmanager
def _memory(ctx: click.Context) -> Iterator[Memory]:
    settings: Settings = ctx.obj["settings"]
    with _errors():
        memory = Memory(settings=settings, tenant_id=ctx.obj["tenant"])
    try:
        with _errors():
            yield memory
    finally:
        memory.close()


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except InvalidInputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except RetainError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


def _json_arg(raw: str | None, name: str) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc.msg}", param_hint=name) from None


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


@click.group()
@click.option("--store", envvar="RETAIN_STORE", help="Store URL, e.g. sqlite:///retain.db (env RETAIN_STORE).")
@click.option("--embedder", envvar="RETAIN_EMBEDDER", help="Embedder spec, e.g. local:minilm (env RETAIN_EMBEDDER).")
@click.option("--tenant", default="default", show_default=True, help="Tenant to act in.")
@click.pass_context
def main(ctx: click.Context, store: str | None, embedder: str | None, tenant: str) -> None:
    """Retain: long-term memory for LLM applications."""
    with _errors():
        settings = Settings.from_env()
    settings = replace(settings, store=store or settings.store, embedder=embedder or settings.embedder)
    ctx.obj = {"settings": settings, "tenant": tenant}


@main.group()
def memories() -> None:
    """Add, search, list, inspect and delete memories."""


@memories.command("add")
@click.argument("text")
@scope_options
@click.option("--metadata", help="JSON object stored with the memory.")
@click.option("--at", help="When this was said (ISO-8601); defaults to now.")
@click.option("--infer/--no-infer", default=False, show_default=True, help="Extract facts with the LLM.")
@click.pass_context
def memories_add(
    ctx: click.Context,
    text: str,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    metadata: str | None,
    at: str | None,
    infer: bool,
) -> None:
    """Remember TEXT."""
    with _memory(ctx) as memory:
        result = memory.add(
            text,
            user_id=user_id,
            agent_id=agent_id,
            run_id=run_id,
            metadata=_json_arg(metadata, "--metadata"),
            at=at,
            infer=infer,
        )
        for event in result.results:
            click.echo(f"{event.event:<6} {event.id}  {event.memory}")


@memories.command("search")
@click.argument("query")
@scope_options
@click.option("--limit", default=10, show_default=True)
@click.option("--filters", help='JSON filter, e.g. \'{"category": "preference"}\'.')
@click.option("--threshold", type=float, help="Minimum cosine similarity.")
@click.option("--as-of", "as_of", help="Search what was valid at this time (ISO-8601).")
@click.option("--explain", is_flag=True, help="Show each signal's score.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def memories_search(
    ctx: click.Context,
    query: str,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    limit: int,
    filters: str | None,
    threshold: float | None,
    as_of: str | None,
    explain: bool,
    as_json: bool,
) -> None:
    """Find the memories most relevant to QUERY."""
    with _memory(ctx) as memory:
        result = memory.search(
            query,
            user_id=user_id,
            agent_id=agent_id,
            run_id=run_id,
            limit=limit,
            filters=_json_arg(filters, "--filters"),
            threshold=threshold,
            as_of=as_of,
            explain=explain,
        )
        if as_json:
            _print_json(result.model_dump(mode="json"))
            return
        for hit in result.results:
            line = f"{hit.score:.3f}  {hit.id}  {hit.memory}"
            if hit.scores:
                line += "  " + " ".join(f"{k}={v:.3f}" for k, v in hit.scores.items())
            click.echo(line)


@memories.command("list")
@scope_options
@click.option("--limit", default=100, show_default=True)
@click.option("--cursor", help="Continue from a previous page.")
@click.option("--all-versions", is_flag=True, help="Include superseded versions.")
@click.option("--filters", help="JSON filter.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def memories_list(
    ctx: click.Context,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    limit: int,
    cursor: str | None,
    all_versions: bool,
    filters: str | None,
    as_json: bool,
) -> None:
    """List memories, newest first."""
    with _memory(ctx) as memory:
        page = memory.get_all(
            user_id=user_id,
            agent_id=agent_id,
            run_id=run_id,
            limit=limit,
            cursor=cursor,
            include_superseded=all_versions,
            filters=_json_arg(filters, "--filters"),
        )
        if as_json:
            _print_json(page.model_dump(mode="json"))
            return
        for record in page.results:
            click.echo(_record_line(record))
        if page.next_cursor:
            click.echo(f"-- more: --cursor {page.next_cursor}", err=True)


@memories.command("get")
@click.argument("id")
@click.pass_context
def memories_get(ctx: click.Context, id: str) -> None:
    """Show one memory version as JSON."""
    with _memory(ctx) as memory:
        _print_json(memory.get(id).model_dump(mode="json"))


@memories.command("history")
@click.argument("id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def memories_history(ctx: click.Context, id: str, as_json: bool) -> None:
    """Show how a memory changed: every version, with reasons."""
    with _memory(ctx) as memory:
        entries = memory.history(id)
        if as_json:
            _print_json([e.model_dump(mode="json") for e in entries])
            return
        for entry in entries:
            click.echo(_history_line(entry))


@memories.command("delete")
@click.argument("id", required=False)
@scope_options
@click.option("--all", "everything", is_flag=True, help="Purge everything in the given scope.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
@click.pass_context
def memories_delete(
    ctx: click.Context,
    id: str | None,
    user_id: str | None,
    agent_id: str | None,
    run_id: str | None,
    everything: bool,
    yes: bool,
) -> None:
    """Purge memory ID (all its versions), or with --all everything in a scope."""
    if (id is None) == (not everything):
        raise click.UsageError("Give a memory ID, or --all with --user/--agent/--run.")
    with _memory(ctx) as memory:
        if everything:
            if not yes:
                click.confirm("Purge all memories, history and messages in this scope?", abort=True)
            counts = memory.delete_all(user_id=user_id, agent_id=agent_id, run_id=run_id)
        else:
            assert id is not None
            counts = memory.delete(id)
        click.echo(" ".join(f"{k}={v}" for k, v in counts.model_dump().items()))


@main.command("export")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="File (default: stdout).")
@click.pass_context
def export_command(ctx: click.Context, out_path: Path | None) -> None:
    """Export every memory version, event and message as JSON Lines."""
    with _memory(ctx) as memory:
        if out_path is None:
            count = export_jsonl(memory, sys.stdout)
        else:
            with out_path.open("w", encoding="utf-8") as out:
                count = export_jsonl(memory, out)
        click.echo(f"exported {count} rows", err=True)


@main.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def import_command(ctx: click.Context, path: Path) -> None:
    """Import a JSON Lines export (ids already present are skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    with _memory(ctx) as memory, click.progressbar(length=max(len(lines) - 1, 0), label="importing") as bar:
        counts = import_jsonl(memory, lines, progress=bar.update)
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))


@main.command("worker")
@click.option("--once", is_flag=True, help="Process the jobs that are due, then exit.")
@click.option("--poll", default=1.0, show_default=True, help="Seconds between polls when idle.")
@click.pass_context
def worker_command(ctx: click.Context, once: bool, poll: float) -> None:
    """Run background extraction jobs (needs RETAIN_LLM)."""
    settings = replace(ctx.obj["settings"], in_process_worker=False)
    with _errors():
        memory = Memory(settings=settings, tenant_id=ctx.obj["tenant"])
    try:
        with _errors():
            if memory.llm is None:
                raise ConfigError("The worker needs an LLM: set RETAIN_LLM=openai:gpt-4o-mini or local:qwen2.5-1.5b.")
            if once:
                click.echo(f"processed {memory.run_jobs()} jobs")
                return
            click.echo("retain worker: waiting for jobs (Ctrl+C to stop)", err=True)
            Worker(memory, poll_seconds=poll).run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        memory.close()


@main.group()
def jobs() -> None:
    """Inspect and retry background jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "done", "dead"]))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_list(ctx: click.Context, status: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    with _memory(ctx) as memory:
        found = memory.jobs(status=status, limit=limit)
        if as_json:
            _print_json([j.model_dump(mode="json") for j in found])
            return
        for job in found:
            error = f"  {job.last_error}" if job.last_error else ""
            click.echo(
                f"{job.id}  {job.status:<7} attempts={job.attempts}/{job.max_attempts}  user={job.user_id}{error}"
            )


@jobs.command("retry")
@click.argument("job_id")
@click.pass_context
def jobs_retry(ctx: click.Context, job_id: str) -> None:
    """Requeue a dead-lettered job."""
    with _memory(ctx) as memory:
        job = memory.retry_job(job_id)
        click.echo(f"{job.id}  {job.status}")


@main.group()
def store() -> None:
    """Inspect the store."""


@store.command("check")
@click.pass_context
def store_check(ctx: click.Context) -> None:
    """Verify that every memory has its vector, keyword row and events."""
    with _memory(ctx) as memory:
        problems = memory.store.check_integrity()
        for problem in problems:
            click.echo(problem)
        click.echo("ok" if not problems else f"{len(problems)} problems", err=bool(problems))
        if problems:
            sys.exit(1)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--no-auth", is_flag=True, help="Development only: no API keys, everything in tenant 'default'.")
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, no_auth: bool) -> None:
    """Run the HTTP API and the web UI (store from RETAIN_STORE, LLM from RETAIN_LLM).

    Without RETAIN_LLM the local model is used when the [local] extra is installed.
    On a store with no API keys, an admin key for tenant 'default' is made and printed once.
    """
    import uvicorn

    from .keys import Keys
    from .server import create_app

    settings: Settings = ctx.obj["settings"]
    if settings.llm is None and "RETAIN_LLM" not in os.environ:
        settings = replace(settings, llm=_local_llm_if_installed())
    with _errors():
        memory = Memory(settings=settings)
        app = create_app(settings, memory=memory, auth=not no_auth)
    _configure_logging()
    url = f"http://{host}:{port}"
    click.echo(f"retain: store {settings.store}", err=True)
    click.echo(f"retain: LLM {memory.llm.model if memory.llm else 'none (set RETAIN_LLM to enable chat)'}", err=True)
    if no_auth:
        click.echo("WARNING: --no-auth: anyone who can reach this port can read and delete every memory.", err=True)
        click.echo(f"retain: open {url}/", err=True)
    else:
        keys = Keys(memory.store)
        if not keys.exist():
            _, secret = keys.create("default", name="first admin key", admin=True)
            click.echo("retain: made the first API key (admin, tenant 'default'); it is shown only once:", err=True)
            click.echo(f"retain: open {url}/#key={secret}", err=True)
            click.echo(secret)
        else:
            click.echo(f"retain: open {url}/ and enter an API key (retain keys create --tenant NAME)", err=True)
    try:
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        memory.close()


def _local_llm_if_installed() -> str | None:
    from .llm.local import DEFAULT_MODEL, LocalLLM

    try:
        LocalLLM(DEFAULT_MODEL)
    except ConfigError:
        return None
    return f"local:{DEFAULT_MODEL}"


def _configure_logging() -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('{"time": "%(asctime)s", "level": "%(levelname)s", "log": %(message)s}'))
    for name in ("retain.http",):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.group()
def keys() -> None:
    """Make, list and revoke API keys (each key belongs to one tenant)."""


@keys.command("create")
@click.option("--tenant", "tenant_id", required=True, help="The tenant the key can read and write.")
@click.option("--name", default="", help="A label for listings.")
@click.option("--admin", is_flag=True, help="The key may also manage keys of every tenant.")
@click.pass_context
def keys_create(ctx: click.Context, tenant_id: str, name: str, admin: bool) -> None:
    """Make a key. The key is printed as the last line, and only this once."""
    from .keys import Keys

    with _memory(ctx) as memory:
        key, secret = Keys(memory.store).create(tenant_id, name=name, admin=admin)
        click.echo(f"made key {key.id} ({key.name}) for tenant {key.tenant_id}{' [admin]' if admin else ''}", err=True)
        click.echo(secret)


@keys.command("list")
@click.option("--tenant", "tenant_id", help="Only this tenant's keys.")
@click.pass_context
def keys_list(ctx: click.Context, tenant_id: str | None) -> None:
    """List keys (never their secrets)."""
    from .keys import Keys

    with _memory(ctx) as memory:
        for key in Keys(memory.store).list(tenant_id):
            state = "revoked" if key.revoked_at is not None else "active"
            role = "admin" if key.admin else "user"
            click.echo(f"{key.id}  {key.prefix}…  {key.tenant_id}  {role}  {state}  {key.name}")


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key: requests with it are refused from now on."""
    from .keys import Keys

    with _memory(ctx) as memory:
        Keys(memory.store).revoke(key_id)
        click.echo(f"revoked {key_id}")


@main.command("chat")
@click.option("--user", "user_id", required=True, help="Who is chatting.")
@click.option("--session", "session_id", help="Session id (default: a new one).")
@click.option("--agent-mode", is_flag=True, help="Let the model search and save memories itself.")
@click.pass_context
def chat_command(ctx: click.Context, user_id: str, session_id: str | None, agent_mode: bool) -> None:
    """Chat in the terminal with an assistant that remembers (needs RETAIN_LLM)."""
    from .chat import Chat
    from .memory import new_id

    session = session_id or new_id()
    with _memory(ctx) as memory:
        chat = Chat(memory)
        click.echo(f"session {session}; empty line or Ctrl+D to quit", err=True)
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if not line.strip():
                break
            events = chat.stream(line, user_id=user_id, session_id=session, mode="agent" if agent_mode else "simple")
            for event in events:
                if event.type == "memories" and event.memories:
                    click.echo(f"  (remembered: {'; '.join(m.memory for m in event.memories)})", err=True)
                elif event.type == "tool":
                    click.echo(f"  ({event.tool} {json.dumps(event.arguments)})", err=True)
                elif event.type == "token":
                    click.echo(event.text, nl=False)
                elif event.type == "error":
                    click.echo(f"error: {event.detail}", err=True)
            click.echo()
        chat.close()
        memory.run_jobs()  # learn from this conversation before exiting


def _record_line(record: MemoryRecord) -> str:
    state = "" if record.valid_to is None else f"  (superseded {record.valid_to:%Y-%m-%d})"
    return f"{record.id}  [{record.category or '-'}]  {record.memory}{state}"


def _history_line(entry: HistoryEntry) -> str:
    change = entry.new_memory if entry.old_memory is None else f"{entry.old_memory!r} -> {entry.new_memory!r}"
    reason = f"  because: {entry.reason}" if entry.reason else ""
    return f"{entry.created_at:%Y-%m-%d %H:%M:%S}  {entry.event:<6} {entry.memory_id}  {change}{reason}"


if __name__ == "__main__":
    main()
