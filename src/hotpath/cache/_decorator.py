"""Keys and tags for ``@cache.cached`` functions: templates filled from the call's arguments."""

from __future__ import annotations

import inspect
import string
from collections.abc import Callable
from typing import Any

from ._errors import CacheKeyError
from ._serialize import register_type

_SKIPPED = ("self", "cls")


class KeyTemplate:
    """Builds a call's key and tags; ``key="user:{user_id}"`` names parameters of ``fn``.
    Without a template the key is the function's qualified name plus the arguments' reprs
    (``self``/``cls`` left out, so methods share entries across instances)."""

    def __init__(self, fn: Callable[..., Any], key: str | None, tags: tuple[str, ...]) -> None:
        self._signature = inspect.signature(fn)
        self._key = key
        self._tags = tags
        self._prefix = f"{fn.__module__}.{fn.__qualname__}"
        names = set(self._signature.parameters)
        for template in (key, *tags):
            if template is None:
                continue
            for _, field, _, _ in string.Formatter().parse(template):
                if field is None:
                    continue
                base = field.split(".", 1)[0].split("[", 1)[0]
                if base not in names:
                    raise CacheKeyError(
                        f"key template {template!r} of {self._prefix} uses {{{field}}}, which "
                        f"is not a parameter; use one of: {', '.join(sorted(names)) or '(none)'}"
                    )
        returns = self._signature.return_annotation
        if inspect.isclass(returns) and hasattr(returns, "__dataclass_fields__"):
            register_type(returns)

    def build(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = bound.arguments
        if self._key is not None:
            key = self._key.format(**values)
        else:
            shown = [f"{k}={v!r}" for k, v in values.items() if k not in _SKIPPED]
            key = f"{self._prefix}({', '.join(shown)})"
        return key, tuple(t.format(**values) for t in self._tags)
