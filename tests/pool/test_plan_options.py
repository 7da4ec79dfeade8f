"""A plan's options are one validated frozen object (``PlanOptions``), given as keywords or as
``options=``, and passed through to the plan as is."""

from __future__ import annotations

import dataclasses

import pytest

from hotpath.pool import PlanOptions, PoolConfigError, PoolPlan


def _plan(**options: object) -> PoolPlan:
    return PoolPlan.from_settings(
        processes=2,
        concurrency_per_process=4,
        max_connections=100,
        **options,  # type: ignore[arg-type]
    )


def test_an_options_object_is_the_plans_options_and_keywords_override_it() -> None:
    options = PlanOptions(headroom=7, lifetime_jitter=0.2, timeout_s=2.0)
    plan = _plan(options=options, timeout_s=3.0)
    assert (plan.headroom, plan.lifetime_jitter, plan.timeout_s) == (7, 0.2, 3.0)
    # The remaining options keep their defaults; the budget used the headroom given.
    assert plan.max_lifetime_s == PlanOptions().max_lifetime_s
    assert "- 7 headroom" in plan.explain()


def test_keywords_alone_build_the_same_plan_as_the_object() -> None:
    assert _plan(headroom=7, lifetime_jitter=0.2) == _plan(
        options=PlanOptions(headroom=7, lifetime_jitter=0.2)
    )


def test_options_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PlanOptions().headroom = 1  # type: ignore[misc]


@pytest.mark.faults
def test_a_misspelt_option_names_itself_and_the_known_ones() -> None:
    with pytest.raises(PoolConfigError, match=r"lifetim_jitter=0.1: not an option of a pool plan"):
        _plan(lifetim_jitter=0.1)


@pytest.mark.faults
def test_a_bad_option_is_refused_when_the_object_is_built() -> None:
    with pytest.raises(PoolConfigError, match=r"lifetime_jitter=1: .* >= 0 and < 1"):
        PlanOptions(lifetime_jitter=1)
    with pytest.raises(PoolConfigError, match=r"headroom=-1: use a whole number >= 0"):
        _plan(options=PlanOptions(), headroom=-1)
