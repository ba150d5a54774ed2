"""The systems compared, built from the same masks and initial values, and their training step.

Models: "nerva" 784-1024-512-10 (batch 100) and "wide" 784-4096-4096-10 (batch 256); the two
hidden layers are sparse (a random mask with an exact count of zeros per layer), the output layer
(->10) is dense in every system. Systems:

* ``masked``: dense ``nn.Linear`` layers whose weights are multiplied by their masks
  (``sparsenets.DynamicSparsity(method="static", backend="masked")``);
* ``sparse``: the same with ``backend="sparse"`` (CSR :class:`sparsenets.sparse.SparseLinear`),
  each hidden layer's ReLU fused into it (:func:`sparsenets.sparse.fuse_relu`);
* ``sparse-torch``: the same layer on torch's CSR kernels (the parent sets
  ``SPARSENETS_SPARSE_KERNELS=torch`` for the systems in :data:`TORCH_KERNELS`);
* ``auto`` / ``auto-torch``: ``backend="auto"`` (each hidden layer timed dense vs CSR at the
  benchmark's batch size, the faster kept), with the native and with torch's CSR kernels;
* ``torch-csr``: a plain layer on torch's own CSR kernels, written here as a user would
  (:class:`PlainCSRLinear`, no sparsenets code): the baseline of "just use torch.sparse";
* ``sparselab``: sparselab 0.2.2 ``SparseLinear`` + its ``Static`` algorithm (run under the
  interpreter of :mod:`.sparselab_venv`).

Nothing here measures; :mod:`.worker` times :func:`train_step` on what :func:`build_system` returns.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = {"nerva": ((784, 1024, 512, 10), 100), "wide": ((784, 4096, 4096, 10), 256)}
SYSTEMS = ("masked", "sparse", "sparse-torch", "torch-csr", "auto", "auto-torch", "sparselab")
TORCH_KERNELS = ("sparse-torch", "auto-torch")  # systems run with SPARSENETS_SPARSE_KERNELS=torch
LR, MOMENTUM = 0.01, 0.9


def hidden_names(sizes) -> list[str]:
    """Parameter names of the sparse (hidden) layers in ``nn.Sequential(Linear, ReLU, ...)``."""
    return [f"{2 * i}.weight" for i in range(len(sizes) - 2)]


def dense_mlp(sizes) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def initialised_mlp(sizes, init: dict[str, torch.Tensor]) -> nn.Sequential:
    """A dense MLP of ``sizes`` holding the values of ``init`` (hidden weights zero off the mask)."""
    model = dense_mlp(sizes)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(init[name])
    return model


def make_init(sizes, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Masks (exact count per hidden layer) and initial values shared by every system.

    Hidden weights are uniform in ±1/sqrt(fan_in · density) (Kaiming-uniform for the live fan-in,
    as sparselab initialises; plain ±1/sqrt(fan_in) would shrink the signal 10x per layer at
    99%), zero outside the mask; biases and the dense output layer as ``nn.Linear``.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = dense_mlp(sizes)
    tensors: dict[str, torch.Tensor] = {}
    density = 1.0 - sparsity
    for name in hidden_names(sizes):
        weight = dict(model.named_parameters())[name]
        out_f, in_f = weight.shape
        count = round(density * weight.numel())
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[torch.randperm(weight.numel(), generator=gen)[:count]] = True
        mask = mask.view(out_f, in_f)
        bound = 1.0 / (in_f * density) ** 0.5
        values = (torch.rand(out_f, in_f, generator=gen) * 2 - 1) * bound
        values[values == 0] = bound / 2  # every stored value nonzero (sparselab drops zeros)
        tensors[name] = values * mask
        tensors[name.replace("weight", "mask")] = mask
    for name, param in model.named_parameters():
        tensors.setdefault(name, param.detach().clone())
    return tensors


class _PlainCSRFunction(torch.autograd.Function):
    """``y = x Wᵀ + b`` on torch CSR tensors: forward ``addmm``, grad-input through a CSR of
    ``Wᵀ`` built once, grad-values by ``sampled_addmm`` at the nonzeros, outputs row-major."""

    @staticmethod
    def forward(ctx, x, values, bias, crow, col, t_crow, t_col, perm, shape):
        weight = torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)
        ctx.save_for_backward(x, values, crow, col, t_crow, t_col, perm)
        ctx.shape = shape
        return torch.addmm(bias.unsqueeze(1), weight, x.t()).t().contiguous()

    @staticmethod
    def backward(ctx, grad):
        x, values, crow, col, t_crow, t_col, perm = ctx.saved_tensors
        out_f, in_f = ctx.shape
        weight_t = torch.sparse_csr_tensor(
            t_crow, t_col, values[perm], (in_f, out_f), check_invariants=False
        )
        grad_x = torch.sparse.mm(weight_t, grad.t()).t().contiguous()
        pattern = torch.sparse_csr_tensor(crow, col, values, ctx.shape, check_invariants=False)
        grad_values = torch.sparse.sampled_addmm(pattern, grad.t(), x, beta=0.0).values()
        return grad_x, grad_values, grad.sum(0), None, None, None, None, None, None


class PlainCSRLinear(nn.Module):
    """A static-mask sparse linear layer on torch's CSR kernels (MKL on CPU), about what a user
    writes without a sparse library: values trainable, the CSR of ``W`` and ``Wᵀ`` fixed."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        csr = (weight * mask).to_sparse_csr()
        self.shape = tuple(weight.shape)
        self.register_buffer("crow", csr.crow_indices())
        self.register_buffer("col", csr.col_indices())
        order = torch.arange(mask.sum().item(), dtype=torch.float64)
        index = torch.zeros(weight.shape, dtype=torch.float64)
        index[mask] = order  # position of each nonzero in row-major order, read in Wᵀ's order
        t_csr = (index + 1).t().contiguous().mul(mask.t()).to_sparse_csr()
        self.register_buffer("t_crow", t_csr.crow_indices())
        self.register_buffer("t_col", t_csr.col_indices())
        self.register_buffer("perm", (t_csr.values() - 1).long())
        self.values = nn.Parameter(weight[mask].clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x):
        return _PlainCSRFunction.apply(
            x, self.values, self.bias, self.crow, self.col, self.t_crow, self.t_col, self.perm, self.shape
        )


