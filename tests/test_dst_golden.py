"""Hand-computed topology updates: which weights each method drops and grows, exactly.

Weights are set by hand and an SGD optimizer with lr=0 keeps them fixed; gradients are set by
hand on ``param.grad`` before ``sparsifier.step()``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsenets import DynamicSparsity

# Linear(4 -> 2): weight shape (2, 4). Active: (0,0), (0,1), (0,3), (1,1).
MASK = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
WEIGHT = torch.tensor([[0.5, -0.1, 7.0, 0.9], [7.0, -0.3, 7.0, 7.0]])  # 7.0: inactive, zeroed
# Dense gradient: large at active positions and at the weight about to be dropped (0,1), so a
# just-dropped weight would win if it were eligible; among inactive: (1,0) 0.8 > (1,3) 0.6 >
# (0,2) 0.2 > (1,2) 0.05.
GRAD = torch.tensor([[5.0, -9.0, 0.2, 5.0], [-0.8, 5.0, 0.05, 0.6]])

UPDATE_EVERY_STEP = {
    "update_every": 1, "drop_fraction": 0.5, "drop_schedule": "constant", "end_fraction": 1.0,
}


def hand_layer(weight=WEIGHT, mask=MASK, method="rigl", density=0.5, **options):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    s = DynamicSparsity(layer, optimizer, density=density, total_steps=10, method=method,
                        masks={"weight": mask.clone()}, **options)
    return layer, s


def step_with_grad(layer, s, grad):
    layer.weight.grad = grad.clone()
    s.step()


def positions(*pairs):
    out = torch.zeros(2, 4, dtype=torch.bool)
    for i, j in pairs:
        out[i, j] = True
    return out


def test_construction_zeroes_inactive_weights():
    layer, s = hand_layer()
    assert torch.equal(s.masks["weight"], MASK)
    expected = torch.tensor([[0.5, -0.1, 0.0, 0.9], [0.0, -0.3, 0.0, 0.0]])
    assert torch.equal(layer.weight.detach(), expected)
    assert s.target_counts == {"weight": 4}


def test_rigl_golden():
    layer, s = hand_layer(method="rigl", **UPDATE_EVERY_STEP)
    step_with_grad(layer, s, GRAD)
    # dropped: the two smallest |w| among active, (0,1)=0.1 and (1,1)=0.3
    # grown: the two largest |grad| among positions inactive before: (1,0) and (1,3)
    expected_mask = positions((0, 0), (0, 3), (1, 0), (1, 3))
    assert torch.equal(s.masks["weight"], expected_mask)
    expected_weight = torch.tensor([[0.5, 0.0, 0.0, 0.9], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(layer.weight.detach(), expected_weight)
    record = s.history[0]
    assert record["step"] == 1
    assert record["layers"]["weight"] == {
        "nnz": 4, "dropped": 2, "grown": 2, "itop_rate": 6 / 8,
    }
    assert s.masks.itop_rate() == 6 / 8


def test_rigl_second_update_can_regrow_previously_dropped():
    layer, s = hand_layer(method="rigl", **UPDATE_EVERY_STEP)
    step_with_grad(layer, s, GRAD)
    # now active (0,0)=0.5, (0,3)=0.9, (1,0)=0, (1,3)=0 -> drop (1,0), (1,3) (ties at 0)
    # inactive: (0,1), (0,2), (1,1), (1,2) -> grow the largest |grad|: (0,1) 9.0, (1,1) 5.0
    step_with_grad(layer, s, GRAD)
    assert torch.equal(s.masks["weight"], positions((0, 0), (0, 1), (0, 3), (1, 1)))
    assert s.masks.itop_rate() == 6 / 8
    assert torch.equal(layer.weight.detach()[1], torch.zeros(4))


def test_set_golden_drop_and_random_grow():
    grown_sets = set()
    for seed in range(12):
        layer = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            layer.weight.copy_(WEIGHT)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
        s = DynamicSparsity(layer, optimizer, density=0.5, total_steps=10, method="set",
                            masks={"weight": MASK.clone()}, seed=seed, **UPDATE_EVERY_STEP)
        step_with_grad(layer, s, GRAD)
        new = s.masks["weight"]
        dropped, grown = MASK & ~new, new & ~MASK
        assert torch.equal(dropped, positions((0, 1), (1, 1)))
        assert int(grown.sum()) == 2
        assert not bool((grown & MASK).any())
        assert bool((layer.weight.detach()[grown] == 0).all())
        kept = MASK & new
        assert torch.equal(layer.weight.detach()[kept], WEIGHT[kept])
        grown_sets.add(tuple(grown.flatten().tolist()))
    # growth is random: several different choices over the seeds
    assert len(grown_sets) >= 3


def test_mest_golden_drop_uses_gradient():
    # drop score |w| + |g| with the masked gradient:
    # (0,0) 0.5+0 = 0.5, (0,1) 0.1+1.0 = 1.1, (0,3) 0.9+0 = 0.9, (1,1) 0.3+0.1 = 0.4
    grad = torch.tensor([[0.0, 1.0, 50.0, 0.0], [50.0, 0.1, 50.0, 50.0]])
    layer, s = hand_layer(method="mest", **UPDATE_EVERY_STEP)
    step_with_grad(layer, s, grad)
    dropped = MASK & ~s.masks["weight"]
    assert torch.equal(dropped, positions((0, 0), (1, 1)))
    assert s.masks.nnz() == 4


def test_snfs_golden_redistributes_growth():
    # layer A (2x4) and layer B (4x2); momentum after one step = the dense gradient
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 4, bias=False))
    mask_b = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=torch.bool)
    weight_b = torch.tensor([[0.2, 0.0], [0.0, -0.7], [0.4, 0.0], [0.0, 0.1]])
    with torch.no_grad():
        model[0].weight.copy_(WEIGHT)
        model[1].weight.copy_(weight_b)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    s = DynamicSparsity(model, optimizer, density=0.5, total_steps=10, method="snfs",
                        masks={"0.weight": MASK.clone(), "1.weight": mask_b.clone()},
                        **UPDATE_EVERY_STEP)
    grad_a = torch.tensor([[3.0, -3.0, 0.2, 3.0], [-0.8, 3.0, 0.05, 0.6]])  # active mean 3
    grad_b = torch.tensor([[1.0, 0.7], [0.1, -1.0], [-1.0, 0.4], [0.9, 1.0]])  # active mean 1
    model[0].weight.grad = grad_a.clone()
    model[1].weight.grad = grad_b.clone()
    s.step()
    # each layer drops round(0.5 * 4) = 2 by |w|; the 4 regrown weights are split 3 : 1
    # in proportion to mean |momentum| over active weights (3 vs 1)
    new_a, new_b = s.masks["0.weight"], s.masks["1.weight"]
    assert torch.equal(MASK & ~new_a, positions((0, 1), (1, 1)))
    assert torch.equal(new_a & ~MASK, positions((1, 0), (1, 3), (0, 2)))
    dropped_b = torch.tensor([[0, 0], [0, 0], [0, 0], [0, 1]], dtype=torch.bool)
    dropped_b[0, 0] = True  # |0.2| and |0.1| are the smallest
    assert torch.equal(mask_b & ~new_b, dropped_b)
    grown_b = torch.zeros(4, 2, dtype=torch.bool)
    grown_b[3, 0] = True  # |0.9| is the largest inactive momentum
    assert torch.equal(new_b & ~mask_b, grown_b)
    assert s.masks.nnz("0.weight") == 5 and s.masks.nnz("1.weight") == 3
    assert s.masks.nnz() == 8
    assert torch.equal(s.buffers["snfs_momentum/0.weight"], grad_a)


def test_snfs_momentum_accumulates_dense_gradient():
    layer, s = hand_layer(method="snfs", update_every=5, momentum=0.5)
    g1 = torch.full((2, 4), 1.0)
    g2 = torch.arange(8.0).reshape(2, 4)
    step_with_grad(layer, s, g1)
    step_with_grad(layer, s, g2)
    assert torch.allclose(s.buffers["snfs_momentum/weight"], 0.5 * g1 + g2)


def test_ctre_golden_grows_most_similar_neurons():
    torch.manual_seed(0)
    weight = torch.randn(3, 5)
    mask = torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    layer = nn.Linear(5, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    s = DynamicSparsity(layer, optimizer, density=0.5, total_steps=10, method="ctre",
                        masks={"weight": mask.clone()}, random_fraction=0.0,
                        **UPDATE_EVERY_STEP)
    x = torch.randn(16, 5)
    y = layer(x)
    y.pow(2).sum().backward()
    s.step()
    new = s.masks["weight"]
    dropped, grown = mask & ~new, new & ~mask
    # drop: the round(0.5 * 7) = 4 smallest |w| among active
    active_w = weight.abs().masked_fill(~mask, float("inf")).flatten()
    expected_dropped = torch.zeros(15, dtype=torch.bool)
    expected_dropped[active_w.argsort()[:4]] = True
    assert torch.equal(dropped, expected_dropped.reshape(3, 5))
    # grow: the 4 largest |cos(y_i, x_j)| among positions inactive before the update
    similarity = torch.stack([
        torch.stack([nn.functional.cosine_similarity(y[:, i], x[:, j], dim=0)
                     for j in range(5)])
        for i in range(3)
    ]).detach().abs()
    candidates = similarity.masked_fill(mask, -1.0).flatten()
    expected_grown = torch.zeros(15, dtype=torch.bool)
    expected_grown[candidates.argsort(descending=True)[:4]] = True
    assert torch.equal(grown, expected_grown.reshape(3, 5))
    s.close()


def gmp_layer(**options):
    torch.manual_seed(0)
    magnitudes = torch.randperm(100).float() + 1.0
    signs = torch.where(torch.rand(100) < 0.5, -1.0, 1.0)
    weight = (magnitudes * signs).reshape(10, 10)
    layer = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    s = DynamicSparsity(layer, optimizer, density=0.1, total_steps=100, method="gmp",
                        **options)
    return layer, s, weight


@pytest.mark.parametrize(
    "options, expected",
    [
        # start 0, last update 50: n = 10 + round(90 * (1 - t/50)^3)
        ({"update_every": 10, "end_fraction": 0.5},
         {10: 56, 20: 29, 30: 16, 40: 11, 50: 10}),
        # start 20, last update 50: n = 10 + round(90 * (1 - (t-20)/30)^3)
        ({"update_every": 10, "end_fraction": 0.5, "start_fraction": 0.2},
         {30: 37, 40: 13, 50: 10}),
    ],
)
def test_gmp_cubic_counts_by_hand(options, expected):
    layer, s, weight = gmp_layer(**options)
    assert s.masks.nnz() == 100
    assert s.initial_counts == {"weight": 100}
    counts = {}
    for step in range(1, 101):
        step_with_grad(layer, s, torch.ones(10, 10))
        if step in expected:
            assert s.method.scheduled_counts(s, step) == {"weight": expected[step]}
        counts[step] = s.masks.nnz()
        # the survivors are exactly the largest |w|
        kept = s.masks["weight"].flatten()
        order = weight.abs().flatten().argsort(descending=True)
        assert bool(kept[order[: counts[step]]].all())
        assert torch.equal(layer.weight.detach(), weight * s.masks["weight"])
    assert [r["step"] for r in s.history] == sorted(expected)
    for step, count in expected.items():
        assert counts[step] == count
        assert counts[step - 1] != count  # changed exactly at the update
    assert counts[100] == 10


def test_granet_golden_prune_then_regrow():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(WEIGHT)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.0)
    s = DynamicSparsity(layer, optimizer, density=0.25, total_steps=20, method="granet",
                        masks={"weight": MASK.clone()}, update_every=10, end_fraction=0.5,
                        drop_fraction=0.5, drop_schedule="constant")
    assert s.initial_counts == {"weight": 4} and s.target_counts == {"weight": 2}
    for _ in range(9):
        step_with_grad(layer, s, GRAD)
    assert torch.equal(s.masks["weight"], MASK)
    step_with_grad(layer, s, GRAD)
    # prune 4 -> 2 by |w| (drop (0,1), (1,1)); drop round(0.5 * 2) = 1 more by |w| ((0,0));
    # regrow 1 by |grad| among positions inactive before the update: (1,0)
    assert torch.equal(s.masks["weight"], positions((0, 3), (1, 0)))
    assert torch.equal(layer.weight.detach(), torch.tensor([[0.0, 0, 0, 0.9], [0, 0, 0, 0]]))
    layer_record = s.history[0]["layers"]["weight"]
    assert (layer_record["dropped"], layer_record["grown"], layer_record["nnz"]) == (3, 1, 2)
