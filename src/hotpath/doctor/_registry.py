"""The registry of checks: id, title, the privilege each needs, and the function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._context import Context
    from ._model import Finding


CheckFunction = "Callable[[Context], list[Finding]]"


@dataclass(frozen=True)
class Check:
    """A registered check. ``needs`` names what it reads (see ``_context.requirement``)."""

    id: str
    title: str
    function: Callable[[Context], list[Finding]]
    needs: tuple[str, ...] = field(default_factory=tuple)


CHECKS: dict[str, Check] = {}


def check(
    id: str, title: str, *needs: str
) -> Callable[[Callable[[Context], list[Finding]]], Callable[[Context], list[Finding]]]:
    """Register ``function`` as check ``id``; ``needs`` are requirement names."""

    def register(
        function: Callable[[Context], list[Finding]],
    ) -> Callable[[Context], list[Finding]]:
        if id in CHECKS:
            raise ValueError(f"check {id!r} registered twice")
        CHECKS[id] = Check(id, title, function, needs)
        return function

    return register
