"""tools/async_to_sync.py: the sync twins are generated from their async sources, and
``--check`` (run by ``make lint``) fails while a generated file is stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "async_to_sync", ROOT / "tools" / "async_to_sync.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["async_to_sync"] = module
    spec.loader.exec_module(module)
    return module


SOURCE = '''"""A module docstring, kept as written: AsyncCache."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._acompat import AEvent, ensure_async


class AsyncCache:
    """An AsyncCache: its aclose() closes it."""

    async def run(self, loader: Callable[[], Awaitable[int]]) -> int:
        # a comment that says why, on AsyncCache
        value = await ensure_async(loader)
        async with self.lock:
            pass
        if True:  # ASYNC: only the async twin yields here
            await asyncio.sleep(0)
        else:
            value += 1
        event = AEvent()
        await event.wait_at_most(0.1)
        return value

    # ASYNC: an async-only method
    async def only_async(self) -> None:
        pass

    async def aclose(self) -> None:
        await self.run(lambda: 1)
'''


def test_the_conversion_rules(
    tool: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    source = tmp_path / "_async.py"
    source.write_text(SOURCE)
    code = tool.generate(source, tmp_path / "_sync.py", {})
    compile(code, "_sync.py", "exec")
    assert code.startswith("# Generated from _async.py by tools/async_to_sync.py: do not edit.")
    assert '"""A module docstring, kept as written: AsyncCache."""' in code
    assert "class Cache:" in code
    assert '"""An Cache: its close() closes it."""' in code  # names renamed in prose too
    assert "# a comment that says why, on Cache" in code
    assert "def run(self, loader: Callable[[], int]) -> int:" in code  # Awaitable[X] -> X
    assert "value = loader()" in code  # await ensure_async(f) -> f()
    assert "with self.lock:" in code
    assert "value += 1" in code
    assert "asyncio.sleep" not in code
    assert "event = Event()" in code
    assert "event.wait(0.1)" in code
    assert "only_async" not in code  # the statement after a # ASYNC comment dropped
    assert "def close(self) -> None:" in code
    body = code[code.index("class Cache:") :]
    assert "async" not in body
    assert "await" not in body
    assert "ensure_async" not in code
    assert "import asyncio" not in code


def test_check_passes_on_the_committed_twins(tool: ModuleType) -> None:
    assert tool.main(["--check"]) == 0


def test_check_fails_on_a_stale_twin(
    tool: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(tool, "ROOT", tmp_path)
    (tmp_path / "_async.py").write_text(SOURCE)
    monkeypatch.setattr(tool, "TWINS", {"_async.py": ("_sync.py", {})})
    assert tool.main([]) == 0  # written
    assert tool.main(["--check"]) == 0
    sync = tmp_path / "_sync.py"
    sync.write_text(sync.read_text().replace("value += 1", "value += 2"))  # edited by hand
    assert tool.main(["--check"]) == 1
    out, err = capsys.readouterr()
    assert "-        value += 2" in out
    assert "+        value += 1" in out
    assert "1 generated file(s) stale: _sync.py" in err
    assert "value += 2" in sync.read_text()  # --check changes nothing
