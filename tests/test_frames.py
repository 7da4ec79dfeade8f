"""Which frames are the application's: libraries imported after the first look count too,
and hotpath's demo shop is application code because it says so."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from hotpath import _frames


def test_a_library_imported_after_the_first_look_is_a_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "marshmallow" not in sys.modules  # not a dependency: stands in for a late import
    app_code = compile("x = 1", str(Path.cwd() / "app.py"), "exec")
    assert not _frames.is_library(app_code)  # the first look: prefixes made
    package = tmp_path / "marshmallow"
    package.mkdir()
    late = types.ModuleType("marshmallow")
    late.__file__ = str(package / "__init__.py")
    monkeypatch.setitem(sys.modules, "marshmallow", late)
    library_code = compile("x = 1", str(package / "schema.py"), "exec")
    assert _frames.is_library(library_code)
    assert not _frames.is_library(app_code)


def test_the_demo_shop_registers_itself_as_application_code() -> None:
    import hotpath.demo.shop.app as shop_app

    assert not _frames.is_library(shop_app.create_app.__code__)
    import hotpath.observe._scope as scope_module

    assert _frames.is_library(scope_module.Scope.__init__.__code__)  # hotpath itself
