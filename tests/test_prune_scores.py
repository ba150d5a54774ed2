"""Golden cases, computed by hand, for the pruning-at-initialization scores: SNIP, GraSP, SynFlow."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparsenets.prune import GraSP, Snip, SynFlow, prune_at_init
from sparsenets.prune.synflow import absolute_copy, flow_scores


def _linear(weight: list[list[float]], bias: list[float] | None = None) -> nn.Linear:
    w = torch.tensor(weight, dtype=torch.float64)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None).double()
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float64))
    return layer


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_snip_scores_of_a_linear_softmax_model_by_hand():
    # logits = W x, two samples x = e0 (label 0) and x = e1 (label 1); mean cross-entropy.
    model = _linear([[1.0, 2.0], [0.5, -1.0]])
    x = torch.eye(2, dtype=torch.float64)
    y = torch.tensor([0, 1])
    p0 = _softmax([1.0, 0.5])  # logits of sample 0 = column 0 of W
    p1 = _softmax([2.0, -1.0])  # logits of sample 1 = column 1 of W
    # ∂L/∂W = ½ Σ_n (p_n − e_{y_n}) x_nᵀ: column j gets sample j's residual.
    grad = [[(p0[0] - 1) / 2, p1[0] / 2], [p0[1] / 2, (p1[1] - 1) / 2]]
    weight = [[1.0, 2.0], [0.5, -1.0]]
    expected = torch.tensor([[abs(g * w) for g, w in zip(gr, wr, strict=True)] for gr, wr in zip(grad, weight, strict=True)], dtype=torch.float64)
    scores = Snip(samples_per_class=1).scores(model, ["weight"], (x, y))
    torch.testing.assert_close(scores["weight"], expected)
    keep = prune_at_init(model, "snip", 0.5, (x, y), samples_per_class=1)
    assert keep["weight"].tolist() == (expected >= expected.flatten().sort().values[2]).tolist()


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_grasp_scores_equal_the_closed_form_hessian_gradient_product(temperature):
    # For logits z = W x / T and mean cross-entropy over N samples:
    #   G = ∂L/∂W = (1/(N T)) Σ_n (p_n − e_{y_n}) x_nᵀ
    #   (H G) = (1/(N T²)) Σ_n (diag(p_n) − p_n p_nᵀ) G x_n x_nᵀ,
    # and GraSP's score is −W ⊙ (H G).
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64)
    model = _linear(w.tolist())
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    n = x.shape[0]
    p = torch.softmax(x @ w.t() / temperature, dim=1)  # (N, C)
    residual = p - torch.eye(3, dtype=torch.float64)[y]
    grad = residual.t() @ x / (n * temperature)  # (C, in)
    hg = torch.zeros_like(w)
    for i in range(n):
        curvature = torch.diag(p[i]) - torch.outer(p[i], p[i])  # (C, C)
        hg += curvature @ grad @ torch.outer(x[i], x[i])
    hg /= n * temperature**2
    pruner = GraSP(samples_per_class=2, temperature=temperature)
    scores = pruner.grasp_scores(model, ["weight"], (x, y))
    torch.testing.assert_close(scores["weight"], -w * hg)
    torch.testing.assert_close(pruner.scores(model, ["weight"], (x, y))["weight"], w * hg)


def test_grasp_scores_do_not_depend_on_batching():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.arange(12) % 3
    names = ["0.weight", "2.weight"]
    whole = GraSP(samples_per_class=4).grasp_scores(model, names, (x, y))
    loader = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 12, 5)]
    chunked = GraSP(samples_per_class=4, batch_size=3).grasp_scores(model, names, loader)
    for name in names:
        torch.testing.assert_close(chunked[name], whole[name])


def test_grasp_removes_the_highest_grasp_scores():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    names = ["0.weight", "2.weight"]
    raw = GraSP().grasp_scores(model, names, (x, y))
    keep = prune_at_init(model, "grasp", 0.4, (x, y))
    flat = torch.cat([raw[n].flatten() for n in names])
    kept = torch.cat([raw[n][keep[n]] for n in names])
    removed = torch.cat([raw[n][~keep[n]] for n in names])
    assert kept.numel() == round(0.4 * flat.numel())
    assert kept.max() <= removed.min()


def test_synflow_scores_of_a_two_layer_net_by_hand():
    # R = 1ᵀ(|W2| h + |b2|), h = relu(|W1| 1 + |b1|) (all positive): ∂R/∂W1_ij = Σ_k |W2_ki|,
    # ∂R/∂W2_ki = h_i; scores |W1_ij| Σ_k |W2_ki| and |W2_ki| h_i.
    w1 = [[1.0, -2.0], [0.5, 0.25], [-3.0, 1.0]]
    b1 = [0.5, -1.0, 0.0]
    w2 = [[2.0, -1.0, 0.5], [-0.5, 1.0, 1.0]]
    model = nn.Sequential(_linear(w1, b1), nn.ReLU(), _linear(w2, [1.0, -1.0]))
    col = [sum(abs(w2[k][i]) for k in range(2)) for i in range(3)]  # Σ_k |W2_ki|
    h = [sum(abs(v) for v in w1[i]) + abs(b1[i]) for i in range(3)]
    expected1 = torch.tensor([[abs(w1[i][j]) * col[i] for j in range(2)] for i in range(3)], dtype=torch.float64)
    expected2 = torch.tensor([[abs(w2[k][i]) * h[i] for i in range(3)] for k in range(2)], dtype=torch.float64)
    names = ["0.weight", "2.weight"]
    flow = absolute_copy(model, torch.float64)
    weights = {n: p.detach().clone() for n, p in flow.named_parameters() if n in names}
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    scores = flow_scores(flow, names, masks, weights, torch.ones(1, 2, dtype=torch.float64))
    torch.testing.assert_close(scores["0.weight"], expected1)
    torch.testing.assert_close(scores["2.weight"], expected2)
    # one round keeps the global top; the model itself is untouched
    keep = prune_at_init(model, SynFlow(rounds=1), 0.5)
    top = torch.cat([expected1.flatten(), expected2.flatten()]).sort(descending=True).values[5]
    assert keep["0.weight"].tolist() == (expected1 >= top).tolist()
    assert keep["2.weight"].tolist() == (expected2 >= top).tolist()
    assert model[0].weight[0, 1].item() == -2.0


def test_synflow_rescores_the_pruned_network_each_round():
    # Masked weights are zero in the copy: a pruned weight's downstream flow is gone.
    model = nn.Sequential(_linear([[1.0, 1.0], [1.0, 1.0]]), nn.ReLU(), _linear([[1.0, 4.0]]))
    names = ["0.weight", "2.weight"]
    flow = absolute_copy(model, torch.float64)
    weights = {n: p.detach().clone() for n, p in flow.named_parameters() if n in names}
    masks = {"0.weight": torch.tensor([[True, True], [False, False]]), "2.weight": torch.ones(1, 2, dtype=torch.bool)}
    scores = flow_scores(flow, names, masks, weights, torch.ones(1, 2, dtype=torch.float64))
    assert scores["0.weight"].tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert scores["2.weight"].tolist() == [[2.0, 0.0]]


def test_synflow_zero_biases_leaves_the_biases_out_of_the_flow():
    model = nn.Sequential(_linear([[1.0, 2.0]], [5.0]), nn.ReLU(), _linear([[3.0]], [7.0]))
    flow = absolute_copy(model, torch.float64, zero_biases=True)
    assert flow[0].bias.item() == 0.0 and flow[2].bias.item() == 0.0
    assert flow[0].weight.tolist() == [[1.0, 2.0]]
    assert model[0].bias.item() == 5.0
