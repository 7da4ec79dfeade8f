"""hotpath: make PostgreSQL + Redis backends fast, and prove it.

Components (each a sub-package with its own public API):

- :mod:`hotpath.stack` — a real local PostgreSQL primary + streaming replicas + Redis.
- :mod:`hotpath.testing` — the pytest plugin with fixtures on that stack.
- :mod:`hotpath.observe` — query capture, N+1/duplicate/slow detection, reports, middleware.
- :mod:`hotpath.plans` — EXPLAIN plan analysis shared by observe and doctor.

The names below are imported on first use, so ``import hotpath`` (which the pytest plugin
does in every project that installs hotpath) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import HotpathError

if TYPE_CHECKING:
    from .observe import Profiler
    from .stack import LocalStack, StackError

__version__ = "0.1.0"

_LAZY = {
    "LocalStack": "hotpath.stack",
    "StackError": "hotpath.stack",
    "Profiler": "hotpath.observe",
}

__all__ = ["HotpathError", "LocalStack", "Profiler", "StackError", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hotpath' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
