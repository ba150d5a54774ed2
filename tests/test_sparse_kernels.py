"""Native CSR kernels (sparsenets.sparse.kernels) against dense masked math, and the fallback."""

from __future__ import annotations

import logging

import pytest
import torch

from sparsenets.errors import SparsenetsError
from sparsenets.sparse import SparseLinear, build_structure, kernels, sparse_linear

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
DTYPES = [torch.float32, torch.float64]
WIDTHS = list(kernels.WIDTHS)  # every compiled width runs on every machine


@pytest.fixture(scope="module")
def lib():
    library = kernels.library()
    if library is None:
        pytest.skip("native kernels unavailable (no compiler or SPARSENETS_SPARSE_KERNELS=torch)")
    return library


def _case(out_f, in_f, density, dtype, seed=0, index_dtype=None, kind="random"):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(out_f, in_f, generator=gen) < density
    if kind == "rows" and out_f > 2 and in_f > 2:  # a full row, empty rows, an empty column
        mask[0] = True
        mask[1] = False
        mask[-1] = False
        mask[:, -1] = False
    s = build_structure(mask, index_dtype)
    weight = torch.randn(out_f, in_f, generator=gen, dtype=dtype) * mask
    return mask, s, weight, weight[mask].contiguous()


def _close(actual, expected, dtype):
    torch.testing.assert_close(actual, expected, atol=TOL[dtype], rtol=TOL[dtype])


def _layouts(x):
    """The same matrix as row-major, column-major, a strided slice and a broadcast view."""
    n, c = x.shape
    wide = torch.zeros(n, 2 * c + 1, dtype=x.dtype)
    wide[:, 1 : 2 * c + 1 : 2] = x
    yield "row-major", x.contiguous()
    yield "column-major", x.t().contiguous().t()
    yield "strided", wide[:, 1 : 2 * c + 1 : 2]
    yield "broadcast", x[:1].expand(n, c)


def _unpack(xp, tile, vector_bytes):
    """The plain ``xᵀ (C, ld)`` of a packed tensor (panels of ``tile`` columns, see _kernels.cpp)."""
    c, ld = xp.shape
    lanes = vector_bytes // xp.element_size()
    width = max(lanes, min(256, tile - tile % lanes))
    flat, out = xp.reshape(-1), torch.empty_like(xp)
    for start in range(0, ld, width):
        w = min(width, ld - start)
        out[:, start : start + w] = flat[c * start : c * (start + w)].view(c, w)
    return out


