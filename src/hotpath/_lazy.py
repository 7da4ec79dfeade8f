"""Lazy re-exports (PEP 562) for packages whose import must stay cheap.

``hotpath`` and ``hotpath.testing`` load in every pytest run of any project with hotpath
installed, and the CLI imports every command's package to build ``--help``: their public
names are imported on first use instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` importing ``names[attr]`` (absolute or relative to
    ``package``) when ``attr`` is first used. ``"module:name"`` exports the module's ``name``
    as ``attr``."""

    def __getattr__(attr: str) -> Any:
        where = names.get(attr)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {attr!r}")
        module, _, name = where.partition(":")
        value = getattr(importlib.import_module(module, package), name or attr)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[attr] = value  # later lookups skip __getattr__
        return value

    return __getattr__
