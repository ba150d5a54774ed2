"""Metrics and report: hand-computed FLOPs, densities, ITOP rate, churn, report formatting."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sparsenets.dst.sparsifier import DynamicSparsity
from sparsenets.errors import SparsenetsError
from sparsenets.masks import MaskStore
from sparsenets.metrics import (
    TOTAL,
    churn,
    density_by_layer,
    itop_rates,
    layer_flops,
    measured_density,
)
from sparsenets.report import LayerReport, Report, human, report

# Linear(4 -> 3): 12 weights, 5 active.
LINEAR_MASK = torch.tensor(
    [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool
)


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3))


def conv_mask(nnz: int) -> torch.Tensor:
    """A (3, 2, 3, 3) mask with the first ``nnz`` positions active."""
    mask = torch.zeros(3 * 2 * 3 * 3, dtype=torch.bool)
    mask[:nnz] = True
    return mask.view(3, 2, 3, 3)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 5 * 5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2, 5, 5) -> (B, 4)
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


# -- FLOPs -----------------------------------------------------------------------------------
def test_linear_flops_hand_computed():
    model = linear_model()
    flops = layer_flops(model, {"0.weight": LINEAR_MASK})
    layer = flops["0.weight"]
    assert (layer["flops_dense"], layer["flops_sparse"]) == (24, 10)  # 2·12, 2·5
    assert (layer["numel"], layer["nnz"], layer["positions"]) == (12, 5, 1)
    assert flops[TOTAL] == {"flops_dense": 24, "flops_sparse": 10, "flops_ratio": 10 / 24}
    with_input = layer_flops(model, {"0.weight": LINEAR_MASK}, torch.randn(1, 4))
    assert with_input["0.weight"]["flops_sparse"] == 10


def test_batch_size_does_not_change_per_sample_flops():
    model = SmallCNN()
    masks = {"conv.weight": conv_mask(7)}
    one = layer_flops(model, masks, torch.randn(1, 2, 5, 5))
    eight = layer_flops(model, masks, torch.randn(8, 2, 5, 5))
    assert one == eight
    assert one["conv.weight"]["flops_sparse"] == 2 * 7 * 25


def test_conv_flops_hand_computed_and_dense_layers_in_total():
    model = SmallCNN()
    flops = layer_flops(model, {"conv.weight": conv_mask(7)}, torch.randn(1, 2, 5, 5))
    conv = flops["conv.weight"]
    assert conv["positions"] == 25
    assert conv["flops_dense"] == 2 * 54 * 25
    assert conv["flops_sparse"] == 2 * 7 * 25
    assert "fc.weight" not in flops  # unmasked: only in the total, counted dense
    fc_dense = 2 * 75 * 4
    assert flops[TOTAL]["flops_dense"] == 2 * 54 * 25 + fc_dense
    assert flops[TOTAL]["flops_sparse"] == 2 * 7 * 25 + fc_dense


def test_grouped_conv_uses_per_group_weight():
    model = nn.Sequential(nn.Conv1d(4, 6, kernel_size=3, groups=2))  # weight (6, 2, 3)
    mask = torch.ones(6, 2, 3, dtype=torch.bool)
    flops = layer_flops(model, {"0.weight": mask}, torch.randn(3, 4, 10))
    assert flops["0.weight"]["positions"] == 8
    assert flops["0.weight"]["flops_dense"] == 2 * 36 * 8


def test_linear_on_tokens_counts_positions():
    model = linear_model()
    flops = layer_flops(model, {"0.weight": LINEAR_MASK}, torch.randn(2, 7, 4))
    assert flops["0.weight"]["positions"] == 7
    assert flops["0.weight"]["flops_dense"] == 24 * 7
    assert flops["0.weight"]["flops_sparse"] == 10 * 7


def test_conv_without_example_input_raises():
    with pytest.raises(SparsenetsError, match="example_input"):
        layer_flops(SmallCNN(), {"conv.weight": conv_mask(7)})
    with pytest.raises(SparsenetsError, match="example_input"):
        report(SmallCNN())


def test_forward_restores_modes_and_leaves_no_hooks():
    model = SmallCNN()
    model.train()
    model.bn.eval()
    running_mean = model.bn.running_mean.clone()
    model.train()
    model.fc.eval()
    layer_flops(model, None, torch.randn(4, 2, 5, 5) * 3 + 1)
    assert model.training and model.conv.training and model.bn.training
    assert not model.fc.training
    assert torch.equal(model.bn.running_mean, running_mean)  # forward ran in eval mode
    assert all(not m._forward_hooks for m in model.modules())


# -- densities -------------------------------------------------------------------------------
def test_density_by_layer_exact():
    masks = {"a": LINEAR_MASK, "b": conv_mask(9)}
    assert density_by_layer(masks) == {
        "a": {"numel": 12, "nnz": 5, "density": 5 / 12},
        "b": {"numel": 54, "nnz": 9, "density": 9 / 54},
    }


def test_measured_density_counts_actual_zeros():
    model = linear_model()
    with torch.no_grad():
        model[0].weight.mul_(LINEAR_MASK)
    assert measured_density(model) == {"0.weight": 5 / 12}
    assert measured_density(model, ["0.bias"]) == {"0.bias": 1.0}
    with pytest.raises(SparsenetsError):
        measured_density(model, ["nope.weight"])


# -- ITOP and churn --------------------------------------------------------------------------
def train_sparse(method: str, steps: int = 12) -> tuple[nn.Module, DynamicSparsity]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    options = {"update_every": 2} if method != "static" else {}
    sparsifier = DynamicSparsity(
        model, optimizer, density=0.3, method=method, total_steps=20, **options
    )
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        sparsifier.step()
    return model, sparsifier


@pytest.fixture(scope="module")
def set_run() -> tuple[nn.Module, DynamicSparsity]:
    """SET trained for 12 steps (updates at 2, 4, ..., 12); shared, tests must not mutate it."""
    return train_sparse("set")


def test_itop_rate_grows_with_set(set_run):
    _, sparsifier = set_run
    store = sparsifier.masks
    rate = store.itop_rate()
    assert store.density() < rate <= 1.0
    per_layer = itop_rates(store)
    assert set(per_layer) == set(store)
    assert all(store.density(n) <= r <= 1.0 for n, r in per_layer.items())
    updates = churn(sparsifier.history)
    assert [u["step"] for u in updates] == [2, 4, 6, 8, 10, 12]
    assert all(set(u) == {"step", "churn", "itop_rate", "grown"} for u in updates)
    assert updates[-1]["itop_rate"] == pytest.approx(rate)
    assert all(u["grown"] > 0 and 0 < u["churn"] <= 1 for u in updates)


def test_itop_rate_static_equals_density():
    _, sparsifier = train_sparse("static", steps=6)
    store = sparsifier.masks
    assert store.itop_rate() == store.density()
    assert itop_rates(store) == {n: store.density(n) for n in store}
    assert churn(sparsifier.history) == []


# -- report ----------------------------------------------------------------------------------
def test_report_from_sparsifier_is_json_and_printable(set_run):
    model, sparsifier = set_run
    result = report(model, sparsifier)
    assert isinstance(result, Report)
    assert all(isinstance(layer, LayerReport) for layer in result.layers)
    assert [layer.name for layer in result.layers] == list(sparsifier.masks)
    assert result.step == sparsifier.step_count == 12
    assert len(result.updates) == len(sparsifier.history)
    totals = result.totals
    assert totals["nnz"] == sparsifier.masks.nnz()
    assert totals["density"] == pytest.approx(sparsifier.masks.density())
    assert totals["itop_rate"] == pytest.approx(sparsifier.masks.itop_rate())
    assert totals["flops_sparse"] == 2 * totals["nnz"]  # all layers masked, 1 position each
    assert totals["flops_ratio"] == pytest.approx(totals["density"])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["layers"][0]["shape"] == [16, 8]
    text = str(result)
    assert "TOTAL" in text
    assert all(name in text for name in sparsifier.masks)
    assert "topology updates: 6" in text
    markdown = result.to_markdown()
    assert markdown.startswith("| layer |") and "**TOTAL**" in markdown


def test_report_from_masks_and_from_nonzero_pattern():
    model = SmallCNN()
    x = torch.randn(2, 2, 5, 5)
    masks = {"conv.weight": conv_mask(7)}
    result = report(model, masks=masks, example_input=x)
    (layer,) = result.layers
    assert (layer.name, layer.shape, layer.nnz, layer.numel) == ("conv.weight", (3, 2, 3, 3), 7, 54)
    assert layer.flops_sparse == 2 * 7 * 25 and layer.itop_rate is None
    assert result.step is None and result.updates == []
    assert "topology updates: none" in str(result)
    with torch.no_grad():
        model.conv.weight.mul_(masks["conv.weight"])
    pruned = report(model, example_input=x)
    assert [lay.name for lay in pruned.layers] == ["conv.weight", "fc.weight"]
    assert pruned.layers[0].nnz == 7 and pruned.layers[1].density == 1.0
    assert json.dumps(pruned.to_dict())


def test_report_with_mask_store_has_itop():
    model = linear_model()
    store = MaskStore({"0.weight": (3, 4)})
    store.set("0.weight", LINEAR_MASK)
    result = report(model, masks=store)
    assert result.layers[0].itop_rate == 1.0  # a new store starts all-active
    assert result.totals["itop_rate"] == 1.0


def test_report_rejects_bad_arguments():
    model, sparsifier = train_sparse("static", steps=1)
    with pytest.raises(SparsenetsError, match="not both"):
        report(model, sparsifier, masks={})
    with pytest.raises(SparsenetsError, match="names no parameter"):
        report(model, masks={"nope.weight": LINEAR_MASK})
    with pytest.raises(SparsenetsError, match="shape"):
        report(model, masks={"0.weight": LINEAR_MASK})


@pytest.mark.parametrize(
    ("value", "text"),
    [(24, "24"), (1234, "1.23K"), (45_600, "45.6K"), (999_999, "1M"), (1.5e9, "1.5G"), (None, "-")],
)
def test_human_numbers(value, text):
    assert human(value) == text
