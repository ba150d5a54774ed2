"""Schedules: update steps, annealed drop fraction, cubic pruning schedule."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenets.errors import SparsenetsError
from sparsenets.schedules import CubicSchedule, DropFraction, UpdateSchedule


@settings(max_examples=50, deadline=None)
@given(alpha=st.floats(0.0, 1.0), end=st.integers(1, 500))
def test_cosine_drop_fraction(alpha, end):
    sched = DropFraction(alpha, end, "cosine")
    assert sched.value(0) == pytest.approx(alpha)
    assert sched.value(end) == pytest.approx(0.0, abs=1e-12)
    assert sched.value(end + 10) == pytest.approx(0.0, abs=1e-12)
    values = [sched.value(t) for t in range(end + 5)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values))
    assert all(0.0 <= v <= alpha + 1e-12 for v in values)


def test_cosine_midpoint_by_hand():
    sched = DropFraction(0.4, 100)
    assert sched.kind == "cosine"
    assert sched.value(50) == pytest.approx(0.2)
    assert sched.value(25) == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)))


def test_linear_and_constant_drop_fraction():
    linear = DropFraction(0.5, 10, "linear")
    assert [linear.value(t) for t in (0, 5, 10, 20)] == pytest.approx([0.5, 0.25, 0.0, 0.0])
    constant = DropFraction(0.3, 10, "constant")
    assert all(constant.value(t) == 0.3 for t in range(30))


def test_drop_fraction_validation():
    with pytest.raises(SparsenetsError) as info:
        DropFraction(0.3, 10, "exponential")
    assert "exponential" in str(info.value) and "cosine" in str(info.value)
    with pytest.raises(SparsenetsError) as info:
        DropFraction(1.5, 10)
    assert "1.5" in str(info.value)


def test_update_schedule_is_update():
    sched = UpdateSchedule(every=3, end_step=10)
    assert [t for t in range(20) if sched.is_update(t)] == [3, 6, 9]
    assert sched.last_update == 9
    sched = UpdateSchedule(every=5, end_step=30, start_step=10)
    assert [t for t in range(40) if sched.is_update(t)] == [15, 20, 25, 30]
    assert sched.last_update == 30
    # nothing left between start and end
    sched = UpdateSchedule(every=50, end_step=30, start_step=10)
    assert not any(sched.is_update(t) for t in range(100))
    assert sched.last_update == 10


@settings(max_examples=50, deadline=None)
@given(every=st.integers(1, 20), end=st.integers(0, 100), start=st.integers(0, 50))
def test_update_schedule_last_update_is_last(every, end, start):
    sched = UpdateSchedule(every, end, start)
    updates = [t for t in range(200) if sched.is_update(t)]
    assert all(t % every == 0 and start < t <= end for t in updates)
    assert sched.last_update == (updates[-1] if updates else start)


def test_update_every_must_be_positive():
    with pytest.raises(SparsenetsError) as info:
        UpdateSchedule(0, 10)
    assert "update_every" in str(info.value) and "0" in str(info.value)


@settings(max_examples=50, deadline=None)
@given(
    initial=st.floats(0.0, 1000.0),
    final=st.floats(0.0, 1000.0),
    start=st.integers(0, 50),
    span=st.integers(1, 100),
)
def test_cubic_schedule_monotone_endpoints(initial, final, start, span):
    sched = CubicSchedule(initial, final, start, start + span)
    assert sched.value(start) == pytest.approx(initial)
    assert sched.value(0) == pytest.approx(initial)
    assert sched.value(start + span) == pytest.approx(final)
    assert sched.value(start + span + 7) == pytest.approx(final)
    values = [sched.value(t) for t in range(start, start + span + 1)]
    sign = 1 if final >= initial else -1
    assert all(sign * (b - a) >= -1e-9 for a, b in itertools.pairwise(values))


def test_cubic_schedule_by_hand():
    sched = CubicSchedule(1.0, 0.0, 0, 10)
    assert sched.value(5) == pytest.approx(0.125)
    assert sched.value(2) == pytest.approx(0.512)
    sched = CubicSchedule(100.0, 10.0, 10, 20)
    assert sched.value(15) == pytest.approx(10 + 90 * 0.125)
    # degenerate span: already at the final value
    assert CubicSchedule(1.0, 0.0, 5, 5).value(0) == 0.0
