"""Invariants of every dynamic-sparsity method, checked after every step of short training runs.

Fixed budget (static, set, rigl, mest, ctre): per-layer nnz equals the allocation after every
step; SNFS: global nnz constant; GMP/GraNet: nnz follows ``scheduled_counts`` exactly. At every
topology update the dropped/grown sets are checked against the drop count and the scores
(weights right after the optimizer step, dense gradients), and weights/optimizer state are zero
at inactive positions after every step.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sparse_checks import assert_exact_counts, assert_nothing_revived
from torch import nn

import sparsenets
from sparsenets import DynamicSparsity, SparsenetsError
from sparsenets.optim import per_element_state
from sparsenets.schedules import DropFraction

FIXED = ("static", "set", "rigl", "mest", "ctre")
DROP_AND_GROW = ("set", "rigl", "mest", "ctre", "snfs")
GRADUAL = ("gmp", "granet")
ALL = FIXED + ("snfs",) + GRADUAL
STEPS, EVERY, ALPHA = 30, 3, 0.5

PROPERTY_SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def method_options(method: str, **extra) -> dict:
    if method == "static":
        return dict(extra)
    options = {"update_every": EVERY}
    if method in DROP_AND_GROW:
        options["drop_fraction"] = ALPHA
    options.update(extra)
    return options


def expected_update_steps(method: str, steps: int, every: int, end_fraction: float = 0.75):
    if method == "static":
        return []
    return [t for t in range(1, steps + 1) if t % every == 0 and t <= int(end_fraction * steps)]


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # (cross_entropy is avoided: it is pathologically slow with 2 intra-op threads here)
    return (output - target).pow(2).mean()


def n_drop(fraction: float, mask: torch.Tensor) -> int:
    nnz = int(mask.sum())
    return min(round(fraction * nnz), nnz, mask.numel() - nnz)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def check_update(s, method, step, prev, after_opt, dense_grads):
    """Checks at a topology update: counts, disjointness, scores, fresh grown weights."""
    record = s.history[-1]
    assert record["step"] == step
    fraction = DropFraction(ALPHA if method in DROP_AND_GROW else 0.3, int(0.75 * STEPS),
                            "cosine").value(step)
    scheduled = s.method.scheduled_counts(s, step) if method in GRADUAL else None
    total_dropped = total_grown = 0
    for name, new in s.masks.items():
        old = prev[name]
        dropped, grown, kept = old & ~new, new & ~old, old & new
        layer = record["layers"][name]
        assert layer["dropped"] == int(dropped.sum())
        assert layer["grown"] == int(grown.sum())
        assert layer["nnz"] == int(new.sum())
        total_dropped += int(dropped.sum())
        total_grown += int(grown.sum())
        # grown weights start at exactly zero with fresh (zero) optimizer state
        param = s.params[name]
        assert bool((param[grown] == 0).all())
        for state in per_element_state(s.optimizer, param):
            assert bool((state[grown] == 0).all())
            assert bool((state[dropped] == 0).all())

        if method in ("set", "rigl", "mest", "ctre", "snfs"):
            assert int(dropped.sum()) == n_drop(fraction, old), name
        if method in ("set", "rigl", "mest", "ctre"):
            assert int(grown.sum()) == int(dropped.sum()), name
        if method == "gmp":
            assert int(new.sum()) == scheduled[name]
            assert not grown.any()
        if method == "granet":
            keep = scheduled[name]
            assert int(new.sum()) == keep
            n_regrow = min(round(fraction * keep), keep, old.numel() - int(old.sum()))
            assert int(grown.sum()) == n_regrow

        # drop by score: no kept weight scores below a dropped one
        if method == "mest":
            drop_score = after_opt[name].abs() + (dense_grads[name] * old).abs()
        else:
            drop_score = after_opt[name].abs()
        if dropped.any() and kept.any():
            assert float(drop_score[dropped].max()) <= float(drop_score[kept].min())
        # RigL / GraNet grow by the dense gradient among previously inactive positions
        if method in ("rigl", "granet"):
            passed_over = ~old & ~grown
            if grown.any() and passed_over.any():
                g = dense_grads[name].abs()
                assert float(g[grown].min()) >= float(g[passed_over].max())
    assert record["nnz"] == s.masks.nnz()
    assert record["grown"] == total_grown
    if method == "snfs":
        assert total_grown == total_dropped


def run_checked(model, optimizer, method, *, density, seed, inputs, n_out, **extra):
    """Train ``STEPS`` steps, checking every invariant after every step. Returns the sparsifier."""
    s = DynamicSparsity(
        model, optimizer, density=density, total_steps=STEPS, method=method, seed=seed,
        **method_options(method, **extra),
    )
    after_opt: dict[str, torch.Tensor] = {}
    optimizer.register_step_post_hook(
        lambda *_: after_opt.update({n: p.detach().clone() for n, p in s.params.items()})
    )
    updates = []
    gen = torch.Generator().manual_seed(1234)
    itop = s.masks.itop_rate()
    start_nnz = {n: s.masks.nnz(n) for n in s.masks}
    assert start_nnz == s.initial_counts
    if method not in GRADUAL:
        assert start_nnz == s.target_counts
    for step in range(1, STEPS + 1):
        x = torch.randn(8, *inputs, generator=gen)
        y = torch.randn(8, n_out, generator=gen)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        dense_grads = {n: p.grad.detach().clone() for n, p in s.params.items()}
        prev = {n: m.clone() for n, m in s.masks.items()}
        n_history = len(s.history)
        s.step()
        assert s.step_count == step
        updated = len(s.history) > n_history
        if updated:
            updates.append(step)
            check_update(s, method, step, prev, after_opt, dense_grads)
        assert_nothing_revived(s, step)
        if not updated:
            for name, mask in s.masks.items():
                assert torch.equal(mask, prev[name])
        if method in FIXED:
            assert_exact_counts(s)
        if method == "snfs":
            assert s.masks.nnz() == sum(s.target_counts.values())
        if method == "static":
            assert s.masks.itop_rate() == s.masks.density()
        assert s.masks.itop_rate() >= itop
        itop = s.masks.itop_rate()
    assert updates == expected_update_steps(method, STEPS, EVERY)
    if method in GRADUAL:
        assert {n: s.masks.nnz(n) for n in s.masks} == s.target_counts
    if method in ("set", "rigl"):
        assert sum(r["grown"] for r in s.history) > 0
        assert s.masks.itop_rate() > s.masks.density()
    return s


@pytest.mark.parametrize("method", ALL)
@PROPERTY_SETTINGS
@given(
    n_in=st.integers(6, 12),
    hidden=st.lists(st.integers(6, 16), min_size=1, max_size=2),
    n_out=st.integers(2, 4),
    density=st.sampled_from([0.1, 0.2, 0.35, 0.5]),
    opt_kind=st.sampled_from(["sgd", "adam", "adamw"]),
    seed=st.integers(0, 10_000),
    distribution=st.sampled_from(["erk", "er", "uniform"]),
)
def test_mlp_invariants(method, n_in, hidden, n_out, density, opt_kind, seed, distribution,
                        make_mlp, make_optimizer):
    model = make_mlp((n_in, *hidden, n_out), seed)
    optimizer = make_optimizer(opt_kind, model.parameters())
    s = run_checked(model, optimizer, method, density=density, seed=seed, inputs=(n_in,),
                    n_out=n_out, distribution=distribution)
    assert s.step_count == STEPS


@pytest.mark.parametrize("opt_kind", ["sgd", "adamw"])
@pytest.mark.parametrize("method", ALL)
def test_conv_invariants(method, opt_kind, make_optimizer):
    torch.manual_seed(3)
    model = ConvNet()
    optimizer = make_optimizer(opt_kind, model.parameters())
    s = run_checked(model, optimizer, method, density=0.3, seed=5, inputs=(2, 6, 6), n_out=3)
    assert [len(m.shape) for m in s.masks.values()] == [4, 4, 2]


@pytest.mark.parametrize("method", ["set", "rigl", "granet"])
def test_explore_invariants(method, make_mlp, make_optimizer):
    model = make_mlp((8, 12, 4), 1)
    optimizer = make_optimizer("sgd", model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=STEPS, method=method,
                        seed=2, **method_options(method, explore=True))
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        optimizer.zero_grad()
        model(torch.randn(8, 8, generator=gen)).pow(2).mean().backward()
        s.step()
        for name, mask in s.masks.items():
            assert bool((s.params[name][~mask] == 0).all())
    assert s.masks.itop_rate() > s.masks.density()


def test_explore_grows_never_active_positions_first(make_mlp, make_optimizer):
    model = make_mlp((10, 10), 0)
    optimizer = make_optimizer("sgd", model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.2, total_steps=100, method="rigl",
                        update_every=1, drop_fraction=0.2, drop_schedule="constant",
                        end_fraction=1.0, explore=True)
    for _ in range(4):
        ever = s.masks.ever_active("0.weight").clone()
        prev = s.masks["0.weight"].clone()
        optimizer.zero_grad()
        model(torch.randn(4, 10)).pow(2).sum().backward()
        s.step()
        grown = s.masks["0.weight"] & ~prev
        assert int(grown.sum()) == 4
        assert not bool((grown & ever).any())


def test_random_regrow_init_values(make_mlp, make_optimizer):
    model = make_mlp((16, 8), 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    s = DynamicSparsity(model, optimizer, density=0.25, total_steps=10, method="set",
                        update_every=1, drop_fraction=0.5, drop_schedule="constant",
                        end_fraction=1.0, regrow_init="random")
    prev = s.masks["0.weight"].clone()
    optimizer.zero_grad()
    model(torch.randn(4, 16)).sum().backward()
    s.step()
    grown = s.masks["0.weight"] & ~prev
    values = s.params["0.weight"][grown]
    assert grown.sum() == 16
    assert bool((values != 0).all())
    assert bool((values.abs() <= 1 / 16**0.5).all())


# -- determinism ---------------------------------------------------------------------------------
def short_run(method, seed, make_mlp, make_optimizer, steps=STEPS):
    model = make_mlp((10, 16, 4), 0)
    optimizer = make_optimizer("adam", model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=steps, method=method,
                        seed=seed, **method_options(method))
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(8, 10, generator=gen), torch.randn(8, 4, generator=gen)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        s.step()
    return model, s


@pytest.mark.parametrize("method", ALL)
def test_same_seed_same_run_different_seed_different_masks(method, make_mlp, make_optimizer):
    model_a, s_a = short_run(method, 7, make_mlp, make_optimizer)
    model_b, s_b = short_run(method, 7, make_mlp, make_optimizer)
    for name in s_a.masks:
        assert torch.equal(s_a.masks[name], s_b.masks[name])
        assert torch.equal(s_a.masks.ever_active(name), s_b.masks.ever_active(name))
    for (na, pa), (nb, pb) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    assert [r["layers"] for r in s_a.history] == [r["layers"] for r in s_b.history]
    if method in GRADUAL:
        return  # dense start, magnitude pruning: the seed only breaks ties
    _, s_c = short_run(method, 8, make_mlp, make_optimizer)
    assert any(not torch.equal(s_a.masks[n], s_c.masks[n]) for n in s_a.masks)


def test_sparse_to_sparse_granet_depends_on_seed(make_mlp, make_optimizer):
    masks = []
    for seed in (1, 2):
        model = make_mlp((10, 16, 4), 0)
        optimizer = make_optimizer("sgd", model.parameters())
        s = DynamicSparsity(model, optimizer, density=0.2, total_steps=STEPS, method="granet",
                            seed=seed, update_every=EVERY, initial_density=0.5)
        assert s.masks.nnz() == sum(s.initial_counts.values()) < s.masks.numel()
        masks.append({n: m.clone() for n, m in s.masks.items()})
    assert any(not torch.equal(masks[0][n], masks[1][n]) for n in masks[0])


def test_initial_masks_given_by_user(make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    optimizer = make_optimizer("sgd", model.parameters())
    mask = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    s = DynamicSparsity(model, optimizer, density=0.5, total_steps=10, method="static",
                        masks={"0.weight": mask})
    assert torch.equal(s.masks["0.weight"], mask)
    assert s.masks.itop_rate() == 4 / 12
    assert bool((model[0].weight[~mask] == 0).all())
    assert bool((model[0].weight[mask] != 0).all())
    with pytest.raises(SparsenetsError):
        DynamicSparsity(model, optimizer, density=0.5, total_steps=10, method="static",
                        masks={"1.weight": mask})


# -- bad input -----------------------------------------------------------------------------------
def single_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("density", [0, 1.5, -0.1, "abc"])
def test_bad_density_names_value(density, make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    with pytest.raises(SparsenetsError) as info:
        DynamicSparsity(model, make_optimizer("sgd", model.parameters()), density=density,
                        total_steps=10)
    message = single_line(info)
    assert str(density) in message
    assert "density" in message


def test_unknown_method_lists_valid(make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    with pytest.raises(SparsenetsError) as info:
        DynamicSparsity(model, make_optimizer("sgd", model.parameters()), density=0.5,
                        total_steps=10, method="foo")
    message = single_line(info)
    assert "'foo'" in message
    for name in sparsenets.METHODS:
        assert name in message


def test_unknown_option_names_option_and_valid_ones(make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    with pytest.raises(SparsenetsError) as info:
        DynamicSparsity(model, make_optimizer("sgd", model.parameters()), density=0.5,
                        total_steps=10, method="set", bogus=1)
    message = single_line(info)
    assert "bogus" in message
    for option in ("update_every", "drop_fraction", "drop_schedule", "end_fraction"):
        assert option in message


def test_optimizer_must_hold_the_params(make_mlp, make_optimizer):
    model, other = make_mlp((4, 3), 0), make_mlp((4, 3), 1)
    with pytest.raises(SparsenetsError) as info:
        DynamicSparsity(model, make_optimizer("sgd", other.parameters()), density=0.5,
                        total_steps=10)
    assert "0.weight" in single_line(info)
    # holding only the bias is not enough either
    with pytest.raises(SparsenetsError):
        DynamicSparsity(model, make_optimizer("sgd", [model[0].bias]), density=0.5,
                        total_steps=10)


@pytest.mark.parametrize(
    "options",
    [
        {"method": "rigl", "update_every": 0},
        {"method": "rigl", "drop_fraction": 1.5},
        {"method": "rigl", "drop_schedule": "sawtooth"},
        {"method": "rigl", "end_fraction": 0.0},
        {"method": "set", "regrow_init": "gaussian"},
        {"method": "gmp", "initial_density": 0.0},
        {"method": "gmp", "start_fraction": 0.9},
        {"method": "gmp", "update_every": 100},
        {"method": "ctre", "random_fraction": 2.0},
        {"method": "rigl", "update_every": 2.5},
        {"method": "rigl", "update_every": "3"},
        {"method": "rigl", "drop_fraction": "0.3"},
        {"total_steps": 0},
        {"total_steps": 2.5},
        {"distribution": "normal"},
    ],
    ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()),
)
def test_bad_options_raise_single_line(options, make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    kwargs = {"density": 0.5, "total_steps": 10, **options}
    with pytest.raises(SparsenetsError) as info:
        DynamicSparsity(model, make_optimizer("sgd", model.parameters()), **kwargs)
    message = single_line(info)
    bad = options.get("update_every", options.get("drop_fraction"))
    if bad is not None:
        assert str(bad) in message


def test_method_object_with_options_is_an_error(make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    s = DynamicSparsity(model, make_optimizer("sgd", model.parameters()), density=0.5,
                        total_steps=10, method=sparsenets.RigL(update_every=2))
    assert s.method.update_every == 2
    with pytest.raises(SparsenetsError) as info:
        DynamicSparsity(model, make_optimizer("sgd", model.parameters()), density=0.5,
                        total_steps=10, method=sparsenets.RigL(), update_every=2)
    assert "update_every" in single_line(info)


@pytest.mark.parametrize("method", GRADUAL)
@pytest.mark.parametrize(
    "distribution",
    [{"0.weight": 0.1, "2.weight": 0.5}, lambda name, shape: 0.25],
    ids=["dict", "callable"],
)
def test_gradual_with_custom_distribution_starts_dense(method, distribution, make_mlp,
                                                       make_optimizer):
    # initial_density=1.0 (the default) means dense-to-sparse whatever the target allocation
    model = make_mlp((8, 16, 4), 0)
    optimizer = make_optimizer("sgd", model.parameters())
    s = DynamicSparsity(model, optimizer, total_steps=STEPS, method=method,
                        update_every=EVERY, distribution=distribution)
    assert s.target_counts["0.weight"] < 128
    assert s.masks.nnz() == s.masks.numel(), s.initial_counts
    gen = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        optimizer.zero_grad()
        mse(model(torch.randn(8, 8, generator=gen)), torch.randn(8, 4, generator=gen)).backward()
        s.step()
    assert {n: s.masks.nnz(n) for n in s.masks} == s.target_counts


def test_rigl_needs_gradients(make_mlp, make_optimizer):
    model = make_mlp((4, 3), 0)
    optimizer = make_optimizer("sgd", model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.5, total_steps=10, method="rigl",
                        update_every=1)
    with pytest.raises(SparsenetsError) as info:
        s.step()
    assert "backward" in single_line(info)
