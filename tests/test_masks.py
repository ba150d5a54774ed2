"""MaskStore: validation, applying masks, ever-active tracking, persistence, ITOP rate."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sparsenets.errors import SparsenetsError
from sparsenets.masks import MaskStore

SHAPES = {"fc1.weight": (3, 4), "fc2.weight": (2, 3)}


def bool_tensor(rows):
    return torch.tensor(rows, dtype=torch.bool)


M1 = bool_tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0]])
M2 = bool_tensor([[0, 1, 0], [1, 0, 0]])


@pytest.fixture
def store():
    s = MaskStore(SHAPES)
    s.set("fc1.weight", M1.clone())
    s.set("fc2.weight", M2.clone())
    s.reset_ever_active()
    return s


def test_new_store_is_all_ones_and_mapping_interface():
    s = MaskStore(SHAPES)
    assert list(s) == list(SHAPES)
    assert len(s) == 2
    for name, shape in SHAPES.items():
        assert s[name].dtype == torch.bool
        assert tuple(s[name].shape) == shape
        assert bool(s[name].all())
    assert s.shapes == SHAPES
    assert s.density() == 1.0
    with pytest.raises(KeyError):
        s["nope.weight"]


def test_set_rejects_wrong_dtype(store):
    with pytest.raises(SparsenetsError) as info:
        store.set("fc1.weight", M1.float())
    assert "\n" not in str(info.value)
    with pytest.raises(SparsenetsError):
        store.set("fc1.weight", M1.to(torch.uint8))
    with pytest.raises(SparsenetsError):
        store.set("fc1.weight", M1.tolist())
    assert torch.equal(store["fc1.weight"], M1)


def test_set_rejects_wrong_shape(store):
    with pytest.raises(SparsenetsError) as info:
        store.set("fc1.weight", M1.t().contiguous())
    assert "(4, 3)" in str(info.value) and "(3, 4)" in str(info.value)
    with pytest.raises(SparsenetsError):
        store.set("fc1.weight", M1.reshape(-1))
    assert torch.equal(store["fc1.weight"], M1)


def test_set_rejects_unknown_name(store):
    with pytest.raises(SparsenetsError) as info:
        store.set("fc3.weight", M1)
    assert "fc3.weight" in str(info.value)
    assert "fc3.weight" not in store


def test_counts(store):
    assert store.nnz("fc1.weight") == 5
    assert store.nnz("fc2.weight") == 2
    assert store.nnz() == 7
    assert store.numel() == 18
    assert store.density("fc1.weight") == pytest.approx(5 / 12)
    assert store.density() == pytest.approx(7 / 18)


def test_apply_zeroes_inactive_weights_only(store):
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(4, 3))
    model.add_module("fc2", nn.Linear(3, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.arange(1, p.numel() + 1, dtype=p.dtype).reshape(p.shape))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    store.apply_(model)
    params = dict(model.named_parameters())
    for name, mask in store.items():
        assert bool((params[name][~mask] == 0).all())
        assert torch.equal(params[name][mask], before[name][mask])
    # biases are not masked
    assert torch.equal(params["fc1.bias"], before["fc1.bias"])


def test_ever_active_accumulates(store):
    assert store.itop_rate() == pytest.approx(7 / 18)
    new = bool_tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]])
    store.set("fc1.weight", new)
    expected = M1 | new
    assert torch.equal(store.ever_active("fc1.weight"), expected)
    assert store.itop_rate("fc1.weight") == pytest.approx(int(expected.sum()) / 12)
    assert store.itop_rate() == pytest.approx((int(expected.sum()) + 2) / 18)
    # going back never shrinks the record
    store.set("fc1.weight", M1.clone())
    assert torch.equal(store.ever_active("fc1.weight"), expected)
    store.reset_ever_active()
    assert torch.equal(store.ever_active("fc1.weight"), M1)


def test_apply_after_mask_change_uses_new_mask(store):
    layer = nn.Linear(4, 3)
    model = nn.Sequential()
    model.add_module("fc1", layer)
    model.add_module("fc2", nn.Linear(3, 2))
    store.apply_(model)  # first application (may cache the mask)
    new = bool_tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    with torch.no_grad():
        layer.weight.fill_(2.0)
    store.set("fc1.weight", new)
    store.apply_(model)
    assert torch.equal(layer.weight.detach(), 2.0 * new.float())
    # and after loading a state dict
    other = MaskStore(SHAPES)
    other.set("fc1.weight", M1.clone())
    with torch.no_grad():
        layer.weight.fill_(3.0)
    store.load_state_dict(other.state_dict())
    store.apply_(model)
    assert torch.equal(layer.weight.detach(), 3.0 * M1.float())


def test_set_keeps_a_private_copy(store):
    mine = bool_tensor([[1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    store.set("fc1.weight", mine)
    mine.fill_(False)
    assert store.nnz("fc1.weight") == 4


def test_ever_active_not_aliased_to_mask(store):
    store.set("fc1.weight", torch.zeros(3, 4, dtype=torch.bool))
    assert store.nnz("fc1.weight") == 0
    assert torch.equal(store.ever_active("fc1.weight"), M1)


def test_state_dict_roundtrip(store):
    store.set("fc1.weight", bool_tensor([[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 1, 1]]))
    state = store.state_dict()
    assert set(state) == {
        "mask/fc1.weight", "mask/fc2.weight", "ever_active/fc1.weight", "ever_active/fc2.weight"
    }
    fresh = MaskStore(SHAPES)
    fresh.load_state_dict(state)
    for name in SHAPES:
        assert torch.equal(fresh[name], store[name])
        assert torch.equal(fresh.ever_active(name), store.ever_active(name))
    assert fresh.itop_rate() == store.itop_rate()


def test_state_dict_is_a_copy(store):
    state = store.state_dict()
    state["mask/fc1.weight"].fill_(True)
    assert torch.equal(store["fc1.weight"], M1)


def test_safetensors_roundtrip(store, tmp_path):
    store.set("fc2.weight", bool_tensor([[1, 0, 1], [0, 0, 0]]))
    path = tmp_path / "masks.safetensors"
    save_file(store.state_dict(), str(path))
    loaded = load_file(str(path))
    fresh = MaskStore(SHAPES)
    fresh.load_state_dict(loaded)
    for name in SHAPES:
        assert fresh[name].dtype == torch.bool
        assert torch.equal(fresh[name], store[name])
        assert torch.equal(fresh.ever_active(name), store.ever_active(name))


def test_load_state_dict_rejects_mismatch(store):
    state = store.state_dict()
    del state["ever_active/fc2.weight"]
    with pytest.raises(SparsenetsError):
        MaskStore(SHAPES).load_state_dict(state)
    state = store.state_dict()
    state["mask/fc9.weight"] = M1
    with pytest.raises(SparsenetsError):
        MaskStore(SHAPES).load_state_dict(state)
    state = store.state_dict()
    state["mask/fc1.weight"] = torch.ones(4, 3, dtype=torch.bool)
    with pytest.raises(SparsenetsError) as info:
        MaskStore(SHAPES).load_state_dict(state)
    assert "fc1.weight" in str(info.value)


def test_itop_rate_full_exploration():
    s = MaskStore({"w": (2, 2)})
    s.set("w", bool_tensor([[1, 0], [0, 0]]))
    s.reset_ever_active()
    assert s.itop_rate() == 0.25
    for mask in ([[0, 1], [0, 0]], [[0, 0], [1, 0]], [[0, 0], [0, 1]]):
        previous = s.itop_rate()
        s.set("w", bool_tensor(mask))
        assert s.itop_rate() == previous + 0.25
    assert s.itop_rate() == 1.0
    assert s.density() == 0.25
