"""Optimizer state never revives dropped weights; grown weights start fresh; exact resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsenets import DynamicSparsity, LeanAdamW, SparsenetsError
from sparsenets.optim import per_element_state, reset_state_

OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-2),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
    "lean-adamw": lambda p: LeanAdamW(p, lr=0.01, weight_decay=0.5),
}
#: Optimizers whose per-element state has the parameter's shape (LeanAdamW keeps it compact:
#: tests/test_lean_optim.py checks it separately).
DENSE_STATE = [name for name in OPTIMIZERS if name != "lean-adamw"]


def mse(output, target):
    return (output - target).pow(2).mean()


def batch(gen, n_in=8, n_out=4):
    return torch.randn(16, n_in, generator=gen), torch.randn(16, n_out, generator=gen)


@pytest.mark.parametrize("opt_name", DENSE_STATE)
def test_dropped_weights_stay_dead_and_grown_start_fresh(opt_name, make_mlp):
    model = make_mlp((8, 16, 4), 0)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    # updates at steps 5, 10, 15, 20; then 60 steps with a frozen topology
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=80, method="rigl",
                        update_every=5, end_fraction=0.25, drop_fraction=0.5,
                        drop_schedule="constant")
    after_opt = {}
    optimizer.register_step_post_hook(
        lambda *_: after_opt.update({n: p.detach().clone() for n, p in s.params.items()})
    )
    gen = torch.Generator().manual_seed(0)
    dead: dict[str, torch.Tensor] = {}
    n_updates = 0
    for step in range(1, 81):
        x, y = batch(gen)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        prev = {n: m.clone() for n, m in s.masks.items()}
        s.step()
        for name, param in s.params.items():
            mask = s.masks[name]
            states = per_element_state(optimizer, param)
            assert states, "optimizer keeps per-element state"
            # the optimizer itself leaves inactive weights at exactly 0 (not just re-masked)
            assert bool((after_opt[name][~prev[name]] == 0).all()), (name, step)
            assert bool((param[~mask] == 0).all())
            for state in states:
                assert bool((state[~mask] == 0).all()), (name, step)
            if step % 5 == 0 and step <= 20:
                dropped, grown = prev[name] & ~mask, mask & ~prev[name]
                assert dropped.any() and grown.any()
                assert bool((param[grown] == 0).all())
                for state in states:
                    assert bool((state[grown] == 0).all())
                    assert bool((state[dropped] == 0).all())
                dead[name] = dropped
            else:
                assert torch.equal(mask, prev[name])
        n_updates += len(s.history) > 0 and s.history[-1]["step"] == step
    assert n_updates == 4
    # the positions dropped at the last update: never revived over the 60 later steps
    for name, param in s.params.items():
        assert bool((param[dead[name]] == 0).all())
        for state in per_element_state(optimizer, param):
            assert bool((state[dead[name]] == 0).all())


def test_grown_weights_get_gradient_updates_after_regrowth(make_mlp):
    model = make_mlp((8, 16, 4), 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=40, method="rigl",
                        update_every=5, drop_fraction=0.5)
    gen = torch.Generator().manual_seed(0)
    grown = None
    for step in range(1, 8):
        x, y = batch(gen)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        prev = s.masks["0.weight"].clone()
        s.step()
        if step == 5:
            grown = s.masks["0.weight"] & ~prev
    assert grown is not None and grown.any()
    # RigL grows where the gradient is large, so the grown weights move away from 0
    assert bool((model[0].weight[grown] != 0).any())


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adamw"])
def test_gmp_pruned_weights_state_is_cleared(opt_name, make_mlp):
    model = make_mlp((8, 16, 4), 0)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.2, total_steps=40, method="gmp",
                        update_every=4, end_fraction=0.5)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        x, y = batch(gen)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        s.step()
    assert s.masks.nnz() == sum(s.target_counts.values())
    for name, param in s.params.items():
        pruned = ~s.masks[name]
        assert bool((param[pruned] == 0).all())
        for state in per_element_state(optimizer, param):
            assert bool((state[pruned] == 0).all())


def test_existing_dense_state_is_cleared_at_construction(make_mlp):
    model = make_mlp((8, 16, 4), 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):  # dense warm-up fills the moments everywhere
        x, y = batch(gen)
        optimizer.zero_grad()
        mse(model(x), y).backward()
        optimizer.step()
    assert bool((optimizer.state[model[0].weight]["exp_avg"] != 0).all())
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=10, method="set",
                        update_every=2)
    for name, param in s.params.items():
        for state in per_element_state(optimizer, param):
            assert bool((state[~s.masks[name]] == 0).all())
            assert bool((state[s.masks[name]] != 0).any())
    # biases are not sparsified: their state is untouched
    assert bool((optimizer.state[model[0].bias]["exp_avg"] != 0).all())


def test_reset_state_only_touches_per_element_tensors():
    param = nn.Parameter(torch.ones(2, 3))
    optimizer = torch.optim.Adam([param], lr=0.1)
    param.grad = torch.ones(2, 3)
    optimizer.step()
    step_before = optimizer.state[param]["step"].clone()
    positions = torch.tensor([[True, False, False], [False, False, True]])
    reset_state_(optimizer, param, positions)
    for key in ("exp_avg", "exp_avg_sq"):
        state = optimizer.state[param][key]
        assert bool((state[positions] == 0).all())
        assert bool((state[~positions] != 0).all())
    assert torch.equal(optimizer.state[param]["step"], step_before)


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adamw"])
def test_step_with_closure_keeps_state_zero_at_inactive(opt_name, make_mlp):
    # the standard closure pattern: the gradient is computed inside the closure only
    model = make_mlp((8, 16, 4), 0)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=30, method="set",
                        update_every=3)
    gen = torch.Generator().manual_seed(3)
    for _ in range(6):
        x, y = batch(gen)

        def closure(x=x, y=y):
            optimizer.zero_grad()
            loss = mse(model(x), y)
            loss.backward()
            return loss

        loss = s.step(closure)
        assert torch.is_tensor(loss)
        for name, param in s.params.items():
            assert bool((param[~s.masks[name]] == 0).all())
            for state in per_element_state(optimizer, param):
                assert bool((state[~s.masks[name]] == 0).all()), name


# -- exact resume ---------------------------------------------------------------------------------
RESUME_CASES = {
    "rigl": ("sgd-momentum", {"update_every": 3, "drop_fraction": 0.5}),
    "snfs": ("adam", {"update_every": 3, "drop_fraction": 0.5}),
    "granet": ("adamw", {"update_every": 3, "initial_density": 0.6}),
    "set": ("sgd-nesterov", {"update_every": 3, "explore": True}),
    "mest": ("lean-adamw", {"update_every": 3, "drop_fraction": 0.5}),
}
N_STEPS = 24


def build(method, model_seed, make_mlp):
    opt_name, options = RESUME_CASES[method]
    model = make_mlp((8, 16, 12, 4), model_seed)
    optimizer = OPTIMIZERS[opt_name](model.parameters())
    s = DynamicSparsity(model, optimizer, density=0.25, total_steps=N_STEPS, method=method,
                        seed=11, **options)
    return model, optimizer, s


def train(model, optimizer, s, data):
    for x, y in data:
        optimizer.zero_grad()
        mse(model(x), y).backward()
        s.step()


@pytest.mark.parametrize("method", RESUME_CASES)
def test_resume_is_exact(method, make_mlp, tmp_path):
    gen = torch.Generator().manual_seed(5)
    data = [batch(gen) for _ in range(N_STEPS)]
    half = N_STEPS // 2

    model_a, opt_a, s_a = build(method, 0, make_mlp)
    train(model_a, opt_a, s_a, data)

    model_b, opt_b, s_b = build(method, 0, make_mlp)
    train(model_b, opt_b, s_b, data[:half])
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {"model": model_b.state_dict(), "optimizer": opt_b.state_dict(),
         "sparsifier": s_b.state_dict()},
        path,
    )
    del model_b, opt_b, s_b

    # fresh objects (different init, so nothing is inherited by accident)
    model_c, opt_c, s_c = build(method, 99, make_mlp)
    checkpoint = torch.load(path, weights_only=True)
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])
    s_c.load_state_dict(checkpoint["sparsifier"])
    assert s_c.step_count == half
    train(model_c, opt_c, s_c, data[half:])

    assert s_a.step_count == s_c.step_count == N_STEPS
    assert len(s_a.history) > len(checkpoint["sparsifier"]["history"]) > 0
    for name in s_a.masks:
        assert torch.equal(s_a.masks[name], s_c.masks[name]), name
        assert torch.equal(s_a.masks.ever_active(name), s_c.masks.ever_active(name)), name
    state_a, state_c = model_a.state_dict(), model_c.state_dict()
    assert list(state_a) == list(state_c)
    for key in state_a:
        assert torch.equal(state_a[key], state_c[key]), key
    for pa, pc in zip(model_a.parameters(), model_c.parameters()):
        for key, value in opt_a.state[pa].items():
            assert torch.equal(value, opt_c.state[pc][key]), key
    assert [r["layers"] for r in s_a.history] == [r["layers"] for r in s_c.history]
    for key, value in s_a.buffers.items():
        assert torch.equal(value, s_c.buffers[key])


def test_load_state_dict_rejects_other_method(make_mlp):
    _, _, s_rigl = build("rigl", 0, make_mlp)
    _, _, s_set = build("set", 0, make_mlp)
    with pytest.raises(SparsenetsError) as info:
        s_set.load_state_dict(s_rigl.state_dict())
    assert "rigl" in str(info.value) and "set" in str(info.value)
