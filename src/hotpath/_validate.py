"""Checks of numeric options, shared by every component's constructors.

One rule set so that every option refuses NaN, infinities, booleans and out-of-range values
the same way, with the component's own config error naming the value and what to give.
NaN needs its own test: every comparison with it is false, so ``value <= 0`` lets it through.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, TypeVar

Options = TypeVar("Options")


def check_number(
    error: type[Exception],
    name: str,
    value: object,
    *,
    integer: bool = False,
    at_least: float | None = None,
    above: float | None = None,
    below: float | None = None,
    none_means: str | None = None,
    meaning: str = "",
) -> None:
    """Raise ``error`` unless ``value`` is a finite number in range.

    ``integer``: a whole number is needed. ``at_least``/``above``/``below``: the bounds
    (inclusive, exclusive, exclusive). ``none_means``: ``None`` is allowed and means this
    (e.g. ``"off"``). ``meaning``: what the option is, to end the message with.
    """
    if value is None and none_means is not None:
        return
    if _in_range(value, integer, at_least, above, below):
        return
    kind = "a whole number" if integer else "a finite number"
    bounds = [
        f"{op} {bound:g}"
        for op, bound in ((">=", at_least), (">", above), ("<", below))
        if bound is not None
    ]
    wanted = kind + (" " + " and ".join(bounds) if bounds else "")
    if none_means is not None:
        wanted += f", or None for {none_means}"
    raise error(f"{name}={value!r}: use {wanted}" + (f" ({meaning})" if meaning else ""))


def _in_range(
    value: object,
    integer: bool,
    at_least: float | None,
    above: float | None,
    below: float | None,
) -> bool:
    # bool is an int subclass, but `timeout_s=True` is a mistake, never one second
    if isinstance(value, bool) or not isinstance(
        value, numbers.Integral if integer else numbers.Real
    ):
        return False
    # ints compare exactly (float() of a huge int overflows); other reals must be finite
    number: Any = value
    if not isinstance(value, numbers.Integral) and not math.isfinite(float(value)):
        return False
    return (
        (at_least is None or number >= at_least)
        and (above is None or number > above)
        and (below is None or number < below)
    )


def with_keywords(
    cls: type[Options],
    options: Options | None,
    keywords: Mapping[str, object],
    error: type[Exception],
    what: str,
) -> Options:
    """``options`` (or ``cls``'s defaults) with ``keywords`` on top: the one way a component's
    frozen options dataclass is built from a constructor's ``options=`` and keywords. A
    keyword that is not a field is ``error`` naming it and the known ones (``what`` says
    whose options they are); the caller's object itself is kept when no keyword overrides it.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(keywords) - set(names))
    if unknown:
        raise error(
            f"{unknown[0]}={keywords[unknown[0]]!r}: not an option of {what} (they are "
            f"{', '.join(names)}); check its spelling"
        )
    if options is None:
        return cls(**keywords)
    return dataclasses.replace(options, **keywords) if keywords else options  # type: ignore[type-var]
