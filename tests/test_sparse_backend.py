"""DynamicSparsity on the sparse (CSR) backend: same topology as the masked backend, per-nonzero
optimizer state, exact resume, per-layer ``auto`` choice, one-line errors."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from sparsenets import DynamicSparsity, RigL, SparsenetsError
from sparsenets.config import build_config
from sparsenets.masks import MaskStore
from sparsenets.sparse import SparseLinear, remap

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

SIZES = (12, 24, 16, 5)
UPDATES = {"update_every": 4, "drop_fraction": 0.4, "end_fraction": 0.8}


def build(backend, method="set", opt="sgd", steps=24, make_mlp=None, seed=0, **options):
    model = make_mlp(SIZES, 0)
    if opt == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    if method != "static":
        options = {**UPDATES, **options}
    if method == "gmp":  # GMP drops no extra share: it has no drop_fraction option
        options.pop("drop_fraction", None)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=steps, method=method,
                        backend=backend, seed=seed, **options)
    return model, optimizer, s


def batches(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, SIZES[0], generator=gen), torch.randint(0, SIZES[-1], (8,), generator=gen))
            for _ in range(n)]


def train_step(model, optimizer, s, x, y):
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    s.step()


# -- same topology, same weights -------------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("method", ["static", "set", "rigl", "mest", "ctre", "gmp", "granet"])
def test_masks_and_weights_match_masked_backend(method, opt, make_mlp):
    steps = 24
    ma, oa, sa = build("masked", method, opt, steps, make_mlp)
    mb, ob, sb = build("sparse", method, opt, steps, make_mlp)
    assert all(isinstance(mb.get_submodule(n.rpartition(".")[0]), SparseLinear) for n in sb.masks)
    for step, (x, y) in enumerate(batches(steps), start=1):
        train_step(ma, oa, sa, x, y)
        train_step(mb, ob, sb, x, y)
        for name in sa.masks:
            assert torch.equal(sa.masks[name], sb.masks[name]), (method, step, name)
            layer = sb.sparse_modules[name]
            assert layer.nnz == sb.masks.nnz(name) == sa.masks.nnz(name)
            assert torch.equal(layer.mask(), sa.masks[name])
            torch.testing.assert_close(sb.weight(name), sa.weight(name), atol=1e-5, rtol=0)
    assert len(sa.history) == len(sb.history) == (0 if method == "static" else 4)
    for ra, rb in zip(sa.history, sb.history):
        assert ra == rb
    if method in ("set", "rigl", "mest", "ctre"):  # fixed budget: nnz exactly the allocation
        assert {n: sb.masks.nnz(n) for n in sb.masks} == sb.target_counts
    if method in ("gmp", "granet"):
        assert {n: sb.masks.nnz(n) for n in sb.masks} == sb.method.scheduled_counts(sb, 16)
    for name, param in ma.named_parameters():  # biases too
        if name.endswith("bias"):
            torch.testing.assert_close(mb.get_parameter(name), param, atol=1e-5, rtol=0)


@pytest.mark.parametrize("options", [{"regrow_init": "random"}, {"explore": True}])
def test_regrow_options_match_masked_backend(options, make_mlp):
    ma, oa, sa = build("masked", "rigl", make_mlp=make_mlp, **options)
    mb, ob, sb = build("sparse", "rigl", make_mlp=make_mlp, **options)
    for x, y in batches(12):
        train_step(ma, oa, sa, x, y)
        train_step(mb, ob, sb, x, y)
    for name in sa.masks:
        assert torch.equal(sa.masks[name], sb.masks[name])
        assert torch.equal(sa.masks.ever_active(name), sb.masks.ever_active(name))
        torch.testing.assert_close(sb.weight(name), sa.weight(name), atol=1e-5, rtol=0)
    assert sb.masks.itop_rate() == sa.masks.itop_rate() > sa.masks.density()


@dataclass(frozen=True)
class RecordingRigL(RigL):
    """RigL that keeps the dense gradients it was given (for the test below)."""

    seen: ClassVar[list] = []

    def update(self, ctx, step):
        type(self).seen.append({n: ctx.dense_grad(n).clone() for n in ctx.masks})
        return super().update(ctx, step)


@pytest.mark.parametrize("passes", [1, 2])
def test_dense_gradient_at_update_steps_equals_masked(passes, make_mlp):
    """Sparse layers form grad_outᵀ·x at update steps only; it equals the dense weight grad,
    also when gradients of several backward passes accumulate before one step."""
    runs = []
    for backend in ("masked", "sparse"):
        RecordingRigL.seen = []
        model = make_mlp(SIZES, 0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        s = DynamicSparsity(model, optimizer, density=0.3, total_steps=12, backend=backend,
                            method=RecordingRigL(**UPDATES))
        data = batches(12 * passes)
        for step in range(12):
            optimizer.zero_grad()
            for x, y in data[step * passes:(step + 1) * passes]:
                nn.functional.cross_entropy(model(x), y).backward()
            s.step()
            assert not s.transient  # nothing dense is kept after a step
        runs.append(list(RecordingRigL.seen))
    masked, sparse = runs
    assert len(masked) == len(sparse) == 2
    for grads_a, grads_b in zip(masked, sparse):
        for name in grads_a:
            assert grads_b[name].shape == grads_a[name].shape
            torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-5)


def test_missing_backward_at_update_step_is_one_line_error(make_mlp):
    model, optimizer, s = build("sparse", "rigl", make_mlp=make_mlp)
    for x, y in batches(3):
        train_step(model, optimizer, s, x, y)
    with pytest.raises(SparsenetsError, match="needs the gradient") as info:
        s.step()  # step 4 is an update step, but no forward/backward happened
    assert "\n" not in str(info.value)


# -- optimizer state -------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimizer_state_is_per_nonzero_and_remapped(opt, make_mlp):
    model, optimizer, s = build("sparse", "set", opt, make_mlp=make_mlp)
    keys = ("momentum_buffer",) if opt == "sgd" else ("exp_avg", "exp_avg_sq")
    data = batches(8)
    for x, y in data[:3]:
        train_step(model, optimizer, s, x, y)
    old_index = {n: s.masks.index(n).clone() for n in s.masks}
    x, y = data[3]
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    before = {}  # the state right after step 4's optimizer step, before its topology update
    optimizer.register_step_post_hook(
        lambda *_: before.update({
            n: {k: optimizer.state[s.params[n]][k].clone() for k in keys} for n in s.masks
        }) if not before else None
    )
    s.step()  # step 4: update
    assert s.history and s.history[-1]["step"] == 4
    for name, values in s.params.items():
        state = optimizer.state[values]
        new_index = s.masks.index(name)
        kept = torch.isin(new_index, old_index[name])
        assert 0 < int(kept.sum()) < new_index.numel()
        position = torch.searchsorted(old_index[name], new_index[kept])
        for key in keys:
            assert state[key].shape == values.shape == (s.masks.nnz(name),)
            assert torch.equal(state[key][kept], before[name][key][position])  # kept: moved along
            assert bool((state[key][~kept] == 0).all())  # grown: fresh
        assert bool((values.detach()[~kept] == 0).all())  # grown weights start at 0
    if opt == "adam":
        assert all(int(optimizer.state[p]["step"]) == 4 for p in s.params.values())


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_optimizer_state_matches_masked_backend(opt, make_mlp):
    ma, oa, sa = build("masked", "rigl", opt, make_mlp=make_mlp)
    mb, ob, sb = build("sparse", "rigl", opt, make_mlp=make_mlp)
    for x, y in batches(10):
        train_step(ma, oa, sa, x, y)
        train_step(mb, ob, sb, x, y)
    for name in sa.masks:
        dense_state, sparse_state = oa.state[sa.params[name]], ob.state[sb.params[name]]
        mask = sa.masks[name]
        for key, value in dense_state.items():
            if value.shape == mask.shape:
                assert bool((value[~mask] == 0).all())
                torch.testing.assert_close(sparse_state[key], value[mask], atol=1e-6, rtol=1e-5)


def test_no_dense_weight_left(make_mlp):
    model, optimizer, s = build("sparse", "rigl", make_mlp=make_mlp)
    old = weakref.ref(make_mlp(SIZES, 0)[0].weight)  # noqa: F841 (a fresh model, dropped at once)
    held = [p for group in optimizer.param_groups for p in group["params"]]
    layers = list(s.sparse_modules.values())
    assert {id(p) for p in held} == {id(p) for layer in layers for p in (layer.values, layer.bias)}
    assert len(held) == 2 * len(layers)
    assert not any(n.endswith(".weight") for n, _ in model.named_parameters())
    for x, y in batches(5):
        train_step(model, optimizer, s, x, y)
    assert s.masks.compact == frozenset(s.masks)
    for name, layer in s.sparse_modules.items():
        for value in optimizer.state[layer.values].values():
            assert value.dim() == 0 or value.shape == (layer.nnz,), name
    assert not s.transient


def test_dense_weights_are_freed_by_conversion(make_mlp):
    model = make_mlp(SIZES, 0)
    refs = [weakref.ref(m.weight) for m in model if isinstance(m, nn.Linear)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=5, method="set", backend="sparse")
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert s.backends == dict.fromkeys(s.masks, "sparse")


# -- persistence -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["set", "rigl"])
def test_resume_equals_uninterrupted(method, make_mlp):
    data = batches(16)
    model, optimizer, s = build("sparse", method, "adam", steps=16, make_mlp=make_mlp)
    for x, y in data:
        train_step(model, optimizer, s, x, y)
    first_model, first_opt, first = build("sparse", method, "adam", steps=16, make_mlp=make_mlp)
    for x, y in data[:6]:
        train_step(first_model, first_opt, first, x, y)
    saved = (
        {k: v.clone() for k, v in first_model.state_dict().items()},
        first_opt.state_dict(),
        first.state_dict(),
    )
    assert "mask_index/0.weight" in saved[2]["masks"] and saved[2]["backends"]["0.weight"] == "sparse"
    model2, optimizer2, s2 = build("sparse", method, "adam", steps=16, make_mlp=make_mlp)
    model2.load_state_dict(saved[0])
    optimizer2.load_state_dict(saved[1])
    s2.load_state_dict(saved[2])
    for x, y in data[6:]:
        train_step(model2, optimizer2, s2, x, y)
    assert model2.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(model2.state_dict()[key], value), key
    for name in s.masks:
        assert torch.equal(s2.masks[name], s.masks[name])
    assert s2.history == s.history and s2.masks.itop_rate() == s.masks.itop_rate()


def test_load_state_dict_checks_layout(make_mlp):
    model, optimizer, s = build("sparse", "set", make_mlp=make_mlp)
    for x, y in batches(4):
        train_step(model, optimizer, s, x, y)
    state = s.state_dict()
    _, _, masked = build("masked", "set", make_mlp=make_mlp)
    with pytest.raises(SparsenetsError, match="backends"):
        masked.load_state_dict(state)
    _, _, fresh = build("sparse", "set", make_mlp=make_mlp)  # the model still has the old topology
    with pytest.raises(SparsenetsError, match="load the model's state_dict"):
        fresh.load_state_dict(state)


# -- auto ------------------------------------------------------------------------------------
def test_auto_picks_per_layer_with_injected_timer(make_mlp):
    calls = []

    def timer(module, x):
        calls.append((type(module).__name__, module.in_features, tuple(x.shape)))
        sparse = isinstance(module, SparseLinear)
        return 1.0 if sparse == (module.in_features == 24) else 2.0  # sparse wins on layer 2 only

    model = make_mlp(SIZES, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=8, method="rigl", backend="auto",
                        auto_batch_size=32, auto_timer=timer, **UPDATES)
    assert s.backends == {"0.weight": "masked", "2.weight": "sparse", "4.weight": "masked"}
    assert s.backend_timings["2.weight"] == {"masked": 2.0, "sparse": 1.0}
    assert sorted(calls) == sorted(
        [(kind, n_in, (32, n_in)) for n_in in (12, 24, 16) for kind in ("Linear", "SparseLinear")]
    )
    assert isinstance(model[2], SparseLinear) and type(model[0]) is nn.Linear
    assert s.masks.compact == frozenset({"2.weight"})
    ma, oa, sa = build("masked", "rigl", steps=8, make_mlp=make_mlp)
    for x, y in batches(8):  # a mixed model trains exactly like the masked one
        train_step(model, optimizer, s, x, y)
        train_step(ma, oa, sa, x, y)
        for name in s.masks:
            assert torch.equal(s.masks[name], sa.masks[name])
    assert bool((model[0].weight[~s.masks["0.weight"]] == 0).all())


def test_auto_default_timer_measures(make_mlp):
    model = make_mlp(SIZES, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=8, method="static",
                        backend="auto", auto_batch_size=4)
    assert set(s.backends.values()) <= {"masked", "sparse"}
    assert all(t["masked"] > 0 and t["sparse"] > 0 for t in s.backend_timings.values())
    assert all(p.grad is None for p in model.parameters())  # timing leaves no gradients

    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = make_mlp(SIZES, 0)
    for key, value in fresh.state_dict().items():  # timing ran on copies: the model is untouched
        if key in before and key.endswith("bias"):
            assert torch.equal(before[key], value), key


class SlowSGD(torch.optim.SGD):
    """SGD whose step costs 20 µs per stored element: the update dominates any layer timing."""

    def step(self, closure=None):
        import time

        time.sleep(2e-5 * sum(p.numel() for group in self.param_groups for p in group["params"]))
        return super().step(closure)


def test_auto_times_the_optimizer_update(make_mlp):
    # Tiny layers: forward+backward alone favours dense; an update per stored element tips
    # every layer to sparse, so the choice proves the update is part of the timing.
    model = make_mlp(SIZES, 0)
    optimizer = SlowSGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.1, total_steps=8, method="static",
                        backend="auto", auto_batch_size=4)
    assert set(s.backends.values()) == {"sparse"}, s.backend_timings
    assert all(t["masked"] > t["sparse"] for t in s.backend_timings.values())
    assert all(isinstance(model[i], SparseLinear) for i in (0, 2, 4))


def test_training_update_matches_the_masked_backend_step():
    from sparsenets.dst.auto import training_update

    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    mask = torch.rand(4, 6) < 0.5
    with torch.no_grad():
        linear.weight.mul_(mask)
    reference = torch.optim.SGD(nn.Linear(6, 4).parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    update = training_update(linear, reference, mask)
    x = torch.randn(3, 6)
    expected = linear.weight.detach().clone()
    momentum = torch.zeros_like(expected)
    for _ in range(3):
        linear.zero_grad(set_to_none=True)
        linear(x).sum().backward()
        grad = linear.weight.grad * mask + 0.01 * expected
        momentum = 0.9 * momentum + grad if _ else grad
        expected = (expected - 0.1 * momentum) * mask
        update()
        torch.testing.assert_close(linear.weight.detach(), expected)
    assert bool((linear.weight[~mask] == 0).all())
    sparse = SparseLinear.from_dense(linear, mask)
    step = training_update(sparse, reference)
    sparse(x).sum().backward()
    step()
    state = [st for st in step.__self__.state.values()]
    assert sorted(st["momentum_buffer"].numel() for st in state) == sorted([int(mask.sum()), 4])
    assert training_update(linear, None) is None


def test_training_update_without_rebuildable_optimizer_is_none():
    from sparsenets.dst.auto import training_update

    class NeedsArgument(torch.optim.SGD):
        def __init__(self, params, extra, **defaults):
            super().__init__(params, **defaults)

    linear = nn.Linear(3, 2)
    optimizer = NeedsArgument(nn.Linear(3, 2).parameters(), "x", lr=0.1)
    assert training_update(linear, optimizer) is None


# -- what is supported, and errors -----------------------------------------------------------
class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_conv_layers_stay_masked():
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=12, method="rigl",
                        backend="sparse", **UPDATES)
    assert s.backends == {"conv.weight": "masked", "fc.weight": "sparse"}
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        optimizer.zero_grad()
        x = torch.randn(4, 1, 6, 6, generator=gen)
        nn.functional.cross_entropy(model(x), torch.randint(0, 5, (4,), generator=gen)).backward()
        s.step()
    assert len(s.history) == 2
    assert bool((model.conv.weight[~s.masks["conv.weight"]] == 0).all())
    assert model.fc.nnz == s.target_counts["fc.weight"]


def test_unsupported_method_is_one_line_error(make_mlp):
    with pytest.raises(SparsenetsError, match="'snfs' is not supported on the sparse backend") as info:
        build("sparse", "snfs", make_mlp=make_mlp)
    assert "\n" not in str(info.value)
    _, _, s = build("auto", "snfs", make_mlp=make_mlp)  # auto falls back to masked
    assert set(s.backends.values()) == {"masked"}


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ("csr", "unknown backend 'csr' (valid: masked, sparse, auto)"),
        (3, "unknown backend 3"),
        ({"0.weight": "fast"}, "backend of '0.weight' must be one of masked, sparse"),
        ({"9.weight": "sparse"}, "backend names '9.weight', which is not sparsified"),
    ],
)
def test_bad_backend_is_one_line_error(backend, message, make_mlp):
    with pytest.raises(SparsenetsError) as info:
        build(backend, make_mlp=make_mlp)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_sparse_backend_impossible_layers():
    with pytest.raises(SparsenetsError, match="not the weight of an nn.Linear"):
        model = SmallCNN()
        DynamicSparsity(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5,
                        total_steps=4, method="set", backend={"conv.weight": "sparse"})
    layer = nn.Linear(4, 3)
    with pytest.raises(SparsenetsError, match="the model itself is an nn.Linear"):
        DynamicSparsity(layer, torch.optim.SGD(layer.parameters(), lr=0.1), density=0.5,
                        total_steps=4, method="set", backend="sparse")
    half = nn.Sequential(nn.Linear(4, 3).to(torch.bfloat16))
    with pytest.raises(SparsenetsError, match="float32 and float64"):
        DynamicSparsity(half, torch.optim.SGD(half.parameters(), lr=0.1), density=0.5,
                        total_steps=4, method="set", backend="sparse")


def test_config_backend_key():
    base = {"dataset": "digits", "sparsity": {"method": "set"}}
    assert build_config(base).backend == "masked"
    assert build_config({**base, "backend": "Sparse"}).backend == "sparse"
    with pytest.raises(SparsenetsError) as info:
        build_config({**base, "backend": "csr"})
    assert str(info.value) == "unknown backend 'csr' (valid: masked, sparse, auto)"
    with pytest.raises(SparsenetsError, match="needs a sparse method"):
        build_config({"dataset": "digits", "backend": "sparse", "sparsity": {"method": "dense"}})


# -- pure parts ------------------------------------------------------------------------------
def test_remap_keeps_kept_and_fills_new():
    old = torch.tensor([1, 4, 6, 9])
    new = torch.tensor([0, 4, 7, 9])
    values = torch.tensor([10.0, 40.0, 60.0, 90.0])
    assert torch.equal(remap(values, old, new), torch.tensor([0.0, 40.0, 0.0, 90.0]))
    assert torch.equal(remap(values, old, new, fill=-1.0), torch.tensor([-1.0, 40.0, -1.0, 90.0]))
    assert remap(values, old, torch.tensor([], dtype=torch.long)).shape == (0,)
    empty = torch.tensor([], dtype=torch.long)
    assert torch.equal(remap(torch.tensor([]), empty, new), torch.zeros(4))


def test_mask_store_compact_layout_round_trip():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(5, 7, generator=gen) < 0.3
    b = torch.rand(5, 7, generator=gen) < 0.3
    dense, compact = MaskStore({"w": (5, 7)}), MaskStore({"w": (5, 7)})
    compact.set_compact("w")
    for store in (dense, compact):
        store.set("w", a)
        store.reset_ever_active()
        store.set("w", b)
    assert compact.compact == frozenset({"w"}) and dense.compact == frozenset()
    assert torch.equal(compact["w"], dense["w"]) and torch.equal(compact["w"], b)
    assert torch.equal(compact.index("w"), dense.index("w"))
    assert torch.equal(compact.ever_active("w"), a | b)
    assert compact.nnz("w") == dense.nnz("w") and compact.itop_rate() == dense.itop_rate()
    with compact.expanded():
        assert compact["w"] is compact["w"]  # cached while expanded
    assert compact["w"] is not compact["w"]
    with pytest.raises(SparsenetsError, match="compact"):
        compact.inactive("w")
    # either layout loads into either store
    for source, target in [(compact, MaskStore({"w": (5, 7)})), (dense, compact)]:
        target.load_state_dict(source.state_dict())
        assert torch.equal(target["w"], b) and torch.equal(target.ever_active("w"), a | b)
    assert set(compact.state_dict()) == {"mask_index/w", "ever_active_index/w"}
    with pytest.raises(SparsenetsError, match="missing"):
        compact.load_state_dict({"mask/w": b})


def test_median_seconds_calls_warmup_then_repeats():
    from sparsenets.timing import median_seconds

    calls = []
    seconds = median_seconds(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and 0 <= seconds < 1
