"""SparseLinear (CSR) vs a masked dense nn.Linear: forward, gradients, conversion, files."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsenets.errors import SparsenetsError
from sparsenets.io import save_tensors
from sparsenets.masks import MaskStore
from sparsenets.sparse import (
    SparseLinear,
    build_structure,
    load_sparse,
    save_sparse,
    structure_from_csr,
    to_dense,
    to_sparse,
)

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _mask(out_f: int, in_f: int, density: float, gen: torch.Generator, kind: str = "random"):
    mask = torch.rand(out_f, in_f, generator=gen) < density
    if kind == "one":
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
        mask[out_f // 2, in_f // 2] = True
    elif kind == "rows":  # a full row, an empty row, an empty column
        mask[0] = True
        if out_f > 1:
            mask[-1] = False
        if in_f > 1:
            mask[:, -1] = False
    return mask


def _pair(out_f, in_f, density, *, bias=True, dtype=torch.float32, seed=0, kind="random"):
    """A masked dense Linear (weights zero off the mask) and its SparseLinear twin."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mask = _mask(out_f, in_f, density, gen, kind)
    dense = nn.Linear(in_f, out_f, bias=bias, dtype=dtype)
    with torch.no_grad():
        dense.weight.mul_(mask)
    return dense, SparseLinear.from_dense(dense, mask), mask


def _check_same(dense, sparse, mask, batch_shape, dtype, input_grad=True):
    tol = TOL[dtype]
    x = torch.randn(*batch_shape, dense.in_features, dtype=dtype)
    x_dense = x.clone().requires_grad_(input_grad)
    x_sparse = x.clone().requires_grad_(input_grad)
    y_dense, y_sparse = dense(x_dense), sparse(x_sparse)
    assert y_sparse.shape == y_dense.shape == (*batch_shape, dense.out_features)
    assert y_sparse.is_contiguous()
    torch.testing.assert_close(y_sparse, y_dense, atol=tol, rtol=tol)
    grad_out = torch.randn_like(y_dense)
    y_dense.backward(grad_out)
    y_sparse.backward(grad_out)
    if input_grad:
        assert x_sparse.grad.is_contiguous()
        torch.testing.assert_close(x_sparse.grad, x_dense.grad, atol=tol, rtol=tol)
    else:
        assert x_sparse.grad is None
    torch.testing.assert_close(sparse.values.grad, dense.weight.grad[mask], atol=tol, rtol=tol)
    if dense.bias is not None:
        torch.testing.assert_close(sparse.bias.grad, dense.bias.grad, atol=tol, rtol=tol)
    else:
        assert sparse.bias is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "shape, density, kind",
    [((7, 5), 0.5, "random"), ((16, 33), 0.1, "random"), ((3, 4), 0.0, "one"),
     ((9, 6), 0.4, "rows"), ((1, 1), 1.0, "random"), ((12, 10), 1.0, "random")],
)
@pytest.mark.parametrize("batch_shape", [(5,), (3, 4), (1,)])
def test_matches_masked_dense(shape, density, kind, bias, dtype, batch_shape):
    dense, sparse, mask = _pair(*shape, density, bias=bias, dtype=dtype, kind=kind)
    assert sparse.nnz == int(mask.sum())
    _check_same(dense, sparse, mask, batch_shape, dtype)


def test_no_input_grad_path_skips_grad_input():
    dense, sparse, mask = _pair(8, 6, 0.3)
    _check_same(dense, sparse, mask, (4,), torch.float32, input_grad=False)


def test_no_mask_and_empty_mask():
    full = SparseLinear(4, 3)
    assert full.nnz == 12 and full.density == 1.0
    empty = SparseLinear(4, 3, torch.zeros(3, 4, dtype=torch.bool), bias=False)
    x = torch.randn(2, 4, requires_grad=True)
    y = empty(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(2, 3)) and torch.equal(x.grad, torch.zeros(2, 4))
    assert empty.values.grad.shape == (0,)


