"""NeuroFS (Atashgahi et al., 2023): supervised selection by gradually pruning input neurons."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.nn import functional as F

from ..dst import DropAndGrow, MethodState
from ..dst.base import drop_count
from ..errors import SparsenetsError, check_fraction
from ..index_sets import dense_blocks
from ..rng import Stream
from ..scores import sign_sided_rank
from ..select import select_bottomk, select_topk
from .base import SparseNetSelector, er_density, evolve_between_epochs
from .networks import MLP, input_strength


@dataclass
class InputNeuronState(MethodState):
    """Per input layer: ``protection`` ``(n_in,)``, how many updates each input neuron has been
    kept (0: just added, protected from removal for one update), and ``removed``, the number of
    input neurons removed so far (0-d)."""

    prefix: ClassVar[str] = "neurofs_"
    protection: dict[str, torch.Tensor] = field(default_factory=dict)
    removed: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class NeuroFSTopology(DropAndGrow):
    """NeuroFS's topology update, once per epoch (``update_every`` = steps per epoch).

    Hidden layers: SET — sign-sided drop of ``drop_fraction``, random regrowth. Layers in
    ``static_layers`` never change (the reference keeps the classifier head fixed). The input
    layer ``input_layer`` (weight ``(hidden, n_in)``), from update ``warmup`` on:

    1. The number of removed input neurons grows towards ``n_in − n_keep``, reached at update
       ``⌊remove_end · E⌋`` (E = the epochs): each update removes
       ``⌈(to_remove − removed) / (end − e)⌉`` more.
    2. Besides, ``⌊removed · input_drop_fraction · (1 − e/E)⌋`` neurons are swapped: that many
       more of the weakest are removed and as many inactive neurons are added back, those with
       the largest |∂L/∂w| over their column of the dense gradient.
    3. Neurons added at the previous update are protected from removal for this one.
    4. Among the kept neurons, ``input_drop_fraction`` of the weights are dropped (per sign
       side), then connections are grown by |∂L/∂w| within the columns of the kept and added
       neurons until the layer holds its initial count again (fewer if those columns are full).

    Weakness is the neuron strength Σ|w| over its connections. Before update ``warmup`` the
    input layer evolves like the others but grows by gradient, and every input neuron counts as
    mature after it. Grown weights start at zero.

    The reference (``zahraatashgahi/NeuroFS``) takes the gradient of the network's summed
    softmax output over the whole training set; here it is the gradient of the training loss on
    the last batch before the update (the one the sparsifier captures).
    """

    name: ClassVar[str] = "neurofs"
    needs_dense_grad: ClassVar[bool] = True
    input_layer: str = "layers.0.weight"
    n_keep: int = 1
    remove_end: float = 0.65
    input_drop_fraction: float = 0.2
    warmup: int = 2
    static_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.remove_end, "remove_end", include_zero=False, include_one=True)
        check_fraction(self.input_drop_fraction, "input_drop_fraction", include_zero=True, include_one=False)
        if self.n_keep < 1:
            raise SparsenetsError(f"n_keep must be a positive integer, got {self.n_keep}")

    def make_state(self, ctx) -> InputNeuronState:
        n_in = ctx.masks.shapes[self.input_layer][1]
        return InputNeuronState(
            protection={self.input_layer: torch.zeros(n_in, device=ctx.device)},
            removed={self.input_layer: torch.zeros((), dtype=torch.long, device=ctx.device)},
        )

    def update(self, ctx, step):
        epoch = step // self.update_every - 1  # 0-based epoch just trained
        epochs = max(ctx.total_steps // self.update_every, 1)
        new_masks = {}
        for name in ctx.masks:
            if name in self.static_layers:
                continue
            if name == self.input_layer and epoch >= self.warmup:
                new_masks[name] = self._input_update(ctx, step, epoch, epochs)
                continue
            if name == self.input_layer:  # warm-up: every input neuron matures
                ctx.state.protection[name] += 1
            fraction = self.input_drop_fraction if name == self.input_layer else self.drop_fraction
            nnz = ctx.masks.nnz(name)
            n = drop_count(fraction, nnz, ctx.masks.numel(name) - nnz)
            new_masks[name] = self.layer_update(ctx, step, name, n, n)
        return new_masks

    def grows_randomly(self, name: str) -> bool:
        """Hidden layers grow at random (SET); the input layer by |∂L/∂w|."""
        return name != self.input_layer

    def grow_blocks(self, ctx, name, gen, n_grow):
        return dense_blocks(ctx.dense_grad(name).abs())

    def _input_update(self, ctx, step: int, epoch: int, epochs: int) -> torch.Tensor:
        name = self.input_layer
        gen = ctx.generator(step, name, Stream.DROP)
        mask = ctx.masks[name].clone()  # (hidden, n_in)
        weight = ctx.weight(name)
        grad = ctx.dense_grad(name).abs()
        n_in = mask.shape[1]
        strength = (weight.abs() * mask).sum(0).float()
        active = mask.any(0)
        protection = ctx.state.protection[name]
        removed = int(ctx.state.removed[name])
        to_remove = n_in - self.n_keep
        remove_end = max(int(self.remove_end * epochs), 1)

        n_swap = int(removed * self.input_drop_fraction * (1 - epoch / epochs))
        n_now = 0 if removed >= to_remove else math.ceil((to_remove - removed) / max(remove_end - epoch, 1))
        n_now = min(n_now, to_remove - removed)
        removed += n_now
        n_keep_now = max(n_in - removed - n_swap, 0)
        by_strength = select_topk(strength, n_keep_now, active, generator=gen)
        if removed >= to_remove:
            keep = by_strength
        else:
            immature = active & (protection < 1)
            mature = active & ~immature
            kept_mature = by_strength & mature
            n_remove_final = int(mature.sum()) - int(kept_mature.sum())
            protection[immature] += 1
            protection[kept_mature] += 1
            keep = kept_mature | immature
            if n_remove_final < n_now + n_swap:  # protection left fewer to remove
                n_swap = n_remove_final - n_now
                if n_swap < 0:
                    removed += n_remove_final - n_now
                    n_swap = 0
        remove = active & ~keep
        mask[:, remove] = False
        protection[remove] = 0

        nnz = int(mask.sum())
        n_drop = drop_count(self.input_drop_fraction, nnz, mask.numel() - nnz)
        drop_score = sign_sided_rank(weight.abs(), weight, mask)
        mask &= ~select_bottomk(drop_score, n_drop, mask, generator=gen)

        added = select_topk(grad.amax(0), n_swap, ~active, generator=gen) if n_swap > 0 else torch.zeros_like(active)
        columns = keep | added
        eligible = ~mask & columns.unsqueeze(0)
        n_grow = ctx.initial_counts[name] - int(mask.sum())
        mask |= select_topk(grad, n_grow, eligible, generator=ctx.generator(step, name, Stream.GROW))
        ctx.state.removed[name].fill_(removed)
        return mask


class NeuroFS(SparseNetSelector):
    """Supervised feature selection by evolving the input neurons of a sparse MLP (NeuroFS).

    A sparse MLP (``n_layers`` × ``hidden`` tanh units, every layer at ER density with
    ``epsilon``) is trained with cross-entropy while :class:`NeuroFSTopology` gradually removes
    the weakest input neurons until ``n_features_to_select`` remain (at ``remove_end`` of the
    epochs) and swaps some each epoch, re-adding removed ones by gradient magnitude. A feature's
    score is the strength of its input neuron after training (removed ones score 0).

    Defaults follow the paper and the reference code: 3 × 1000 tanh, ε = 30, ζ = 0.2 for the
    input layer and 0.3 for the hidden layers, SGD lr 0.01 with momentum 0.9, removal finished at
    65% of 100 epochs, batch 100; the classifier head keeps its initial sparse topology.

    Args:
        n_features_to_select: K: an integer, a fraction in (0, 1), or None (half).
        hidden, n_layers, epsilon: the network.
        input_drop_fraction, drop_fraction: ζ of the input and the hidden layers.
        remove_end: the fraction of the epochs by which only K input neurons remain.
        epochs, batch_size, learning_rate, momentum, weight_decay: the training.
        standardize: ``"feature"`` (default: every column to zero mean and unit variance),
            ``"global"`` or ``"none"``.
        backend, device, random_state, verbose: see :class:`QuickSelection`.
    """

    supervised = True

    def __init__(
        self,
        n_features_to_select=None,
        *,
        hidden=1000,
        n_layers=3,
        epsilon=30.0,
        input_drop_fraction=0.2,
        drop_fraction=0.3,
        remove_end=0.65,
        epochs=100,
        batch_size=100,
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=1e-5,
        standardize="feature",
        backend="auto",
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_features_to_select = n_features_to_select
        self.hidden = hidden
        self.n_layers = n_layers
        self.epsilon = epsilon
        self.input_drop_fraction = input_drop_fraction
        self.drop_fraction = drop_fraction
        self.remove_end = remove_end
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.backend = backend
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def _fit_scores(self, x, y, k, seed):
        n, d = x.shape
        if not self.epsilon > 0:
            raise SparsenetsError(f"epsilon must be positive, got {self.epsilon!r}")
        model = MLP(d, self.hidden, self.n_layers, len(self.classes_)).to(x.device)
        names = model.weight_names()
        shapes = dict(model.named_parameters())
        densities = {
            name: er_density(shapes[name].shape[1], shapes[name].shape[0], self.epsilon) for name in names
        }
        optimizer = self._sgd(model)
        per_epoch, total = self._steps(n)
        method = NeuroFSTopology(
            update_every=per_epoch, end_fraction=evolve_between_epochs(self.epochs),
            drop_fraction=self.drop_fraction, drop_schedule="constant", sign_sided=True,
            input_layer=names[0], n_keep=k, remove_end=self.remove_end,
            input_drop_fraction=self.input_drop_fraction, static_layers=(names[-1],),
        )
        if densities[names[0]] >= 1.0:  # the input layer must be sparse to evolve
            densities[names[0]] = 1.0 - 1.0 / shapes[names[0]].numel()
        sparsifier = self._sparsify(model, optimizer, densities, method, total, seed)

        def loss_of(index):
            return F.cross_entropy(model(x[index]), y[index]), None

        self._train(model, optimizer, sparsifier, x, loss_of, seed)
        self.model_ = model
        return input_strength(model.layers[0])