TILES = [8, 24, 256]


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("n, c", [(1, 1), (5, 3), (8, 8), (13, 37), (100, 64), (300, 19), (0, 4), (4, 0)])
def test_pack_is_a_padded_transpose(lib, width, dtype, tile, n, c):
    x = torch.randn(n, c, dtype=dtype)
    gate = torch.randn(n, c, dtype=dtype)
    for name, view in _layouts(x):
        xp, sums = kernels.pack(lib, view, tile, sums=True, width=width)
        ld = kernels.padded(n, dtype, width)
        assert xp.shape == (c, ld) and ld >= n and ld % (width // xp.element_size()) == 0, name
        xt = _unpack(xp, tile, width)
        assert torch.equal(xt[:, :n], view.t()), name
        assert not xt[:, n:].any(), name
        _close(sums, view.sum(0), dtype)
        # gated (ReLU's backward): zero where the gate is <= 0, sums after the gate
        gp, gsums = kernels.pack(lib, view, tile, sums=True, gate=gate, width=width)
        gated = view.masked_fill(gate <= 0, 0)
        assert torch.equal(_unpack(gp, tile, width)[:, :n], gated.t()), name
        _close(gsums, gated.sum(0), dtype)


SHAPES = [
    # (out, in, density, batch, kind)
    (3, 5, 0.5, 1, "random"),
    (17, 9, 0.3, 7, "rows"),
    (16, 16, 1.0, 8, "random"),
    (33, 40, 0.1, 100, "rows"),
    (40, 70, 0.05, 257, "random"),  # a partial second batch tile
    (9, 600, 0.02, 520, "random"),
    (5, 6, 0.0, 4, "random"),  # nnz = 0
    (6, 4, 0.5, 0, "random"),  # empty batch
]


def _close_to(actual, expected64, dtype):
    """Compare with a float64 reference; fp32 sums of hundreds of terms get a scaled tolerance."""
    scale = max(1.0, float(expected64.abs().max())) if expected64.numel() else 1.0
    tol = TOL[dtype] * scale
    torch.testing.assert_close(actual, expected64.to(dtype), atol=tol, rtol=TOL[dtype])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("out_f, in_f, density, batch, kind", SHAPES)
def test_spmm_and_sddmm_match_dense(lib, width, dtype, index_dtype, tile, out_f, in_f, density, batch, kind):
    mask, s, weight, values = _case(out_f, in_f, density, dtype, index_dtype=index_dtype, kind=kind)
    assert s.col_indices.dtype == index_dtype
    x = torch.randn(batch, in_f, dtype=dtype)
    g = torch.randn(batch, out_f, dtype=dtype)
    bias = torch.randn(out_f, dtype=dtype)
    x64, g64, w64 = x.double(), g.double(), weight.double()
    xp, _ = kernels.pack(lib, x, tile, width=width)
    gp, _ = kernels.pack(lib, g, tile, width=width)
    for b in (bias, None):
        expected = x64 @ w64.t() + (0 if b is None else b.double())
        for relu in (False, True):
            y = kernels.spmm(
                lib, s.crow_indices, s.col_indices, values, None, b, xp, batch, tile, relu=relu, width=width
            )
            assert y.shape == (batch, out_f) and y.is_contiguous()
            _close_to(y, expected.clamp(min=0) if relu else expected, dtype)
    dx = kernels.spmm(
        lib, s.t_crow_indices, s.t_col_indices, values, s.perm, None, gp, batch, tile, width=width
    )
    _close_to(dx, g64 @ w64, dtype)
    dv = kernels.sddmm(lib, s.crow_indices, s.col_indices, gp, xp, tile, width=width)
    _close_to(dv, (g64.t() @ x64)[mask], dtype)
    if width == 64:  # data packed for 64 bytes serves the 32-byte kernels (a mixed plan)
        lanes = 64 // x.element_size()
        packed_tile = max(lanes, min(256, tile - tile % lanes))  # the panel width pack used
        _close_to(kernels.sddmm(lib, s.crow_indices, s.col_indices, gp, xp, packed_tile, width=32),
                  (g64.t() @ x64)[mask], dtype)
        _close_to(kernels.spmm(lib, s.crow_indices, s.col_indices, values, None, bias, xp, batch,
                               packed_tile, width=32), x64 @ w64.t() + bias.double(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_native_layer_matches_torch_csr_path(monkeypatch, lib, dtype, bias, batch_shape):
    torch.manual_seed(0)
    mask = torch.rand(24, 19) < 0.2
    mask[3] = False
    layer = SparseLinear(19, 24, mask, bias=bias, dtype=dtype)
    x = torch.randn(*batch_shape, 19, dtype=dtype)
    g = torch.randn(*batch_shape, 24, dtype=dtype)
    results = {}
    for mode in ("native", "torch"):
        monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", mode)
        layer.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        y = layer(xr)
        y.backward(g)
        results[mode] = (y, xr.grad, layer.values.grad, None if layer.bias is None else layer.bias.grad)
    for native, reference in zip(results["native"], results["torch"]):
        if reference is None:
            assert native is None
        else:
            _close(native, reference, dtype)


@pytest.mark.parametrize("path", [*kernels.PATHS, "torch"])
@pytest.mark.parametrize("relu", [False, True])
def test_gradcheck_fp64(lib, monkeypatch, path, relu):
    """Every vector path (and the torch-CSR fallback), with and without the fused ReLU."""
    if path == "torch":
        monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", "torch")
    else:
        monkeypatch.setenv("SPARSENETS_SPARSE_PATH", path)
    mask, s, _, values = _case(7, 9, 0.4, torch.float64, seed=3, kind="rows")
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    v = values.clone().requires_grad_(True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True)

    def fn(x, v, b):
        return sparse_linear(
            x, v, b, s.crow_indices, s.col_indices, s.t_crow_indices, s.t_col_indices, s.perm, 7, relu=relu
        )

    assert torch.autograd.gradcheck(fn, (x, v, b))


@pytest.mark.parametrize("path", [*kernels.PATHS, "torch"])
def test_fused_relu_equals_linear_then_relu(lib, monkeypatch, path):
    if path == "torch":
        monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", "torch")
    else:
        monkeypatch.setenv("SPARSENETS_SPARSE_PATH", path)
    torch.manual_seed(4)
    mask = torch.rand(40, 30) < 0.2
    fused = SparseLinear(30, 40, mask, activation="relu")
    plain = SparseLinear(30, 40, mask)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(33, 30)
    g = torch.randn(33, 40)
    xf, xp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yf, yp = fused(xf), torch.relu(plain(xp))
    yf.backward(g)
    yp.backward(g)
    _close(yf, yp, torch.float32)
    for a, b in ((xf.grad, xp.grad), (fused.values.grad, plain.values.grad), (fused.bias.grad, plain.bias.grad)):
        _close(a, b, torch.float32)
    with torch.no_grad():
        _close(fused(x), torch.relu(plain(x)), torch.float32)
        _close(fused(x[:1]), torch.relu(plain(x[:1])), torch.float32)


def test_plan_follows_the_environment(lib, monkeypatch):
    monkeypatch.setenv("SPARSENETS_SPARSE_PATH", "avx2")
    assert kernels.plan(lib) == kernels.Plan(32, 32, "env")
    monkeypatch.setenv("SPARSENETS_SPARSE_PATH", "avx512")
    assert kernels.plan(lib).pack == 64 and "spmm avx512" in kernels.plan(lib).describe()
    monkeypatch.setenv("SPARSENETS_SPARSE_PATH", "sse")
    with pytest.raises(SparsenetsError, match="SPARSENETS_SPARSE_PATH must be auto, avx512 or avx2, got 'sse'"):
        kernels.plan(lib)
    monkeypatch.delenv("SPARSENETS_SPARSE_PATH")
    chosen = kernels.plan(lib)
    assert chosen.source == ("calibrated" if lib.avx512 else "cpu")
    assert {chosen.spmm, chosen.sddmm} <= set(kernels.PATHS.values())


def test_calibration_is_cached_per_machine(lib, monkeypatch, tmp_path):
    """The timed choice is written next to the library once; a later process reads it back."""
    fake = kernels._Library.__new__(kernels._Library)
    fake.__dict__.update(lib.__dict__)
    fake.path = tmp_path / "sparsenets_kernels_test.so"
    calls = []
    real_calibrate = kernels.calibrate
    monkeypatch.setattr(kernels, "calibrate", lambda lib: calls.append(1) or kernels.Plan(64, 32, "calibrated"))
    kernels._calibrated.cache_clear()
    try:
        assert kernels._calibrated(fake) == kernels.Plan(64, 32, "calibrated")
        kernels._calibrated.cache_clear()
        assert kernels._calibrated(fake) == kernels.Plan(64, 32, "calibrated")
    finally:
        kernels._calibrated.cache_clear()
    assert len(calls) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    measured = real_calibrate(lib, repeats=1)
    assert {measured.spmm, measured.sddmm} <= {32, 64}


@pytest.mark.parametrize("features, dtype, width, expected", [
    (4096, torch.float32, 32, 32), (4096, torch.float32, 64, 32), (784, torch.float32, 32, 160),
    (10, torch.float32, 64, 256), (1 << 20, torch.float32, 64, 16), (4096, torch.float64, 64, 16),
])
def test_panel_tile_fits_half_the_l2(monkeypatch, features, dtype, width, expected):
    monkeypatch.setattr(kernels, "l2_bytes", lambda: 1 << 20)
    assert kernels.panel_tile(features, dtype, width) == expected
    assert kernels.panel_tile(features, dtype, width, density=0.1) == expected


@pytest.mark.parametrize("features, width, expected", [(4096, 64, 64), (784, 32, 256), (4096, 32, 64)])
def test_panel_tile_fills_the_l2_at_high_sparsity(monkeypatch, features, width, expected):
    monkeypatch.setattr(kernels, "l2_bytes", lambda: 1 << 20)
    assert kernels.panel_tile(features, torch.float32, width, density=0.01) == expected
    assert kernels.layer_plan(kernels.library(), features, features, features, torch.float32)[1] == (
        kernels.panel_tile(features, torch.float32, kernels.plan(kernels.library()).pack, 1 / features))


def test_non_contiguous_grad_output(lib):
    """``y.sum().backward()`` hands a stride-0 gradient; a transposed view must work too."""
    torch.manual_seed(1)
    mask = torch.rand(12, 10) < 0.3
    layer = SparseLinear(10, 12, mask)
    dense = layer.to_dense()
    x = torch.randn(6, 10)
    layer(x).sum().backward()
    dense(x).sum().backward()
    _close(layer.values.grad, dense.weight.grad[mask], torch.float32)
    _close(layer.bias.grad, dense.bias.grad, torch.float32)
    layer.zero_grad()
    dense.zero_grad()
    g = torch.randn(12, 6).t()
    layer(x).backward(g)
    dense(x).backward(g)
    _close(layer.values.grad, dense.weight.grad[mask], torch.float32)


def test_mode_torch_disables_native(monkeypatch):
    monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", "torch")
    assert kernels.library() is None and not kernels.available()
    monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", "fast")
    with pytest.raises(SparsenetsError, match="SPARSENETS_SPARSE_KERNELS"):
        kernels.library()


def test_missing_compiler_falls_back(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SPARSENETS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", "auto")
    kernels._load.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="sparsenets.sparse.kernels"):
            assert kernels.library() is None
        assert "using torch CSR kernels" in caplog.text
        layer = SparseLinear(5, 4, torch.rand(4, 5) < 0.5)
        x = torch.randn(3, 5)
        _close(layer(x), layer.to_dense()(x), torch.float32)
        kernels._load.cache_clear()
        monkeypatch.setenv("SPARSENETS_SPARSE_KERNELS", "native")
        with pytest.raises(SparsenetsError, match="native sparse kernels unavailable"):
            kernels.library()
    finally:
        kernels._load.cache_clear()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_thread_count(lib, width, dtype):
    """Each output has one owner thread and a fixed summation order: bitwise equal results."""
    mask, s, weight, values = _case(300, 200, 0.1, dtype, seed=5, kind="rows")
    x = torch.randn(150, 200, dtype=dtype)
    g = torch.randn(150, 300, dtype=dtype)
    bias = torch.randn(300, dtype=dtype)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            xp, _ = kernels.pack(lib, x, 64, width=width)
            gp, sums = kernels.pack(lib, g, 64, sums=True, width=width)
            results.append((
                xp, gp, sums,
                kernels.spmm(lib, s.crow_indices, s.col_indices, values, None, bias, xp, 150, 64, width=width),
                kernels.spmm(
                    lib, s.t_crow_indices, s.t_col_indices, values, s.perm, None, gp, 150, 64, width=width
                ),
                kernels.sddmm(lib, s.crow_indices, s.col_indices, gp, xp, 64, width=width),
            ))
    finally:
        torch.set_num_threads(previous)
    for one, many in zip(*results):
        assert torch.equal(one, many)
    _close_to(results[0][3], x.double() @ weight.double().t() + bias.double(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather(lib, dtype):
    values = torch.randn(1000, dtype=dtype)
    perm = torch.randperm(1000)
    assert torch.equal(kernels.gather(lib, values, perm), values[perm])
    assert kernels.gather(lib, values[:0], perm[:0]).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("out_f, in_f, density, kind", [(1, 1, 1.0, "random"), (37, 53, 0.2, "rows"),
                                                       (300, 700, 0.02, "random"), (64, 64, 0.0, "random")])
def test_spmv_matches_dense_for_one_row(lib, dtype, index_dtype, out_f, in_f, density, kind):
    mask, s, weight, values = _case(out_f, in_f, density, dtype, index_dtype=index_dtype, kind=kind)
    x = torch.randn(1, in_f, dtype=dtype)
    bias = torch.randn(out_f, dtype=dtype)
    for b in (bias, None):
        y = kernels.spmv(lib, s.crow_indices, s.col_indices, values, b, x)
        assert y.shape == (1, out_f)
        expected = x.double() @ weight.double().t() + (0 if b is None else b.double())
        _close_to(y, expected, dtype)
        _close_to(kernels.spmv(lib, s.crow_indices, s.col_indices, values, b, x, relu=True),
                  expected.clamp(min=0), dtype)
    for _name, view in _layouts(torch.randn(1, in_f, dtype=dtype)):  # any layout of the one row
        y = kernels.spmv(lib, s.crow_indices, s.col_indices, values, None, view)
        _close_to(y, view.double() @ weight.double().t(), dtype)
    with pytest.raises(SparsenetsError, match="one input row"):
        kernels.spmv(lib, s.crow_indices, s.col_indices, values, None, torch.randn(2, in_f, dtype=dtype))


def test_no_grad_batch_one_uses_spmv_and_equals_the_training_path(lib, monkeypatch):
    torch.manual_seed(0)
    layer = SparseLinear.from_dense(torch.nn.Linear(50, 30), torch.rand(30, 50) < 0.1)
    x = torch.randn(1, 50)
    calls = []
    real = kernels.spmv
    monkeypatch.setattr(kernels, "spmv", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        served = layer(x)
        batched = layer(torch.randn(4, 50))  # larger batches keep the packed kernel
    assert len(calls) == 1 and batched.shape == (4, 30)
    trained = layer(x)  # with grad: the autograd path
    torch.testing.assert_close(served, trained.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype, n, plan_width, expected", [
    (torch.float32, 2, 64, 16), (torch.float32, 4, 64, 16), (torch.float32, 5, 64, 32),
    (torch.float32, 8, 64, 32), (torch.float32, 9, 64, 64), (torch.float32, 300, 64, 64),
    (torch.float32, 8, 32, 32), (torch.float32, 12, 32, 32), (torch.float64, 2, 64, 16),
    (torch.float64, 3, 64, 32), (torch.float64, 5, 64, 64),
])
def test_inference_width_is_the_narrowest_that_holds_the_batch(dtype, n, plan_width, expected):
    assert kernels.inference_width(n, dtype, plan_width) == expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_grad_small_batches_equal_dense_on_every_width(lib, dtype, monkeypatch):
    torch.manual_seed(3)
    mask = torch.rand(70, 90) < 0.15
    dense = torch.nn.Linear(90, 70).to(dtype)
    layer = SparseLinear.from_dense(dense, mask)
    widths = []
    real = kernels.spmm
    monkeypatch.setattr(kernels, "spmm", lambda *a, **k: widths.append(k["width"]) or real(*a, **k))
    for n in range(2, 21):
        x = torch.randn(n, 90, dtype=dtype)
        with torch.no_grad():
            expected = torch.nn.functional.linear(x.double(), dense.weight.double() * mask, dense.bias.double())
            _close_to(layer(x), expected, dtype)
    plan_width = kernels.plan(lib).spmm
    assert widths == [kernels.inference_width(n, dtype, plan_width) for n in range(2, 21)]
    assert widths[0] == 16  # batch 2 on the narrow kernels, whatever the plan


def test_fuse_relu_keeps_the_function_and_the_indices():
    from torch import nn

    from sparsenets.sparse import fuse_relu, to_dense

    torch.manual_seed(2)
    model = nn.Sequential(
        SparseLinear(12, 20, torch.rand(20, 12) < 0.3), nn.ReLU(),
        SparseLinear(20, 16, torch.rand(16, 20) < 0.3), nn.Tanh(),  # not a ReLU: left alone
        SparseLinear(16, 5, torch.rand(5, 16) < 0.5), nn.ReLU(inplace=True),
    )
    x = torch.randn(9, 12)
    before = model(x)
    assert fuse_relu(model) == 2 and fuse_relu(model) == 0
    assert [type(m).__name__ for m in model] == ["SparseLinear", "Identity", "SparseLinear", "Tanh",
                                                  "SparseLinear", "Identity"]
    assert model[0].activation == "relu" and model[2].activation is None
    assert "activation=relu" in repr(model[0])
    _close(model(x), before, torch.float32)
    _close(to_dense(model)(x), before, torch.float32)  # a fused layer densifies to Linear + ReLU
    with pytest.raises(SparsenetsError, match="activation must be None or 'relu', got 'gelu'"):
        SparseLinear(3, 4, activation="gelu")