def test_bad_input_raises_one_line_errors():
    lin = nn.Linear(4, 3)
    with pytest.raises(SparsenetsError, match="torch.bool"):
        SparseLinear.from_dense(lin, torch.ones(3, 4))
    with pytest.raises(SparsenetsError, match="shape"):
        SparseLinear.from_dense(lin, torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(SparsenetsError, match="dtype"):
        SparseLinear(4, 3, dtype=torch.float16)
    layer = SparseLinear(4, 3)
    with pytest.raises(SparsenetsError, match="dtype"):
        layer(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(SparsenetsError, match="shape"):
        layer(torch.randn(2, 5))
    with pytest.raises(SparsenetsError, match="new_values"):
        layer.set_topology(torch.ones(3, 4, dtype=torch.bool), torch.zeros(5))
    with pytest.raises(SparsenetsError, match="no parameter"):
        to_sparse(nn.Sequential(lin), {"1.weight": torch.ones(3, 4, dtype=torch.bool)})


def test_transpose_structure_permutation():
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(6, 9, generator=gen) < 0.4
    weight = torch.randn(6, 9) * mask
    s = build_structure(mask)
    values = weight[mask]
    wt = torch.sparse_csr_tensor(s.t_crow_indices, s.t_col_indices, values[s.perm], (9, 6), check_invariants=True)
    assert torch.equal(wt.to_dense(), weight.t())
    assert s.col_indices.dtype == torch.int32
    s64 = build_structure(mask, torch.int64)
    assert s64.col_indices.dtype == torch.int64 and torch.equal(s64.perm, s.perm)
    assert torch.equal(s64.t_col_indices, s.t_col_indices.long())
    with pytest.raises(SparsenetsError, match="increasing"):
        structure_from_csr(s.crow_indices, s.col_indices.flip(0), (6, 9))


def test_set_topology_in_place():
    dense, sparse, mask = _pair(10, 8, 0.5, seed=1)
    values_param = sparse.values
    gen = torch.Generator().manual_seed(7)
    # move every active weight to a new position: same nnz, new mask
    new_mask = torch.zeros_like(mask).view(-1)
    new_mask[torch.randperm(mask.numel(), generator=gen)[: int(mask.sum())]] = True
    new_mask = new_mask.view_as(mask)
    new_weight = torch.randn(10, 8) * new_mask
    sparse.set_topology(new_mask, new_weight)  # dense form
    assert sparse.values is values_param and sparse.nnz == int(mask.sum())
    assert torch.equal(sparse.mask(), new_mask)
    with torch.no_grad():
        dense.weight.copy_(new_weight)
    _check_same(dense, sparse, new_mask, (3, 2), torch.float32)
    sparse.set_topology(new_mask, new_weight[new_mask])  # (nnz,) form
    assert torch.equal(sparse.dense_weight(), new_weight)


def _masked_mlp(make_mlp, density=0.3, seed=0):
    model = make_mlp((12, 16, 8, 3), seed)
    store = MaskStore({n: tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")})
    gen = torch.Generator().manual_seed(seed)
    for name in store:
        store.set(name, torch.rand(store.shapes[name], generator=gen) < density)
    store.apply_(model)
    return model, store


def test_round_trip_mlp(make_mlp):
    model, store = _masked_mlp(make_mlp)
    sparse = to_sparse(model, store)
    assert all(isinstance(sparse[i], SparseLinear) for i in (0, 2, 4))
    assert isinstance(model[0], nn.Linear)  # the original is untouched
    x = torch.randn(5, 12)
    torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)
    back = to_dense(sparse)
    reference = model.state_dict()
    restored = back.state_dict()
    assert list(restored) == list(reference)
    assert all(torch.equal(restored[k], reference[k]) for k in reference)


def test_conv_masks_stay_dense():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2))
    masks = {n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters() if "weight" in n}
    sparse = to_sparse(model, masks)
    assert isinstance(sparse[0], nn.Conv2d) and isinstance(sparse[2], SparseLinear)
    assert torch.equal(sparse[0].weight != 0, masks["0.weight"] & (model[0].weight != 0))


def test_save_load_round_trip(make_mlp, tmp_path):
    model, store = _masked_mlp(make_mlp, density=0.2, seed=2)
    sparse = to_sparse(model, store)
    path = tmp_path / "model.safetensors"
    save_sparse(sparse, path)
    assert not [p for p in tmp_path.iterdir() if p.name != "model.safetensors"]  # atomic
    loaded = load_sparse(lambda: make_mlp((12, 16, 8, 3), 5), path)
    from_skeleton = load_sparse(make_mlp((12, 16, 8, 3), 9), path)
    x = torch.randn(4, 12)
    for m in (loaded, from_skeleton):
        assert isinstance(m[2], SparseLinear) and m[2].nnz == sparse[2].nnz
        assert torch.equal(m(x), sparse(x))
        assert torch.equal(m[2].perm, sparse[2].perm)
    with pytest.raises(SparsenetsError, match="shape"):
        load_sparse(make_mlp((12, 17, 8, 3), 0), path)
    plain = tmp_path / "plain.safetensors"
    save_tensors(plain, {"w": torch.zeros(2)})
    with pytest.raises(SparsenetsError, match="not a sparsenets"):
        load_sparse(model, plain)


def test_state_dict_with_new_topology_loads():
    _, a, _ = _pair(6, 5, 0.3, seed=1)
    _, b, _ = _pair(6, 5, 0.8, seed=2)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5)
    assert b.nnz == a.nnz and torch.equal(b(x), a(x))


@settings(max_examples=25, deadline=None)
@given(
    out_f=st.integers(1, 24),
    in_f=st.integers(1, 24),
    density=st.floats(0.0, 1.0),
    batch=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_masked_dense(out_f, in_f, density, batch, bias, seed):
    dense, sparse, mask = _pair(out_f, in_f, density, bias=bias, dtype=torch.float64, seed=seed)
    _check_same(dense, sparse, mask, (batch,), torch.float64)


def test_set_topology_with_new_nnz_while_the_last_graph_is_alive():
    """A loop holds the previous ``loss`` (and its graph) while it runs the next forward: a
    topology with another nnz in between must not break that backward (autograd's cached
    gradient accumulator of ``values`` still has the old shape)."""
    torch.manual_seed(0)
    layer = SparseLinear.from_dense(nn.Linear(8, 6), torch.rand(6, 8) < 0.5)
    x = torch.randn(4, 8)
    loss = layer(x).square().sum()
    loss.backward()
    smaller = layer.mask()
    smaller[:, :3] = False
    layer.set_topology(smaller, layer.dense_weight())
    new_loss = layer(x).square().sum()  # `loss` is still alive here
    new_loss.backward()
    assert layer.values.grad.shape == (int(smaller.sum()),)
    assert loss.requires_grad
