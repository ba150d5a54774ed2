"""prune_at_init: exact budgets, ties, determinism, targets, errors, and training the masks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsenets import DynamicSparsity, MaskStore, find_targets
from sparsenets.allocation import allocate_counts
from sparsenets.errors import SparsenetsError
from sparsenets.prune import METHODS, prune_at_init

SIZES = (12, 10, 8, 3)


def _data(n: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, SIZES[0], generator=gen), torch.arange(n) % SIZES[-1]


def _fast(method: str) -> dict:
    return {"rounds": 5} if method == "synflow" else {}


def _constant(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("allocation", ["global", "lamp", "erk", "uniform"])
def test_budget_is_exact_even_when_every_weight_ties(make_mlp, method, allocation):
    model = _constant(make_mlp(SIZES))
    masks = prune_at_init(model, method, 0.3, _data(), allocation=allocation, **_fast(method))
    assert isinstance(masks, MaskStore)
    assert list(masks) == find_targets(model)
    assert masks.nnz() == round(0.3 * masks.numel())
    if allocation in ("erk", "uniform"):
        expected = allocate_counts(masks.shapes, 0.3, allocation)
        assert {n: masks.nnz(n) for n in masks} == expected
    assert masks.itop_rate() == masks.density()


@settings(max_examples=25, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    density=st.floats(0.01, 1.0),
    method=st.sampled_from(["magnitude", "random", "snip", "synflow"]),
    allocation=st.sampled_from(["global", "lamp", "er", "erk", "uniform"]),
    seed=st.integers(0, 1000),
)
def test_budget_property(make_mlp, hidden, density, method, allocation, seed):
    model = make_mlp((SIZES[0], *hidden, SIZES[-1]), seed)
    masks = prune_at_init(model, method, density, _data(), allocation=allocation, seed=seed, **_fast(method))
    assert masks.nnz() == round(density * masks.numel())
    if allocation not in ("global", "lamp"):
        assert {n: masks.nnz(n) for n in masks} == allocate_counts(masks.shapes, density, allocation)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_same_seed_same_masks_and_ties_follow_the_seed(make_mlp, method):
    # constant weights and inputs: every score of a layer ties
    options = _fast(method)
    model = _constant(make_mlp(SIZES))
    x, y = _data()
    data = (torch.ones_like(x), y)
    first = prune_at_init(model, method, 0.25, data, seed=7, **options)
    again = prune_at_init(model, method, 0.25, data, seed=7, **options)
    other = prune_at_init(model, method, 0.25, data, seed=8, **options)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_the_model_is_left_as_it_was(make_mlp):
    model = nn.Sequential(nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.5), nn.Linear(10, 3))
    model.train()
    model[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in sorted(METHODS):
        prune_at_init(model, method, 0.2, _data(), **_fast(method))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model[1].training and not model[3].training


def test_snip_uses_ten_samples_per_class_by_default(make_mlp):
    model = make_mlp(SIZES)
    x, y = _data(30)
    masks = prune_at_init(model, "snip", 0.2, [(x[:10], y[:10]), (x[10:], y[10:])])
    assert masks.nnz() == round(0.2 * masks.numel())
    with pytest.raises(SparsenetsError, match="snip needs 30 samples, data holds only 20"):
        prune_at_init(model, "snip", 0.2, (x[:20], y[:20]))
    # a one-shot iterator is read once
    prune_at_init(model, "snip", 0.2, iter([(x[:10], y[:10]), (x[10:], y[10:])]))


def test_grasp_needs_a_class_balanced_batch(make_mlp):
    model = make_mlp(SIZES)
    x, y = _data(30)
    y = torch.where(y == 2, 0, y)  # class 2 never appears
    with pytest.raises(SparsenetsError, match=r"10 samples of each of 3 classes.*\{2: 0\}"):
        prune_at_init(model, "grasp", 0.2, (x, y))
    with pytest.raises(SparsenetsError, match=r"labels must lie in \[0, 3\)"):
        prune_at_init(model, "grasp", 0.2, (x, y + 3))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "snip scores need data"),
        (torch.zeros(3, 12), "must be .x, y. tensors or an iterable"),
        ([(torch.zeros(3, 12),)], "batch 0 must be a pair"),
        ((torch.zeros(3, 12), torch.zeros(2, dtype=torch.long)), "share the batch size"),
        ((torch.zeros(3, 12), torch.zeros(3)), "integer class indices"),
        ([], "holds no batch"),
    ],
)
def test_bad_data_gets_a_one_line_error(make_mlp, data, message):
    with pytest.raises(SparsenetsError, match=message) as info:
        prune_at_init(make_mlp(SIZES), "snip", 0.2, data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "snipp"}, "unknown pruning method 'snipp'"),
        ({"method": "grasp", "rounds": 3}, r"unknown option\(s\) \['rounds'\] for pruning method grasp"),
        ({"method": "magnitude", "allocation": "lampp"}, "unknown allocation 'lampp'"),
        ({"method": "magnitude", "density": 0.0}, r"density must be in \(0, 1\]"),
        ({"method": "synflow", "rounds": 0}, "rounds must be a positive integer"),
        ({"method": "grasp", "temperature": -1}, "temperature must be a positive number"),
        ({"method": "snip", "samples_per_class": 0}, "samples_per_class must be a positive integer"),
    ],
)
def test_bad_arguments_get_a_one_line_error(make_mlp, kwargs, message):
    kwargs = {"density": 0.2, **kwargs}
    with pytest.raises(SparsenetsError, match=message):
        prune_at_init(make_mlp(SIZES), data=_data(), **kwargs)


def test_synflow_needs_an_input_shape_for_a_conv_model():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with pytest.raises(SparsenetsError, match="input_shape"):
        prune_at_init(model, "synflow", 0.5, rounds=2)
    masks = prune_at_init(model, "synflow", 0.5, rounds=2, input_shape=(1, 6, 6))
    assert masks.nnz() == round(0.5 * masks.numel())
    from_data = prune_at_init(model, "synflow", 0.5, (torch.zeros(2, 1, 6, 6), torch.zeros(2, dtype=torch.long)), rounds=2)
    assert all(torch.equal(masks[n], from_data[n]) for n in masks)


def test_targets_pass_through(make_mlp):
    model = make_mlp(SIZES)
    kwargs = {"exclude": "2.weight", "dense_first": True}
    masks = prune_at_init(model, "magnitude", 0.3, **kwargs)
    assert list(masks) == find_targets(model, **kwargs) == ["4.weight"]
    assert list(prune_at_init(model, "random", 0.3, include="2.*", allocation="erk")) == ["2.weight"]
    assert list(prune_at_init(model, "magnitude", 0.3, dense_last=True)) == ["0.weight", "2.weight"]


def test_random_with_a_distribution_equals_the_sparsifier_own_random_mask(make_mlp):
    model = make_mlp(SIZES)
    masks = prune_at_init(model, "random", 0.3, allocation="erk", seed=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    own = DynamicSparsity(model, opt, density=0.3, total_steps=10, method="static", distribution="erk", seed=5)
    assert all(torch.equal(masks[n], own.masks[n]) for n in masks)


@pytest.mark.parametrize("method", ["static", "rigl"])
@pytest.mark.parametrize("give_density", [False, True])
def test_the_masks_train_with_dynamic_sparsity(make_mlp, method, give_density):
    torch.manual_seed(0)
    model = make_mlp(SIZES)
    x, y = _data(60)
    masks = prune_at_init(model, "snip", 0.3, (x, y), dense_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    density = masks.density() if give_density else None
    sparsifier = DynamicSparsity(
        model, opt, density=density, total_steps=8, method=method, masks=masks, dense_last=True,
        **({"update_every": 2} if method == "rigl" else {}),
    )
    assert {n: sparsifier.masks.nnz(n) for n in masks} == {n: masks.nnz(n) for n in masks}
    params = dict(model.named_parameters())
    for step in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[step::8]), y[step::8])
        loss.backward()
        sparsifier.step()
        assert sparsifier.masks.nnz() == masks.nnz()
        for name in masks:
            assert bool((params[name][~sparsifier.masks[name]] == 0).all())
    if method == "static":
        assert all(torch.equal(sparsifier.masks[n], masks[n]) for n in masks)


def test_the_example_of_docs_pruning_runs():
    doc = Path(__file__).resolve().parent.parent / "docs" / "pruning.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {"__name__": "pruning_doc"}
    exec(compile(blocks[0], f"{doc}:example", "exec"), namespace)  # noqa: S102
    assert namespace["sparsifier"].masks.nnz() == namespace["masks"].nnz()
