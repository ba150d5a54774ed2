"""Layer-wise allocation: exact global budgets, caps, ERK dense layers, custom densities."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenets.allocation import (
    allocate,
    allocate_counts,
    er_raw_density,
    erk_raw_density,
    proportional_counts,
)
from sparsenets.errors import SparsenetsError

linear_shape = st.tuples(st.integers(1, 40), st.integers(1, 40))
conv_shape = st.builds(
    lambda o, i, k: (o, i, k, k), st.integers(1, 12), st.integers(1, 12), st.integers(1, 3)
)
shape_lists = st.lists(st.one_of(linear_shape, conv_shape), min_size=1, max_size=5)
densities = st.floats(min_value=0.0, max_value=1.0, exclude_min=True, allow_nan=False)

RAW = {"uniform": lambda s: 1.0, "er": er_raw_density, "erk": erk_raw_density}


def as_shapes(shape_list: list[tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {f"layer{i}.weight": s for i, s in enumerate(shape_list)}


def reference_budgets(shapes, total, raw):
    """Independent oracle: bisect ε so that Σ min(n, ε·raw·n) = total (water filling)."""
    numel = {n: math.prod(s) for n, s in shapes.items()}

    def filled(eps):
        return sum(min(numel[n], eps * raw[n] * numel[n]) for n in shapes)

    lo, hi = 0.0, 1.0 / min(raw.values())
    for _ in range(200):
        mid = (lo + hi) / 2
        if filled(mid) < total:
            lo = mid
        else:
            hi = mid
    eps = hi
    return eps, {n: min(numel[n], eps * raw[n] * numel[n]) for n in shapes}


@settings(max_examples=150, deadline=None)
@given(shape_list=shape_lists, density=densities, kind=st.sampled_from(["uniform", "er", "erk"]))
def test_counts_sum_exactly_and_respect_numel(shape_list, density, kind):
    shapes = as_shapes(shape_list)
    counts = allocate_counts(shapes, density, kind)
    total_numel = sum(math.prod(s) for s in shapes.values())
    assert list(counts) == list(shapes)
    assert sum(counts.values()) == round(density * total_numel)
    for name, count in counts.items():
        assert isinstance(count, int)
        assert 0 <= count <= math.prod(shapes[name])


@settings(max_examples=150, deadline=None)
@given(shape_list=shape_lists, density=densities, kind=st.sampled_from(["uniform", "er", "erk"]))
def test_counts_within_one_of_real_budget(shape_list, density, kind):
    shapes = as_shapes(shape_list)
    counts = allocate_counts(shapes, density, kind)
    total = round(density * sum(math.prod(s) for s in shapes.values()))
    raw = {n: RAW[kind](s) for n, s in shapes.items()}
    _, budgets = reference_budgets(shapes, total, raw)
    for name in shapes:
        assert abs(counts[name] - budgets[name]) < 1 + 1e-6, (name, counts[name], budgets[name])


@settings(max_examples=100, deadline=None)
@given(shape_list=shape_lists, density=densities)
def test_uniform_budget_is_density_times_numel(shape_list, density):
    shapes = as_shapes(shape_list)
    counts = allocate_counts(shapes, density, "uniform")
    total_numel = sum(math.prod(s) for s in shapes.values())
    effective = round(density * total_numel) / total_numel
    for name, shape in shapes.items():
        assert abs(counts[name] - effective * math.prod(shape)) < 1 + 1e-9


@settings(max_examples=150, deadline=None)
@given(shape_list=shape_lists, density=densities)
def test_erk_dense_layers_are_the_highest_raw_scale(shape_list, density):
    shapes = as_shapes(shape_list)
    counts = allocate_counts(shapes, density, "erk")
    densities_ = allocate(shapes, density, "erk")
    total = sum(counts.values())
    raw = {n: erk_raw_density(s) for n, s in shapes.items()}
    eps, _ = reference_budgets(shapes, total, raw)
    assert all(d <= 1.0 for d in densities_.values())
    made_dense = [n for n in shapes if eps * raw[n] > 1.0 + 1e-9]
    for name in made_dense:
        assert counts[name] == math.prod(shapes[name])
        # every layer with at least this raw scale is dense too
        for other in shapes:
            if raw[other] >= raw[name]:
                assert counts[other] == math.prod(shapes[other])


def test_erk_small_layer_made_dense_by_hand():
    # raw(a) = 4/4 = 1, raw(b) = 200/10000 = 0.02; total = 5002.
    # ε = 5002/204 = 24.5 → a would be 24.5 > 1 → dense; then ε = 4998/200 → b gets 4998.
    counts = allocate_counts({"a": (2, 2), "b": (100, 100)}, 0.5, "erk")
    assert counts == {"a": 4, "b": 4998}


def test_erk_equals_er_for_linear_and_differs_for_conv():
    linear = {"a": (30, 20), "b": (10, 30)}
    assert allocate_counts(linear, 0.2, "erk") == allocate_counts(linear, 0.2, "er")
    conv = {"a": (8, 3, 5, 5), "b": (16, 8, 3, 3), "c": (10, 64)}
    assert allocate_counts(conv, 0.2, "erk") != allocate_counts(conv, 0.2, "er")


def test_density_one_is_dense():
    shapes = {"a": (3, 4), "b": (5, 2, 3, 3)}
    for kind in ("uniform", "er", "erk"):
        assert allocate_counts(shapes, 1.0, kind) == {"a": 12, "b": 90}


def test_custom_dict_counts():
    shapes = {"a": (10, 10), "b": (4, 5)}
    assert allocate_counts(shapes, 0.5, {"a": 0.25, "b": 1.0}) == {"a": 25, "b": 20}
    assert allocate(shapes, 0.5, lambda name, shape: 0.5) == {"a": 0.5, "b": 0.5}


@pytest.mark.parametrize(
    "custom",
    [{"a": 0.5}, {"a": 0.5, "b": 0.5, "c": 0.5}, {"a": 0.5, "zzz": 0.5}],
    ids=["missing", "unknown", "missing+unknown"],
)
def test_custom_dict_must_name_exactly_the_layers(custom):
    with pytest.raises(SparsenetsError) as info:
        allocate_counts({"a": (4, 4), "b": (4, 4)}, 0.5, custom)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_custom_density_out_of_range_names_value(bad):
    with pytest.raises(SparsenetsError) as info:
        allocate_counts({"a": (4, 4), "b": (4, 4)}, 0.5, {"a": 0.5, "b": bad})
    message = str(info.value)
    assert repr(bad) in message
    assert "b" in message
    assert "\n" not in message


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "abc", float("nan")])
def test_global_density_out_of_range(bad):
    with pytest.raises(SparsenetsError) as info:
        allocate_counts({"a": (4, 4)}, bad, "erk")
    assert repr(bad) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_distribution_lists_valid():
    with pytest.raises(SparsenetsError) as info:
        allocate_counts({"a": (4, 4)}, 0.5, "gaussian")
    message = str(info.value)
    assert "gaussian" in message
    for valid in ("uniform", "er", "erk"):
        assert valid in message


def test_no_layers_is_an_error():
    with pytest.raises(SparsenetsError) as info:
        allocate_counts({}, 0.5, "erk")
    assert "layer" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.tuples(
            st.floats(min_value=-1.0, max_value=10.0, allow_nan=False),
            st.integers(0, 50),
        ),
        min_size=1,
        max_size=6,
    ),
    total=st.integers(0, 300),
)
def test_proportional_counts_sum_and_caps(data, total):
    weights = {f"l{i}": w for i, (w, _) in enumerate(data)}
    caps = {f"l{i}": c for i, (_, c) in enumerate(data)}
    counts = proportional_counts(total, weights, caps)
    assert list(counts) == list(weights)
    assert sum(counts.values()) == min(total, sum(caps.values()))
    for name, count in counts.items():
        assert 0 <= count <= caps[name]


def test_proportional_counts_by_hand():
    # a is capped at 2, the rest goes to b
    assert proportional_counts(10, {"a": 1.0, "b": 1.0}, {"a": 2, "b": 100}) == {"a": 2, "b": 8}
    # proportional to weights when no cap binds
    assert proportional_counts(12, {"a": 1.0, "b": 3.0}, {"a": 50, "b": 50}) == {"a": 3, "b": 9}
    # all weights zero: split in proportion to the caps
    assert proportional_counts(6, {"a": 0.0, "b": 0.0}, {"a": 10, "b": 20}) == {"a": 2, "b": 4}
    # caps below the total: everyone at cap
    assert proportional_counts(100, {"a": 1.0, "b": 5.0}, {"a": 3, "b": 4}) == {"a": 3, "b": 4}
