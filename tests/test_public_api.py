from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import retain


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(retain) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(retain, name)).__name__ == "module"}
    assert set(retain.__all__) == public - modules
    for name in retain.__all__:
        assert getattr(retain, name) is not None


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"), "RETAIN_STORE": "bogus://"}
    code = "import retain, retain.testing, retain.cli; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert list(tmp_path.iterdir()) == []


def test_error_tree() -> None:
    assert issubclass(retain.InvalidInputError, ValueError)
    assert issubclass(retain.NotFoundError, LookupError)
    for error in (
        retain.InvalidInputError,
        retain.NotFoundError,
        retain.ConfigError,
        retain.ProviderError,
        retain.StoreError,
    ):
        assert issubclass(error, retain.RetainError)
    assert not issubclass(retain.RetainError, MemoryError)
