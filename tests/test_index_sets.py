"""Index-space topology updates: pure set operations and selections on sorted flat indices equal
their dense counterparts, and a topology update of a CSR layer builds nothing of its dense shape."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sparsenets import DynamicSparsity, SparsenetsError
from sparsenets.dst.layers import CSRLayer
from sparsenets.index_sets import (
    complement,
    contains,
    difference,
    merge,
    sample_absent,
    sample_absent_preferring,
    topk_over_blocks,
    topk_over_blocks_preferring,
    union,
)
from sparsenets.masks import MaskStore, index_to_mask, mask_to_index
from sparsenets.select import select_topk

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_index(gen: torch.Generator, numel: int, density: float) -> torch.Tensor:
    return mask_to_index(torch.rand(numel, generator=gen) < density)


@SETTINGS
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_set_operations_equal_their_dense_versions(numel, density, seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = random_index(gen, numel, density), random_index(gen, numel, 1 - density)
    dense_a, dense_b = index_to_mask(a, (numel,)), index_to_mask(b, (numel,))
    assert torch.equal(complement(a, numel), mask_to_index(~dense_a))
    assert torch.equal(union(a, b), mask_to_index(dense_a | dense_b))
    assert torch.equal(difference(a, b), mask_to_index(dense_a & ~dense_b))
    assert torch.equal(merge(a, difference(b, a)), mask_to_index(dense_a | dense_b))
    probe = torch.randint(0, numel, (20,), generator=gen)
    assert torch.equal(contains(a, probe), dense_a[probe])


def _blocks(scores: torch.Tensor, cuts: list[int]):
    """ScoreBlocks of ``scores`` cut at ``cuts`` (sorted, within the length)."""
    flat = scores.reshape(-1)
    edges = [0, *sorted(set(c for c in cuts if 0 < c < flat.numel())), flat.numel()]

    def blocks():
        for lo, hi in zip(edges, edges[1:], strict=False):
            yield lo, flat[lo:hi]

    return blocks


@SETTINGS
@given(
    numel=st.integers(1, 200),
    density=st.floats(0.0, 0.95),
    k=st.integers(0, 220),
    levels=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 200), max_size=5),
    seed=st.integers(0, 2**31 - 1),
    tie_seed=st.one_of(st.none(), st.integers(0, 1000)),
    with_nan=st.booleans(),
)
def test_topk_over_blocks_equals_select_topk(numel, density, k, levels, cuts, seed, tie_seed, with_nan):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (numel,), generator=gen).float()  # many ties
    if with_nan:
        scores[torch.rand(numel, generator=gen) < 0.2] = float("nan")
    active = random_index(gen, numel, density)
    eligible = ~index_to_mask(active, (numel,))

    def tie_gen():
        return None if tie_seed is None else torch.Generator().manual_seed(tie_seed)

    expected = mask_to_index(select_topk(scores, k, eligible, generator=tie_gen()))
    from sparsenets.index_sets import absent_from

    got = topk_over_blocks(_blocks(scores, cuts), k, absent_from(active), generator=tie_gen())
    assert torch.equal(got, expected)


@SETTINGS
@given(
    numel=st.integers(1, 200),
    density=st.floats(0.0, 0.9),
    explored=st.floats(0.0, 1.0),
    k=st.integers(0, 220),
    cuts=st.lists(st.integers(0, 200), max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_preferring_never_active_equals_select_topk_prefer(numel, density, explored, k, cuts, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (numel,), generator=gen).float()
    active_mask = torch.rand(numel, generator=gen) < density
    ever_mask = active_mask | (torch.rand(numel, generator=gen) < explored)
    active, ever = mask_to_index(active_mask), mask_to_index(ever_mask)
    expected = select_topk(scores, k, ~active_mask, prefer=~ever_mask, generator=torch.Generator().manual_seed(3))
    got = topk_over_blocks_preferring(_blocks(scores, cuts), k, active, ever, numel,
                                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, mask_to_index(expected))


@SETTINGS
@given(numel=st.integers(1, 2000), density=st.floats(0.0, 1.0), k=st.integers(0, 2100), seed=st.integers(0, 2**31 - 1))
def test_sample_absent_draws_distinct_free_positions(numel, density, k, seed):
    gen = torch.Generator().manual_seed(seed)
    exclude = random_index(gen, numel, density)
    drawn = sample_absent(exclude, numel, k, torch.Generator().manual_seed(seed))
    assert drawn.numel() == min(k, numel - exclude.numel())
    assert torch.equal(drawn, torch.unique(drawn))  # sorted and distinct
    assert not bool(contains(exclude, drawn).any())
    if drawn.numel():
        assert 0 <= int(drawn.min()) and int(drawn.max()) < numel
    assert torch.equal(drawn, sample_absent(exclude, numel, k, torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("density", [0.05, 0.7])  # rejection sampling, and enumeration
def test_sample_absent_is_uniform_over_the_free_positions(density):
    numel, k, trials = 60, 6, 3000
    exclude = mask_to_index(torch.rand(numel, generator=torch.Generator().manual_seed(1)) < density)
    free = numel - exclude.numel()
    counts = torch.zeros(numel)
    gen = torch.Generator().manual_seed(2)
    for _ in range(trials):
        counts[sample_absent(exclude, numel, k, gen)] += 1
    assert float(counts[exclude].sum()) == 0
    observed = counts[~index_to_mask(exclude, (numel,))]
    expected = trials * k / free
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    # chi-square with free-1 degrees of freedom: mean free-1, sd sqrt(2(free-1)); 5 sd is generous
    assert chi2 < (free - 1) + 5 * math.sqrt(2 * (free - 1))


def test_sample_absent_preferring_takes_every_never_active_position_first():
    numel = 50
    active = torch.arange(0, 10)
    ever = torch.arange(0, 45)  # 5 never active: 45..49
    drawn = sample_absent_preferring(active, ever, numel, 8, torch.Generator().manual_seed(0))
    assert drawn.numel() == 8 and set(range(45, 50)) <= set(drawn.tolist())
    assert not bool(contains(active, drawn).any())
    few = sample_absent_preferring(active, ever, numel, 3, torch.Generator().manual_seed(0))
    assert set(few.tolist()) <= set(range(45, 50))


def test_mask_store_set_index_validates_and_tracks_ever_active():
    store = MaskStore({"w": (3, 4)})
    store.set_compact("w")
    store.set_index("w", torch.tensor([0, 5, 11]))
    assert store.nnz("w") == 3 and store.itop_rate("w") == 1.0  # started all-active
    store.reset_ever_active()
    store.set_index("w", torch.tensor([1, 5]))
    assert torch.equal(store.ever_index("w"), torch.tensor([0, 1, 5, 11]))
    for bad in (torch.tensor([3, 2]), torch.tensor([0, 12]), torch.tensor([1.0]), torch.tensor([[1]])):
        with pytest.raises(SparsenetsError, match="index for 'w'"):
            store.set_index("w", bad)
    dense = MaskStore({"w": (3, 4)})
    dense.set_index("w", torch.tensor([2, 7]))
    assert torch.equal(dense["w"], index_to_mask(torch.tensor([2, 7]), (3, 4)))


def test_update_rejects_a_malformed_change():
    from sparsenets.dst.base import as_topology_change

    with pytest.raises(SparsenetsError, match="bool mask of shape"):
        as_topology_change(torch.ones(2, 2), torch.tensor([0]), (2, 2))


# -- on the sparsifier --------------------------------------------------------------------------
def _mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _run(backend, method, steps=12, block_elements=None, monkeypatch=None, **options):
    if block_elements is not None:
        monkeypatch.setattr(CSRLayer, "BLOCK_ELEMENTS", block_elements)
    model = _mlp((20, 40, 30, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.2, total_steps=steps, method=method, backend=backend,
                        seed=3, update_every=3, drop_fraction=0.5, end_fraction=1.0, **options)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 5, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        s.step()
    return {n: s.masks[n].clone() for n in s.masks}, s


@pytest.mark.parametrize("options", [
    {}, {"explore": True}, {"regrow_init": "normal"}, {"regrow_init": "random", "sign_sided": True},
])
@pytest.mark.parametrize("method", ["set", "rigl", "mest"])
def test_rigl_blocks_and_random_growth_match_the_masked_backend(method, options, monkeypatch):
    masked, sa = _run("masked", method, **options)
    # blocks of 3 rows of 20 (or 40) inputs: the dense gradient is formed in many pieces
    sparse, sb = _run("sparse", method, block_elements=64, monkeypatch=monkeypatch, **options)
    for name in masked:
        assert torch.equal(masked[name], sparse[name]), name
        assert torch.allclose(sa.weight(name), sb.weight(name), atol=1e-6)
    assert [r["layers"] for r in sa.history] == [r["layers"] for r in sb.history]


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
                self.largest = max(self.largest, tensor.numel())
        return out


@pytest.mark.parametrize("method", ["set", "mest", "rigl"])
def test_a_csr_topology_update_builds_nothing_of_the_dense_shape(method, monkeypatch):
    monkeypatch.setattr(CSRLayer, "BLOCK_ELEMENTS", 4096)
    n_in, n_out = 400, 300  # 120 000 positions, 2% active
    model = nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.Linear(n_out, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.02, total_steps=4, method=method, backend="sparse",
                        update_every=2, end_fraction=1.0, distribution="uniform", seed=0)
    x, y = torch.randn(8, n_in), torch.randint(0, 3, (8,))
    for step in (1, 2):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if step == 1:
            s.step()
            continue
        with LargestTensor() as probe:
            s.step()
    assert len(s.history) == 1 and s.history[0]["grown"] > 0
    # every tensor of the update is O(nnz) or one gradient block, never (out, in)
    assert probe.largest <= max(4096, 4 * s.masks.nnz()), probe.largest
    assert probe.largest < n_in * n_out // 4


def test_structure_from_index_equals_the_mask_built_structure():
    from sparsenets.sparse.csr import build_structure, structure_from_index

    mask = torch.rand(7, 9, generator=torch.Generator().manual_seed(0)) < 0.3
    a, b = build_structure(mask), structure_from_index(mask_to_index(mask), (7, 9))
    for field in ("crow_indices", "col_indices", "t_crow_indices", "t_col_indices", "perm"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    with pytest.raises(SparsenetsError, match="strictly increasing"):
        structure_from_index(torch.tensor([3, 3]), (7, 9))
    with pytest.raises(SparsenetsError, match="outside"):
        structure_from_index(torch.tensor([63]), (7, 9))