def build_system(system: str, sizes, init: dict[str, torch.Tensor], total_steps: int, batch: int):
    """``(model, optimizer, after_step, info)``: a fresh model holding ``init``; ``info`` holds
    the backend of each hidden layer (and, for ``auto``, the timings it chose on)."""
    names = hidden_names(sizes)
    if system == "torch-csr":
        import warnings

        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        model = initialised_mlp(sizes, init)
        for name in names:
            index = int(name.split(".")[0])
            model[index] = PlainCSRLinear(
                init[name], init[name.replace("weight", "mask")], init[name.replace("weight", "bias")]
            )
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        return model, optimizer, optimizer.step, {}
    if system == "sparselab":
        import numpy as np
        import sparselab
        from sparselab import layout

        model = initialised_mlp(sizes, init)
        for name in names:
            index = int(name.split(".")[0])
            dense = model[index]
            layer = sparselab.SparseLinear(
                dense.in_features, dense.out_features, bias=True, sparsity=0.5
            )
            layer._csr = layout.from_dense(init[name], padding_ratio=layer.padding_ratio)
            layer._values = nn.Parameter(torch.from_numpy(np.asarray(layer._csr.values)))
            with torch.no_grad():
                layer.bias.copy_(init[name.replace("weight", "bias")])
            if layer.nnz != int(init[name.replace("weight", "mask")].sum()):
                raise RuntimeError(f"sparselab layer {name}: nnz {layer.nnz} differs from the mask")
            model[index] = layer
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        algorithm = sparselab.Static(sparsity=0.5)
        model.apply(algorithm)

        def after_step():
            optimizer.step()
            algorithm.step()

        return model, optimizer, after_step, {}

    from sparsenets import DynamicSparsity

    model = initialised_mlp(sizes, init)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    masks = {n: init[n.replace("weight", "mask")] for n in names}
    density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    sparsifier = DynamicSparsity(
        model,
        optimizer,
        density=density,
        total_steps=total_steps,
        method="static",
        distribution="uniform",
        dense_last=True,
        masks=masks,
        backend=system.split("-")[0],
        auto_batch_size=batch,
    )
    if system != "masked":
        from sparsenets.sparse import SparseLinear, kernels

        kernels.library()  # load (or build) the native kernels before anything is measured
        if system.startswith("sparse") and not all(
            isinstance(model[int(n.split(".")[0])], SparseLinear) for n in names
        ):
            raise RuntimeError("backend='sparse' did not convert the hidden layers")
    if system == "sparse":
        from sparsenets.sparse import fuse_relu

        fuse_relu(model)
    info = {"backends": dict(sparsifier.backends)}
    if sparsifier.backend_timings:
        info["auto_ms"] = {
            name: {backend: 1e3 * seconds for backend, seconds in t.items()}
            for name, t in sparsifier.backend_timings.items()
        }
    return model, optimizer, sparsifier.step, info


def train_step(model, optimizer, after_step, x, y) -> None:
    """One training step, the unit every system is timed on: zero_grad, forward, cross-entropy,
    backward, then ``after_step`` (SGD with momentum and the sparsity object's step)."""
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    after_step()
