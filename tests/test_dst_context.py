"""The narrow method context: a DST method written against ``SparsityContext`` alone runs on both
backends; typed method state; the layer seam that measurements ask; the method hierarchy."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import sparsenets
from sparsenets import DynamicSparsity, SparsenetsError
from sparsenets.dst import GMP, GraNet, Method, MethodState, SparsityContext
from sparsenets.dst.base import drop_count, scratch
from sparsenets.layers import DenseWeight, weight_layer
from sparsenets.rng import Stream
from sparsenets.select import select_bottomk, select_topk

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

SRC = Path(sparsenets.__file__).resolve().parent
SIZES = (12, 16, 10, 4)

#: What the protocol offers: its annotated attributes and its methods.
CONTEXT_MEMBERS = frozenset(SparsityContext.__annotations__) | {
    name for name, value in vars(SparsityContext).items()
    if callable(value) and not name.startswith("_")
}


class OnlyTheContext:
    """Wraps the sparsifier so that anything outside ``SparsityContext`` raises."""

    def __init__(self, ctx):
        object.__setattr__(self, "_ctx", ctx)

    def __getattr__(self, name):
        if name not in CONTEXT_MEMBERS:
            raise AssertionError(f"method used {name!r}, which is not in SparsityContext")
        return getattr(object.__getattribute__(self, "_ctx"), name)


@dataclass
class SwapState(MethodState):
    prefix: ClassVar[str] = "swap_"
    #: per layer, how many weights were swapped so far (persistent)
    swapped: dict[str, torch.Tensor] = field(default_factory=dict)
    #: |activations| of the layer input on the batch before an update (scratch)
    activity: dict[str, torch.Tensor] = scratch()


@dataclass(frozen=True)
class GradientSwap(Method):
    """Test-only method: every ``every`` steps, drop the ``k`` active weights with the lowest
    |w| and grow the ``k`` inactive ones with the highest |dense grad| · input activity."""

    name: ClassVar[str] = "gradient_swap"
    needs_dense_grad: ClassVar[bool] = True
    every: int = 3
    k: int = 5

    def make_state(self, ctx):
        ctx = OnlyTheContext(ctx)
        return SwapState(swapped={n: torch.zeros((), dtype=torch.int64) for n in ctx.masks})

    def attach(self, ctx):
        ctx = OnlyTheContext(ctx)
        for name in ctx.masks:
            ctx.add_forward_hook(name, self._capture(ctx, name))

    @staticmethod
    def _capture(ctx, name):
        def hook(module, inputs, output):
            if module.training and ctx.next_step_is_update():
                ctx.state.activity[name] = inputs[0].detach().abs().mean(0)  # (in,)
        return hook

    def is_update(self, ctx, step):
        return step % self.every == 0 and step <= OnlyTheContext(ctx).total_steps - self.every

    def update(self, ctx, step):
        ctx = OnlyTheContext(ctx)
        new_masks = {}
        for name, mask in ctx.masks.items():
            k = min(self.k, ctx.masks.nnz(name), mask.numel() - ctx.masks.nnz(name))
            drop = select_bottomk(ctx.weight(name).abs(), k, mask,
                                  generator=ctx.generator(step, name, Stream.DROP))
            score = ctx.dense_grad(name).abs() * ctx.state.activity[name].unsqueeze(0)
            grow = select_topk(score, k, ~mask, generator=ctx.generator(step, name, Stream.GROW))
            assert ctx.grad(name) is not None and bool((ctx.grad(name)[~mask] == 0).all())
            ctx.state.swapped[name] += k
            new_masks[name] = (mask & ~drop) | grow
        return new_masks


def _run(backend, make_mlp, steps=12, stop_after=None, resume_from=None):
    model = make_mlp(SIZES, 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, density=0.3, total_steps=steps, method=GradientSwap(),
                        backend=backend, seed=1)
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, SIZES[0], generator=gen), torch.randint(0, SIZES[-1], (8,), generator=gen))
            for _ in range(steps)]
    start = 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        s.load_state_dict(resume_from["sparsifier"])
        start = s.step_count
    for x, y in data[start:stop_after]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        s.step()
        assert {n: s.masks.nnz(n) for n in s.masks} == s.target_counts
        assert not s.transient
    return model, optimizer, s


def test_a_method_written_against_the_context_alone_runs_on_both_backends(make_mlp):
    _, _, masked = _run("masked", make_mlp)
    _, _, sparse = _run("sparse", make_mlp)
    assert set(sparse.backends.values()) == {"sparse"}
    assert len(masked.history) == len(sparse.history) == 3
    for name in masked.masks:
        assert torch.equal(masked.masks[name], sparse.masks[name])
        torch.testing.assert_close(sparse.weight(name), masked.weight(name), atol=1e-5, rtol=0)
        assert int(masked.state.swapped[name]) == int(sparse.state.swapped[name]) == 15
    assert masked.masks.itop_rate() > masked.masks.density()


def test_typed_method_state_is_checkpointed_and_resumes_exactly(make_mlp):
    _, _, full = _run("masked", make_mlp)
    model, optimizer, half = _run("masked", make_mlp, stop_after=7)
    assert set(half.buffers) == {f"swap_swapped/{n}" for n in half.masks}
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "sparsifier": half.state_dict()}
    _, _, resumed = _run("masked", make_mlp, resume_from=checkpoint)
    for name in full.masks:
        assert torch.equal(full.masks[name], resumed.masks[name])
        assert torch.equal(full.state.swapped[name], resumed.state.swapped[name])


def test_method_state_rejects_unknown_keys():
    state = SwapState(swapped={"a": torch.zeros(())})
    with pytest.raises(SparsenetsError, match="unknown method state 'other/a'"):
        state.load_persistent({"other/a": torch.zeros(())}, torch.device("cpu"))
    state.activity["a"] = torch.ones(3)
    assert set(state.captured()) == {"swap_activity/a"} and set(state.persistent()) == {"swap_swapped/a"}
    state.clear_scratch()
    assert state.captured() == {} and set(state.persistent()) == {"swap_swapped/a"}


def test_the_sparsifier_offers_every_member_of_the_context(make_mlp):
    model = make_mlp(SIZES, 0)
    s = DynamicSparsity(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5,
                        total_steps=10, method="set", update_every=2)
    missing = [m for m in CONTEXT_MEMBERS if not hasattr(s, m)]
    assert not missing
    assert s.generator(3, "0.weight", Stream.GROW).initial_seed() != s.generator(3, "0.weight", Stream.DROP).initial_seed()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_dst_module_imports_the_sparsifier():
    for path in (SRC / "dst").glob("*.py"):
        if path.name in ("sparsifier.py", "__init__.py"):  # the definition and the package export
            continue
        imported = _imports(path)
        assert "DynamicSparsity" not in imported and "sparsifier" not in imported, path.name


def test_measurements_ask_the_layer_instead_of_checking_types():
    for module in ("metrics.py", "report.py"):
        source = (SRC / module).read_text()
        assert "SparseLinear)" not in source and "import SparseLinear" not in source, module


class HalfStored(nn.Module):
    """A toy storage format: keeps only the first half of the rows of its weight."""

    backend = "sparse"
    spatial_dims = 0

    def __init__(self, n_in, n_out):
        super().__init__()
        self.rows = nn.Parameter(torch.randn(n_out // 2, n_in))
        self.shape, self.out_width = (n_out, n_in), n_out

    @property
    def stored_nnz(self):
        return self.rows.numel()

    def dense_weight(self):
        return torch.cat([self.rows.detach(), torch.zeros_like(self.rows)])

    def nonzero_mask(self):
        return self.dense_weight() != 0

    def stored_bytes(self, nnz=None):
        return {"dense": 4 * self.shape[0] * self.shape[1], "sparse": 4 * self.rows.numel()}

    def forward(self, x):
        return nn.functional.linear(x, self.dense_weight())


def test_a_new_storage_format_is_measured_once_it_answers_the_protocol():
    model = nn.Sequential(nn.Linear(6, 8), HalfStored(8, 4))
    assert isinstance(weight_layer(model[0]), DenseWeight) and weight_layer(model[1]) is model[1]
    result = sparsenets.report(model, example_input=torch.randn(2, 6))
    layers = {layer.name: layer for layer in result.layers}
    assert set(layers) == {"0.weight", "1.weight"}
    assert layers["1.weight"].backend == "sparse" and layers["1.weight"].nnz == 16
    assert layers["1.weight"].flops_sparse == 2 * 16 and layers["1.weight"].bytes_sparse == 64
    assert layers["0.weight"].backend == "masked"


# -- the method hierarchy ------------------------------------------------------------------
def test_gmp_exposes_only_options_that_act():
    assert set(GMP().options()) == {"update_every", "end_fraction", "initial_density", "start_fraction"}
    assert set(GraNet().options()) == set(GMP().options()) | {
        "drop_fraction", "drop_schedule", "explore", "regrow_init", "regrow_std"}
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(SparsenetsError, match="unknown option 'drop_fraction' for method 'gmp'"):
        DynamicSparsity(model, torch.optim.SGD(model.parameters(), lr=0.1), density=0.5,
                        total_steps=10, method="gmp", drop_fraction=0.3)


@pytest.mark.parametrize(("fraction", "nnz", "free", "expected"),
                         [(0.3, 10, 50, 3), (0.5, 10, 2, 2), (1.0, 4, 100, 4), (0.0, 9, 9, 0), (0.25, 2, 5, 0)])
def test_drop_count(fraction, nnz, free, expected):
    assert drop_count(fraction, nnz, free) == expected


def test_named_streams_keep_their_values():
    # the stream numbers are part of every run's seed derivation: renumbering changes runs
    assert [int(s) for s in (Stream.DROP, Stream.GROW, Stream.REGROW_DROP, Stream.INIT_MASK,
                             Stream.REGROW_VALUES, Stream.DATA_ORDER)] == [0, 1, 2, 3, 4, 11]
    assert len({int(s) for s in Stream}) == len(Stream)


def test_methods_do_not_see_the_sparsifier_type():
    from sparsenets.dst import base, methods, pruning
    for module in (base, methods, pruning):
        assert "DynamicSparsity" not in inspect.getsource(module).replace(
            "sparsenets.dst.sparsifier.DynamicSparsity", "")


def test_masks_alone_fix_the_density_and_each_layers_count(make_mlp):
    model = make_mlp(SIZES, 0)
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=gen) < 0.25 for n, p in model.named_parameters() if n.endswith("weight")}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    s = DynamicSparsity(model, optimizer, masks=masks, total_steps=9, method="rigl", update_every=3)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    assert s.target_counts == s.initial_counts == counts
    assert s.density == sum(counts.values()) / sum(m.numel() for m in masks.values())
    for _ in range(9):
        optimizer.zero_grad()
        model(torch.randn(4, SIZES[0])).pow(2).mean().backward()
        s.step()
        assert {n: s.masks.nnz(n) for n in s.masks} == counts
    assert len(s.history) == 2
    with pytest.raises(SparsenetsError, match="density is required unless masks="):
        DynamicSparsity(model, optimizer, total_steps=9)
    with pytest.raises(SparsenetsError, match="must be a torch.bool tensor"):
        DynamicSparsity(model, optimizer, masks={n: m.float() for n, m in masks.items()}, total_steps=9)
