"""LeanAdamW: exact AdamW with a fixed topology, compact state that follows topology updates,
a bounded first step for regrown weights, and its memory against dense AdamW."""

from __future__ import annotations

import pytest
import torch

from sparsenets import DynamicSparsity, LeanAdamW, SparsenetsError


def mse(output, target):
    return (output - target).pow(2).mean()


def data(n_steps, n_in=8, n_out=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, n_in, generator=gen), torch.randn(16, n_out, generator=gen)) for _ in range(n_steps)]


def train(model, optimizer, sparsifier, batches, after_step=None):
    for step, (x, y) in enumerate(batches, start=1):
        optimizer.zero_grad()
        mse(model(x), y).backward()
        sparsifier.step()
        if after_step is not None:
            after_step(step)


@pytest.mark.parametrize("size", [7, 64, 1000, 4099])
def test_dense_parameters_follow_adamw_bitwise(size):
    torch.manual_seed(size)
    a = torch.nn.Parameter(torch.randn(size))
    b = torch.nn.Parameter(a.detach().clone())
    reference, lean = torch.optim.AdamW([a], lr=1e-2, weight_decay=0.1), LeanAdamW([b], lr=1e-2, weight_decay=0.1)
    for _ in range(25):
        grad = torch.randn(size)
        a.grad, b.grad = grad.clone(), grad.clone()
        reference.step()
        lean.step()
    assert torch.equal(a, b)
    assert lean.state[b]["step"].dtype == torch.int16 and bool((lean.state[b]["step"] == 25).all())


def test_masked_parameters_follow_adamw_bitwise_with_a_fixed_topology(make_mlp):
    runs = []
    for make in (lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05),
                 lambda p: LeanAdamW(p, lr=0.01, weight_decay=0.05)):
        model = make_mlp((8, 32, 16, 4), 0)
        optimizer = make(model.parameters())
        sparsifier = DynamicSparsity(model, optimizer, density=0.3, total_steps=30, method="static", seed=3)
        train(model, optimizer, sparsifier, data(30))
        runs.append((model, optimizer, sparsifier))
    (dense_model, _, s_dense), (lean_model, lean, s_lean) = runs
    for (name, a), b in zip(dense_model.named_parameters(), lean_model.parameters()):
        assert torch.equal(a, b), name
    for name, param in s_lean.params.items():  # compact: one entry per active weight
        assert lean.state[param]["exp_avg"].shape == (s_lean.masks.nnz(name),)


def test_state_follows_topology_updates_and_regrown_weights_start_gently(make_mlp):
    lr, eps = 0.01, 1e-8
    model = make_mlp((8, 32, 16, 4), 1)
    optimizer = LeanAdamW(model.parameters(), lr=lr, eps=eps, weight_decay=0.0)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=60, method="rigl", update_every=10,
                        end_fraction=0.8, drop_fraction=0.5, drop_schedule="constant", seed=0)
    grown: dict[str, torch.Tensor] = {}
    before: dict[str, torch.Tensor] = {}
    checked = []

    def after_step(step):
        for name, param in s.params.items():
            mask = s.masks[name]
            assert bool((param[~mask] == 0).all()), (name, step)
            if step % 10 == 1 and name in grown:  # the first step after an update
                first = (param.detach() - before[name])[grown[name]].abs()
                assert float(first.max()) <= lr * (1 + 1e-6), (name, step)
                counts = optimizer.state[param]["step"]
                flat = mask.reshape(-1)
                assert bool((counts[grown[name].reshape(-1)[flat]] == 1).all()), (name, step)
                assert int(counts.max()) == step
                checked.append(step)
            if step % 10 == 0:  # an update step (until end_fraction): what it grew, checked next step
                if s.history and s.history[-1]["step"] == step:
                    grown[name] = mask & ~previous[name]
                else:
                    grown.pop(name, None)
            before[name] = param.detach().clone()
            previous[name] = mask.clone()

    previous = {n: m.clone() for n, m in s.masks.items()}
    train(model, optimizer, s, data(60, seed=1), after_step)
    assert len(s.history) >= 4 and len(set(checked)) >= 3
    optimizer.sync()
    for name, param in s.params.items():
        assert optimizer.state[param]["exp_avg"].numel() == s.masks.nnz(name)


