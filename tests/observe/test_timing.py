"""observe's timings: the inlined HdrHistogram recording and the one-walk percentiles give
what hdrh's own methods give."""

from __future__ import annotations

import random

import pytest
from hdrh.histogram import HdrHistogram

from hotpath.observe import Profiler
from hotpath.observe._records import LAYERS
from hotpath.observe._report import _FOLD_AT, _MAX_US, Rollup, Timing, record


def _values(seed: int) -> list[int]:
    rng = random.Random(seed)
    values = [1, 2, 3, 2047, 2048, 2049, 4095, 4096, _MAX_US - 1, _MAX_US]
    values += [min(_MAX_US, max(1, int(rng.lognormvariate(8, 3)))) for _ in range(5_000)]
    return values


def test_record_matches_record_value_bucket_for_bucket() -> None:
    for digits in (2, 3):
        ours, theirs = HdrHistogram(1, _MAX_US, digits), HdrHistogram(1, _MAX_US, digits)
        for value in _values(digits):
            record(ours, value)
            theirs.record_value(value)
        assert list(ours.counts) == list(theirs.counts)
        assert ours.get_total_count() == theirs.get_total_count()
        assert ours.get_min_value() == theirs.get_min_value()
        assert ours.get_max_value() == theirs.get_max_value()


def test_percentiles_in_one_walk_match_hdrh() -> None:
    timing = Timing()
    for value in _values(7):
        timing.record_ms(value / 1000)
    for _ in range(300):  # under 1 µs: counted apart, a percentile among them is 0
        timing.record_zero()
    ranks = (0.5, 5.0, 50.0, 95.0, 99.0, 99.99, 100.0)
    walked = timing.percentiles_ms(ranks)
    recorded = timing.count - timing.zeros
    for rank in ranks:
        below = rank / 100 * timing.count
        expected = (
            0.0
            if below <= timing.zeros
            else timing.histogram.get_value_at_percentile((below - timing.zeros) / recorded * 100)
            / 1000
        )
        assert walked[rank] == expected, rank
    assert Timing().percentiles_ms((50.0,)) == {50.0: 0.0}


def test_durations_folded_past_the_fold_size_and_on_read() -> None:
    """Durations are kept as recorded and folded in batches (every ``_FOLD_AT``, and when
    read): the counts, the total and the histogram are those of recording one by one."""
    values = _values(11)[: _FOLD_AT + 123]
    batched, one_by_one = Timing(), HdrHistogram(1, _MAX_US, 3)
    for value in values:
        batched.record_ms(value / 1000)
        record(one_by_one, int(value / 1000 * 1000))  # the same ms -> us conversion
    batched.record_zero()
    assert batched.count == len(values) + 1
    assert batched.zeros == 1
    assert batched.total_ms == pytest.approx(sum(values) / 1000)
    assert list(batched.histogram.counts) == list(one_by_one.counts)
    assert batched.histogram.get_max_value() == one_by_one.get_max_value()
    batched.record_ms(2.5)  # recorded after a read: folded at the next
    assert batched.count == len(values) + 2


def test_a_roll_up_nobody_reads_keeps_no_list_past_the_fold_size() -> None:
    """A roll-up folds what it appends every ``_FOLD_AT`` scopes (its timings' durations and
    its query counts alike): a long run that is never reported holds no growing list."""
    profiler = Profiler()
    with profiler.scope("GET /items") as scope:
        pass
    rollup = Rollup()
    for _ in range(2 * _FOLD_AT + 5):
        rollup.add(scope)
    assert len(rollup._queries.values) < _FOLD_AT
    assert len(rollup._layer_values) < _FOLD_AT * len(LAYERS)  # before layers deals them
    assert all(len(timing._ms) < _FOLD_AT for timing in (rollup.latency, *rollup.layers.values()))
    assert rollup.queries.get_total_count() == 2 * _FOLD_AT + 5
    assert rollup.latency.count == 2 * _FOLD_AT + 5


def test_each_layer_gets_its_own_time_from_every_scope() -> None:
    """A roll-up keeps the scopes' breakdowns flat and deals them to the layers' timings when
    read or folded: each layer's count and total are those of its own values, read between
    scopes and past a fold alike."""
    profiler = Profiler()
    with profiler.scope("GET /items") as scope:
        pass
    rollup = Rollup()
    scopes = _FOLD_AT + 7
    for index in range(scopes):
        # a distinct time per layer and per scope: a value dealt to the wrong layer shows
        scope.breakdown_ms = {
            layer: (rank + 1) * 10 + index % 3 for rank, layer in enumerate(LAYERS)
        }
        rollup.add(scope)
        if index == 5:
            assert rollup.layers[LAYERS[2]].count == 6  # read between scopes
    for rank, layer in enumerate(LAYERS):
        timing = rollup.layers[layer]
        assert timing.count == scopes
        expected = sum((rank + 1) * 10 + index % 3 for index in range(scopes))
        assert timing.total_ms == pytest.approx(expected)
        # in microseconds, to the layers' 2 significant digits
        assert timing.histogram.get_min_value() >= 0.98 * (rank + 1) * 10_000
        assert timing.histogram.get_max_value() <= 1.02 * ((rank + 1) * 10 + 2) * 1000
