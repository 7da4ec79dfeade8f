"""Numeric options of the public constructors: NaN, infinities, booleans and out-of-range
values are refused with the component's own error naming the value and what to give."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from hotpath._validate import check_number
from hotpath.concurrent import (
    CircuitBreaker,
    ConcurrencyConfigError,
    deadline,
    gather_bounded,
    retry,
)
from hotpath.paging import PagingError, keyset_page

pytestmark = pytest.mark.faults


class _Refused(ValueError):
    pass


@pytest.mark.parametrize(
    ("value", "options", "message"),
    [
        (math.nan, {"above": 0}, "x=nan: use a finite number > 0"),
        (-math.inf, {"at_least": 0}, "x=-inf: use a finite number >= 0"),
        (True, {"integer": True}, "x=True: use a whole number"),
        (2.0, {"integer": True, "at_least": 1}, "x=2.0: use a whole number >= 1"),
        (None, {"above": 0}, "x=None: use a finite number > 0"),
        (1, {"at_least": 0, "below": 1}, "x=1: use a finite number >= 0 and < 1"),
        (0, {"above": 0, "none_means": "off", "meaning": "why"}, "or None for off (why)"),
    ],
)
def test_check_number_refuses_with_the_value_and_the_range(
    value: object, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(_Refused) as refused:
        check_number(_Refused, "x", value, **options)
    assert message in str(refused.value)


def test_check_number_accepts_what_is_in_range() -> None:
    check_number(_Refused, "x", 10**400, integer=True, at_least=1)  # no float overflow
    check_number(_Refused, "x", None, above=0, none_means="off")
    check_number(_Refused, "x", 0.5, at_least=0, below=1)


@pytest.mark.parametrize(
    ("build", "needle"),
    [
        (lambda: CircuitBreaker(reset_timeout=math.nan), "reset_timeout=nan"),
        (lambda: CircuitBreaker(failure_threshold=0), "failure_threshold=0"),
        (lambda: CircuitBreaker(half_open_max_calls=0), "half_open_max_calls=0"),
        (lambda: deadline(math.nan), "seconds=nan"),
        (lambda: deadline(math.inf), "seconds=inf"),
        (lambda: retry(idempotent=True, attempts=0), "attempts=0"),
        (lambda: retry(idempotent=True, base_delay=math.nan), "base_delay=nan"),
        (lambda: retry(idempotent=True, max_delay=-math.inf), "max_delay=-inf"),
    ],
)
def test_concurrent_constructors_refuse_bad_numbers(
    build: Callable[[], object], needle: str
) -> None:
    with pytest.raises(ConcurrencyConfigError, match=needle):
        build()


async def test_gather_bounded_refuses_bad_numbers() -> None:
    with pytest.raises(ConcurrencyConfigError, match="limit=0"):
        await gather_bounded(limit=0)
    with pytest.raises(ConcurrencyConfigError, match="timeout=nan"):
        await gather_bounded(timeout=math.nan)


def test_keyset_page_refuses_bad_limits() -> None:
    rows = table("rows", column("id"))
    for bad in (0, -1, 2.5, math.nan):
        with pytest.raises(PagingError, match=f"limit={bad}: use a whole number >= 1"):
            keyset_page(Session(), select(rows), [rows.c.id], limit=bad)  # type: ignore[arg-type]
