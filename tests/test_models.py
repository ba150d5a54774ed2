"""Tests for sparsenets.models: shapes, parameter names, registry errors and trainability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsenets.data import batches, load_dataset
from sparsenets.errors import SparsenetsError
from sparsenets.models import MLP, MODELS, SmallCNN, build_model

SHAPES = [(1, 28, 28), (1, 8, 8), (1, 40)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_output_shapes(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, 10)
    assert torch.isfinite(out).all()


def test_mlp_parameter_names_and_flatten() -> None:
    model = MLP(12, hidden=(8, 6, 4), num_classes=3)
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
        "head.weight",
        "head.bias",
    ]
    assert model(torch.randn(2, 3, 4)).shape == (2, 3)
    assert MLP(5, hidden=()).head.in_features == 5


@pytest.mark.parametrize(
    "act, cls", [("relu", nn.ReLU), ("tanh", nn.Tanh), ("sigmoid", nn.Sigmoid)]
)
def test_mlp_activations(act: str, cls: type[nn.Module]) -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden=(16,), activation=act)
    assert any(isinstance(m, cls) for m in model.modules())
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_mlp_unknown_activation() -> None:
    with pytest.raises(SparsenetsError, match="activation 'gelu'.*relu, tanh, sigmoid"):
        MLP(4, activation="gelu")
    assert "relu" in str(pytest.raises(SparsenetsError, MLP, 4, (2,), 2, "swish").value)


@pytest.mark.parametrize("shape", SHAPES)
def test_cnn_parameter_names(shape: tuple[int, ...]) -> None:
    model = SmallCNN(shape, num_classes=4, channels=(3, 5), hidden=7)
    prefixes = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert prefixes == {"conv1", "conv2", "fc1", "head"}
    conv_type = nn.Conv2d if len(shape) == 3 else nn.Conv1d
    assert isinstance(model.conv1, conv_type)
    assert model.head.out_features == 4 and model.fc1.out_features == 7
    assert model(torch.randn(2, *shape)).shape == (2, 4)


def test_cnn_skips_pooling_on_tiny_inputs() -> None:
    model = SmallCNN((1, 5, 5), channels=(2, 2, 2), hidden=4)
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 1  # 5 -> 2, then no further pooling
    assert model.fc1.in_features == 2 * 2 * 2
    assert model(torch.randn(1, 1, 5, 5)).shape == (1, 10)


def test_cnn_rejects_bad_shape() -> None:
    with pytest.raises(SparsenetsError, match="input_shape"):
        SmallCNN((784,))
    assert isinstance(SmallCNN((3, 16, 16)), nn.Module)


def test_build_model_errors() -> None:
    with pytest.raises(SparsenetsError) as info:
        build_model("resnet", (1, 8, 8), 10)
    assert "mlp" in str(info.value) and "cnn" in str(info.value)
    with pytest.raises(SparsenetsError) as info:
        build_model("mlp", (1, 8, 8), 10, channels=(4,))
    msg = str(info.value)
    assert "'channels'" in msg and "hidden" in msg and "activation" in msg
    with pytest.raises(SparsenetsError, match="'activation'"):
        build_model("cnn", (1, 8, 8), 10, activation="relu")


def test_build_model_passes_options() -> None:
    mlp = build_model("mlp", (1, 40), 5, hidden=(32,), activation="tanh")
    assert isinstance(mlp, MLP) and mlp.fc1.out_features == 32 and mlp.head.out_features == 5
    cnn = build_model("cnn", (1, 40), 5, channels=(4,), hidden=16)
    assert isinstance(cnn, SmallCNN) and cnn.conv1.out_channels == 4 and cnn.fc1.out_features == 16


@pytest.mark.parametrize("name", MODELS)
def test_sgd_reduces_loss_on_digits(name: str) -> None:
    ds = load_dataset("digits")
    torch.manual_seed(0)
    opts = {"hidden": (64,)} if name == "mlp" else {"channels": (8, 16), "hidden": 32}
    model = build_model(name, ds.input_shape, ds.num_classes, **opts)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = ds.x_train, ds.y_train
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        before = loss_fn(model(x), y).item()
    for epoch in range(2):
        gen = torch.Generator().manual_seed(epoch)
        for xb, yb in batches(x, y, 64, shuffle=True, generator=gen):
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        after = loss_fn(model(x), y).item()
    assert after < 0.5 * before
