"""select() under each structure and comparison group, structure checks, the fraction validator, OWL."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenets.allocation import owl
from sparsenets.errors import SparsenetsError, check_density, check_fraction, check_sparsity
from sparsenets.scores import wanda
from sparsenets.select import (
    GROUPS,
    NM,
    Unstructured,
    check_structure,
    keep_count,
    parse_structure,
    select,
    select_topk,
    structure_violation,
)


def satisfies(mask, structure, **options) -> bool:
    return structure_violation(mask, structure, **options) is None


NM_PATTERNS = [(1, 2), (2, 4), (4, 8), (1, 4), (3, 4)]


def _scores(shape, seed, coarse):
    scores = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return scores.round(decimals=0) if coarse else scores  # coarse: many ties


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 30), k=st.integers(-2, 35), seed=st.integers(0, 99),
       coarse=st.booleans(), random_ties=st.booleans())
def test_select_row_group_exact_count_per_row_and_order(rows, cols, k, seed, coarse, random_ties):
    scores = _scores((rows, cols), seed, coarse)
    keep = select(scores, k, group="row", generator=_gen(seed) if random_ties else None)
    assert keep.dtype == torch.bool and keep.shape == scores.shape
    expected = max(0, min(k, cols))
    assert (keep.sum(1) == expected).all()
    assert satisfies(keep, Unstructured(), k=expected, group="row")
    for r in range(rows):
        if 0 < expected < cols:
            assert scores[r][keep[r]].min() >= scores[r][~keep[r]].max()


@settings(max_examples=60, deadline=None)
@given(nm=st.sampled_from(NM_PATTERNS), rows=st.integers(1, 5), groups=st.integers(1, 6), seed=st.integers(0, 99),
       coarse=st.booleans(), random_ties=st.booleans())
def test_select_nm_exactly_n_in_every_group(nm, rows, groups, seed, coarse, random_ties):
    structure = NM(*nm)
    scores = _scores((rows, groups * structure.m), seed, coarse)
    keep = select(scores, structure=structure, generator=_gen(seed) if random_ties else None)
    grouped_keep = keep.reshape(rows, groups, structure.m)
    assert (grouped_keep.sum(-1) == structure.n).all()
    check_structure(keep, structure)
    grouped = scores.reshape(rows, groups, structure.m)
    kept_min = torch.where(grouped_keep, grouped, torch.inf).min(-1).values
    pruned_max = torch.where(grouped_keep, -torch.inf, grouped).max(-1).values
    assert (kept_min >= pruned_max).all()


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(7,), (3, 5), (2, 3, 4)]), k=st.integers(-1, 30), seed=st.integers(0, 99),
       coarse=st.booleans())
def test_select_layer_group_is_select_topk(shape, k, seed, coarse):
    scores = _scores(shape, seed, coarse)
    keep = select(scores, k)  # unstructured, layer group by default
    assert int(keep.sum()) == max(0, min(k, scores.numel()))
    assert torch.equal(keep, select_topk(scores, k))
    assert torch.equal(select(scores, k, group="layer", generator=_gen(seed)), select_topk(scores, k, generator=_gen(seed)))
    assert satisfies(keep, Unstructured(), k=max(0, min(k, scores.numel())), group="layer")


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4), k=st.integers(0, 50), seed=st.integers(0, 99),
       coarse=st.booleans())
def test_select_global_group_counts_over_all_layers(sizes, k, seed, coarse):
    scores = {f"layer{i}.weight": _scores((2, n), seed + i, coarse) for i, n in enumerate(sizes)}
    keep = select(scores, k, group="global")
    assert list(keep) == list(scores) and all(keep[n].shape == scores[n].shape for n in scores)
    total = sum(s.numel() for s in scores.values())
    assert sum(int(m.sum()) for m in keep.values()) == min(k, total)
    kept = torch.cat([scores[n][keep[n]] for n in scores])
    dropped = torch.cat([scores[n][~keep[n]] for n in scores])
    if kept.numel() and dropped.numel():
        assert kept.min() >= dropped.max()


@settings(max_examples=80, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 30), k=st.integers(0, 30), seed=st.integers(0, 99),
       coarse=st.booleans(), special=st.sampled_from([None, float("inf"), float("-inf"), float("nan")]))
def test_row_group_without_generator_equals_a_stable_ascending_sort(rows, cols, k, seed, coarse, special):
    """The k-th-value threshold used for rows prunes exactly what a stable sort would."""
    scores = _scores((rows, cols), seed, coarse)
    if special is not None:
        scores[0, seed % cols] = special
    k = min(k, cols)
    expected = torch.ones(rows, cols, dtype=torch.bool)
    expected.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, : cols - k], False)
    assert torch.equal(select(scores, k, group="row"), expected)


def test_row_group_ties_pruned_by_position_and_nm_ties_kept_by_position():
    """Golden cases of the two tie rules (kept from the LLM code they came from)."""
    ones = torch.ones(1, 4)
    assert select(ones, 2, group="row").tolist() == [[False, False, True, True]]
    assert select(ones, structure=NM(2, 4)).tolist() == [[True, True, False, False]]
    scores = torch.tensor([[0.1, 3.0, -2.0, 0.5, 9.0, 8.0, 7.0, 1.0]])
    assert select(scores, structure=NM(2, 4)).tolist() == [[False, True, False, True, True, True, False, False]]
    assert select(scores, 3, group="row").tolist() == [[False, False, False, False, True, True, True, False]]


def test_row_group_flattens_trailing_dims():
    scores = torch.randn(3, 2, 5, generator=_gen(0))
    keep = select(scores, 4, group="row")
    assert keep.shape == scores.shape and (keep.reshape(3, -1).sum(1) == 4).all()
    assert torch.equal(keep.reshape(3, -1), select(scores.reshape(3, -1), 4, group="row"))


def test_structure_types_and_parser():
    assert str(Unstructured()) == "unstructured" and not Unstructured().is_nm
    nm = NM(2, 4)
    assert str(nm) == "2:4" and nm.is_nm and nm.density == 0.5 and nm.sparsity == 0.5
    assert NM(1, 4).sparsity == 0.75 and NM(1, 4).density == 0.25
    assert parse_structure("2:4") == nm and parse_structure(" Unstructured ") == Unstructured()
    assert parse_structure(nm) is nm
    for bad in ("4:2", "2:2", "0:4", "2-4", "dense", ""):
        with pytest.raises(SparsenetsError, match=r"unknown structure .*valid: unstructured, N:M with 0 < N < M"):
            parse_structure(bad)
    with pytest.raises(SparsenetsError, match="0 < N < M"):
        NM(4, 2)
    with pytest.raises(AttributeError):
        nm.n = 3  # frozen


def test_select_bad_arguments_are_one_line_errors():
    scores = torch.randn(2, 8)
    with pytest.raises(SparsenetsError, match=r"unknown comparison group 'column' \(valid: row, layer, global\)"):
        select(scores, 2, group="column")
    with pytest.raises(SparsenetsError, match="group must be 'row', got 'layer'"):
        select(scores, structure=NM(2, 4), group="layer")
    with pytest.raises(SparsenetsError, match="keeps exactly 2 per group; got k=3"):
        select(scores, 3, structure=NM(2, 4))
    with pytest.raises(SparsenetsError, match="needs k"):
        select(scores)
    with pytest.raises(SparsenetsError, match="divisible by 8, got 12"):
        select(torch.randn(2, 12), structure=NM(4, 8))
    with pytest.raises(SparsenetsError, match="needs scores as"):
        select(scores, 2, group="global")
    with pytest.raises(SparsenetsError, match=">= 2 dims"):
        select(torch.randn(5), 2, group="row")
    assert GROUPS == ("row", "layer", "global")


def test_check_structure_reports_the_first_violation():
    keep = select(torch.randn(3, 8, generator=_gen(1)), structure=NM(2, 4))
    assert structure_violation(keep, NM(2, 4)) is None
    broken = keep.clone()
    broken[1, 5] = ~broken[1, 5]
    with pytest.raises(SparsenetsError, match=r"^q_proj: 1 of 6 groups of 4 break structure 2:4: group 3 keeps [13], expected exactly 2$"):
        check_structure(broken, NM(2, 4), name="q_proj")
    fewer = keep.clone()
    fewer[0, :4] = False
    assert not satisfies(fewer, NM(2, 4)) and satisfies(fewer, NM(2, 4), at_most=True)
    assert "divisible by 8" in structure_violation(keep[:, :4], NM(4, 8))
    rows = select(torch.randn(4, 10, generator=_gen(2)), 6, group="row")
    assert satisfies(rows, Unstructured(), k=6) and not satisfies(rows, Unstructured(), k=5)
    assert satisfies(rows, Unstructured(), k=7, at_most=True) and satisfies(rows, Unstructured())
    assert satisfies(rows, Unstructured(), k=24, group="layer")
    assert "must be torch.bool" in structure_violation(rows.float(), Unstructured())


def test_keep_count_is_the_per_row_conversion_from_sparsity():
    assert keep_count(10, 0.5) == 5 and keep_count(7, 0.5) == 3 and keep_count(3, 0.0) == 3  # round half to even
    assert [keep_count(n, 0.3) for n in (1, 2, 3, 10)] == [n - round(0.3 * n) for n in (1, 2, 3, 10)]


def test_one_fraction_validator_behind_density_and_sparsity():
    assert check_density(1.0) == 1.0 and check_sparsity(0.0) == 0.0 and check_sparsity("0.25") == 0.25
    for bad in (0.0, 1.5, -0.1, float("nan")):
        with pytest.raises(SparsenetsError, match=r"^density must be in \(0, 1\], got"):
            check_density(bad)
    for bad in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(SparsenetsError, match=r"^sparsity must be in \[0, 1\), got"):
            check_sparsity(bad)
    with pytest.raises(SparsenetsError, match=r"^sparsity must be a number in \[0, 1\), got 'x'$"):
        check_sparsity("x")
    with pytest.raises(SparsenetsError, match=r"^rate must be a number in \[0, 1\], got None$"):
        check_fraction(None, "rate", include_zero=True, include_one=True)
    assert check_fraction(0.0, "rate", include_zero=True, include_one=True) == 0.0


def test_wanda_score_shapes_and_values():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-0.5, 0.0, 1.0]], dtype=torch.bfloat16)
    norms = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    scores = wanda(weight, norms)
    assert scores.dtype == torch.float32 and scores.shape == (2, 3)
    assert scores.tolist() == [[2.0, 2.0, 1.5], [1.0, 0.0, 0.5]]


@settings(max_examples=60, deadline=None)
@given(ratios=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=8), sparsity=st.floats(0.2, 0.8),
       lam=st.floats(0.0, 0.15))
def test_owl_allocation_mean_bounds_and_order(ratios, sparsity, lam):
    named = {f"model.layers.{i}": r for i, r in enumerate(ratios)}
    result = owl(named, sparsity, lam)
    assert list(result) == list(named)
    values = list(result.values())
    assert sum(values) / len(values) == pytest.approx(sparsity, abs=1e-9)
    assert all(sparsity - lam - 1e-12 <= v <= sparsity + lam + 1e-12 for v in values)
    for a in named:  # more outliers → never a higher sparsity
        for b in named:
            if named[a] > named[b]:
                assert result[a] <= result[b] + 1e-12


def test_owl_errors():
    with pytest.raises(SparsenetsError, match="OWL lambda must be >= 0"):
        owl({"a": 0.1, "b": 0.2}, 0.5, -0.1)
    with pytest.raises(SparsenetsError, match="at least one"):
        owl({}, 0.5)
    with pytest.raises(SparsenetsError, match="lower owl_lambda"):
        owl({"a": 0.0, "b": 1.0}, 0.95, 0.08)
