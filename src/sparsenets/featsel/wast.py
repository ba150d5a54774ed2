"""WAST (Sokar et al., 2022, "Where to pay attention in sparse training for feature selection?")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.nn import functional as F

from ..dst import DropAndGrow, MethodState
from ..errors import check_fraction
from .base import SparseNetSelector
from .networks import Autoencoder, input_strength, output_strength


@dataclass
class NeuronImportanceState(MethodState):
    """Importance of the neurons each sparse layer joins: ``inputs[layer]`` ``(n_in,)`` and
    ``outputs[layer]`` ``(n_out,)``; a layer or side left out counts as all ones. Whoever
    drives the training fills them (checkpointed as ``importance_inputs/<layer>`` …)."""

    prefix: ClassVar[str] = "importance_"
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class NeuronImportanceDST(DropAndGrow):
    """Drop-and-grow guided by neuron importance (WAST's topology update).

    The importance of a connection is the product of the importances of the two neurons it
    joins, ``c_ij = I_out[i] · I_in[j]``. Drops the active weights with the lowest ``|w|·c``
    (per sign side when ``sign_sided``, as the reference does) and grows the inactive positions
    with the highest ``c``; ties (e.g. the equally important hidden neurons) are broken at random.
    The importances live in the method state (:class:`NeuronImportanceState`).
    """

    name: ClassVar[str] = "neuron_importance"

    def make_state(self, ctx) -> NeuronImportanceState:
        return NeuronImportanceState()

    def connection_importance(self, ctx, name: str) -> torch.Tensor:
        """``(out, in)`` importance of every position of layer ``name``."""
        inputs = self._importance(ctx, name, "inputs", 1)
        outputs = self._importance(ctx, name, "outputs", 0)
        return outputs[:, None] * inputs[None, :]

    def drop_score(self, ctx, name):
        n_in = ctx.masks.shapes[name][1]
        index = ctx.masks.index(name)
        importance = self._importance(ctx, name, "outputs", 0)[index // n_in] * self._importance(
            ctx, name, "inputs", 1
        )[index % n_in]
        return ctx.active_weight(name).abs().float() * importance

    @staticmethod
    def _importance(ctx, name: str, side: str, dim: int) -> torch.Tensor:
        """``(n,)`` float32 importance of one side's neurons of layer ``name`` (ones if unset)."""
        stored = getattr(ctx.state, side).get(name)
        if stored is None:
            return torch.ones(ctx.masks.shapes[name][dim], device=ctx.device)
        return stored.to(ctx.device).float()

    def grow_score(self, ctx, name, gen, n_grow):
        return self.connection_importance(ctx, name)


class WAST(SparseNetSelector):
    """Unsupervised feature selection that learns where to pay attention (WAST).

    A sparse denoising autoencoder (``x + noise·N(0,1) → sigmoid → linear``, MSE against the
    clean ``x``; uniform ``density`` per layer) whose topology changes after *every batch*, driven
    by neuron importances. After each optimizer step, with ``e = mean over the batch of |x − x̂|``
    ``(n_in,)`` and λ = ``importance_weight``::

        I_in  += λ·e + (1 − λ)·strength of the input neurons   (Σ|W₁| over each column)
        I_out += λ·e + (1 − λ)·strength of the output neurons  (Σ|W₂| over each row)

    while the hidden neurons all count 1. Then, in both layers (:class:`NeuronImportanceDST`),
    the share ``drop_fraction`` of the positive and of the negative weights with the lowest
    ``|w|·I_out[i]·I_in[j]`` is dropped and as many connections are grown where
    ``I_out[i]·I_in[j]`` is highest, at zero. A feature's score is its accumulated ``I_in``.

    This follows the reference ``GhadaSokar/WAST`` (``dst.py``, ``main.py``): the importance is
    accumulated without decay (``I += …``), the update runs after the importance of the same batch
    is added, the noise is drawn anew for every batch; defaults: 200 hidden units, density 0.2,
    drop fraction 0.3, λ = 0.9, Nesterov SGD lr 0.1 with momentum 0.9 and no weight decay, batch
    128, 10 epochs. Its hidden layer has no dropout.

    Args:
        n_features_to_select: K: an integer, a fraction in (0, 1), or None (half).
        hidden, density, drop_fraction, importance_weight, noise: see above.
        epochs, batch_size, learning_rate, momentum, weight_decay: the training.
        standardize: ``"global"`` (default; the reference normalizes Madelon with one mean and
            one standard deviation), ``"feature"`` or ``"none"``.
        backend, device, random_state, verbose: see :class:`QuickSelection`.
    """

    supervised = False

    def __init__(
        self,
        n_features_to_select=None,
        *,
        hidden=200,
        density=0.2,
        drop_fraction=0.3,
        importance_weight=0.9,
        noise=0.2,
        epochs=10,
        batch_size=128,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0,
        standardize="global",
        backend="auto",
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_features_to_select = n_features_to_select
        self.hidden = hidden
        self.density = density
        self.drop_fraction = drop_fraction
        self.importance_weight = importance_weight
        self.noise = noise
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
        density = check_fraction(self.density, "density", include_zero=False, include_one=False)
        lam = check_fraction(self.importance_weight, "importance_weight", include_zero=True, include_one=True)
        model = Autoencoder(d, self.hidden).to(x.device)
        optimizer = self._sgd(model, nesterov=self.momentum > 0)
        _, total = self._steps(n)
        method = NeuronImportanceDST(
            update_every=1, end_fraction=1.0, drop_fraction=self.drop_fraction,
            drop_schedule="constant", sign_sided=True,
        )
        densities = {"encoder.weight": density, "decoder.weight": density}
        sparsifier = self._sparsify(model, optimizer, densities, method, total, seed)
        importance_in = torch.zeros(d, device=x.device)
        importance_out = torch.zeros(d, device=x.device)
        sparsifier.state.inputs["encoder.weight"] = importance_in
        sparsifier.state.outputs["decoder.weight"] = importance_out
        gen = torch.Generator(device=x.device).manual_seed(seed + 2)

        def loss_of(index):
            clean = x[index]
            noisy = clean + self.noise * torch.randn(clean.shape, generator=gen, device=x.device)
            output = model(noisy)
            return F.mse_loss(output, clean), (output.detach() - clean).abs().mean(0)

        def accumulate(index, error):
            importance_in.add_(lam * error + (1 - lam) * input_strength(model.encoder))
            importance_out.add_(lam * error + (1 - lam) * output_strength(model.decoder))

        self._train(model, optimizer, sparsifier, x, loss_of, seed, after_optimizer=accumulate)
        self.model_ = model
        return importance_in.clone()