def test_warmup_scales_the_first_steps_of_regrown_weights():
    param = torch.nn.Parameter(torch.zeros(6))
    optimizer = LeanAdamW([param], lr=0.1, weight_decay=0.0, warmup_steps=4)
    changes = []
    for _ in range(6):
        before = param.detach().clone()
        param.grad = torch.ones(6)
        optimizer.step()
        changes.append(float((param.detach() - before).abs().max()))
    assert changes[0] == pytest.approx(0.1 / 4, rel=1e-5)
    assert changes[1] == pytest.approx(0.1 * 2 / 4, rel=1e-5)
    assert changes[4] == pytest.approx(0.1, rel=1e-5)


def test_density_scaled_learning_rate(make_mlp):
    model_a, model_b = make_mlp((8, 16, 4), 2), make_mlp((8, 16, 4), 2)
    weights = [p for n, p in model_a.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model_a.named_parameters() if n.endswith("bias")]
    a = torch.optim.AdamW([{"params": weights, "lr": 0.02}, {"params": biases}], lr=0.01, weight_decay=0.0)
    b = LeanAdamW(model_b.parameters(), lr=0.01, weight_decay=0.0, density_lr_power=1.0)
    s_a = DynamicSparsity(model_a, a, density=0.5, total_steps=5, method="static", seed=1, distribution="uniform")
    s_b = DynamicSparsity(model_b, b, density=0.5, total_steps=5, method="static", seed=1, distribution="uniform")
    train(model_a, a, s_a, data(5))
    train(model_b, b, s_b, data(5))
    for (name, pa), pb in zip(model_a.named_parameters(), model_b.parameters()):  # lr / 0.5 on masked weights only
        assert torch.equal(pa, pb), name


def adamw_state_bytes(optimizer) -> int:
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))


def test_state_memory_at_70_percent_sparsity_is_under_40_percent_of_adamw(make_mlp):
    sizes = {}
    for make in (lambda p: torch.optim.AdamW(p, lr=1e-3), lambda p: LeanAdamW(p, lr=1e-3)):
        model = make_mlp((64, 256, 256, 8), 0)
        optimizer = make(model.parameters())
        s = DynamicSparsity(model, optimizer, density=0.3, total_steps=20, method="set", update_every=5, seed=0)
        train(model, optimizer, s, data(12, n_in=64, n_out=8))
        sizes[type(optimizer).__name__] = (optimizer.state_bytes() if isinstance(optimizer, LeanAdamW)
                                           else adamw_state_bytes(optimizer))
    assert sizes["LeanAdamW"] <= 0.40 * sizes["AdamW"], sizes


def test_resume_after_a_topology_update_is_exact(make_mlp, tmp_path):
    batches = data(16, seed=4)

    def build(seed):
        model = make_mlp((8, 16, 4), seed)
        optimizer = LeanAdamW(model.parameters(), lr=0.01)
        return model, optimizer, DynamicSparsity(model, optimizer, density=0.3, total_steps=16, method="rigl",
                                                 update_every=4, seed=7)

    model_a, opt_a, s_a = build(0)
    train(model_a, opt_a, s_a, batches)
    model_b, opt_b, s_b = build(0)
    train(model_b, opt_b, s_b, batches[:8])  # step 8 updated the topology: state not yet remapped
    torch.save({"model": model_b.state_dict(), "optimizer": opt_b.state_dict(), "sparsifier": s_b.state_dict()},
               tmp_path / "ck.pt")
    model_c, opt_c, s_c = build(5)
    checkpoint = torch.load(tmp_path / "ck.pt", weights_only=True)
    model_c.load_state_dict(checkpoint["model"])
    opt_c.load_state_dict(checkpoint["optimizer"])
    s_c.load_state_dict(checkpoint["sparsifier"])
    train(model_c, opt_c, s_c, batches[8:])
    for a, c in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(a, c)


def test_bad_arguments():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(SparsenetsError, match="lr"):
        LeanAdamW(p, lr=-1)
    with pytest.raises(SparsenetsError, match="betas"):
        LeanAdamW(p, betas=(1.0, 0.9))
    with pytest.raises(SparsenetsError, match="warmup_steps"):
        LeanAdamW(p, warmup_steps=-2)
