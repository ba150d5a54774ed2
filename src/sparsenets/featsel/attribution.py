"""Neuron attribution (Atashgahi et al., 2023): feature importance = mean |∂output/∂x_j| of a
DST-trained sparse network."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..dst import make_method, method_options
from ..dst.registry import method_class
from ..errors import SparsenetsError, check_fraction, choice_error
from ..sparse import SparseLinear
from .base import SparseNetSelector, er_density
from .networks import MLP, Autoencoder

MODES = ("supervised", "unsupervised")


@torch.no_grad()
def encoder_attribution(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """Σ_k mean_n |∂h_k/∂x_j| of an autoencoder's code ``h = sigmoid(W₁x + b)``, exactly.

    Each ``h_k`` depends on ``x`` through one row of ``W₁``, so the Jacobian entry is
    ``σ'(z_k)·W₁[k, j]`` and the sum is ``mean_n σ'(Z) @ |W₁|`` — no per-sample Jacobian.

    Args:
        x: ``(n, d)`` inputs. Returns ``(d,)``.
    """
    code = model.encode(x)
    slope = (code * (1 - code)).mean(0)  # (hidden,)
    layer = model.encoder
    if isinstance(layer, SparseLinear):  # |W₁|ᵀ slope without a dense matrix
        rows = torch.repeat_interleave(
            torch.arange(layer.out_features, device=x.device), layer.crow_indices.long().diff()
        )
        out = torch.zeros(layer.in_features, device=x.device)
        return out.index_add_(0, layer.col_indices.long(), layer.values.detach().abs() * slope[rows])
    return slope @ layer.weight.detach().abs()


def output_attribution(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Σ_k mean_n |∂f_k(x_n)/∂x_nj| of a network's outputs ``f`` ``(n, K)``, in eval mode.

    One backward pass per output per batch (samples are independent in eval mode, so the
    gradient of ``Σ_n f_k(x_n)`` holds every sample's own row of the Jacobian).

    Args:
        x: ``(n, d)`` inputs. Returns ``(d,)``.
    """
    model.eval()
    total = torch.zeros(x.shape[1], device=x.device)
    for batch in x.split(batch_size):
        batch = batch.detach().requires_grad_(True)
        out = model(batch)
        for k in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, k].sum(), batch, retain_graph=k + 1 < out.shape[1])
            total += grad.abs().sum(0)
    return total / x.shape[0]


class NeuronAttribution(SparseNetSelector):
    """Feature selection by neuron attribution of a sparse network trained with DST.

    ``mode="supervised"`` trains a sparse MLP classifier (cross-entropy) and scores feature
    ``j`` by Σ_k mean_n |∂logit_k/∂x_j|; ``mode="unsupervised"`` trains a sparse denoising
    autoencoder and scores by the attribution of its hidden code, Σ_k mean_n |∂h_k/∂x_j| (the
    reconstruction has as many outputs as inputs, so its full Jacobian is left aside). The
    attribution is averaged over at most ``attribution_samples`` training samples.

    Args:
        n_features_to_select: K: an integer, a fraction in (0, 1), or None (half).
        mode: ``"supervised"`` (needs y) or ``"unsupervised"``.
        method: the DST method (``"set"``, ``"rigl"``, … or a Method object); it evolves once per
            epoch with ``drop_fraction``.
        hidden, n_layers, epsilon, dropout, noise: the network (``n_layers`` tanh layers for the
            classifier; one sigmoid layer and input noise for the autoencoder).
        attribution_samples: samples the attribution is averaged over.
        epochs, batch_size, learning_rate, momentum, weight_decay: the SGD training.
        standardize: ``"feature"`` (default), ``"global"`` or ``"none"``.
        backend, device, random_state, verbose: see :class:`QuickSelection`.
    """

    def __init__(
        self,
        n_features_to_select=None,
        *,
        mode="supervised",
        method="set",
        hidden=1000,
        n_layers=2,
        epsilon=13.0,
        drop_fraction=0.3,
        dropout=0.0,
        noise=0.2,
        attribution_samples=2000,
        epochs=10,
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
        self.mode = mode
        self.method = method
        self.hidden = hidden
        self.n_layers = n_layers
        self.epsilon = epsilon
        self.drop_fraction = drop_fraction
        self.dropout = dropout
        self.noise = noise
        self.attribution_samples = attribution_samples
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

    @property
    def supervised(self) -> bool:  # type: ignore[override]
        if self.mode not in MODES:
            raise choice_error("mode", self.mode, MODES)
        return self.mode == "supervised"

    def _fit_scores(self, x, y, k, seed):
        n, d = x.shape
        check_fraction(self.dropout, "dropout", include_zero=True, include_one=False)
        if not isinstance(self.attribution_samples, int) or self.attribution_samples < 1:
            raise SparsenetsError(
                f"attribution_samples must be a positive integer, got {self.attribution_samples!r}"
            )
        if self.supervised:
            model = MLP(d, self.hidden, self.n_layers, len(self.classes_), self.dropout).to(x.device)
        else:
            model = Autoencoder(d, self.hidden, self.dropout).to(x.device)
        names = [name for name, p in model.named_parameters() if p.dim() == 2]
        shapes = dict(model.named_parameters())
        densities = {
            name: er_density(shapes[name].shape[1], shapes[name].shape[0], self.epsilon) for name in names
        }
        optimizer = self._sgd(model)
        per_epoch, total = self._steps(n)
        method = self.method
        if isinstance(method, str):
            wanted = {"update_every": per_epoch, "drop_fraction": self.drop_fraction, "drop_schedule": "constant"}
            valid = method_options(method_class(method).name)
            method = make_method(method, **{key: v for key, v in wanted.items() if key in valid})
        sparsifier = self._sparsify(model, optimizer, densities, method, total, seed)
        if self.supervised:
            def loss_of(index):
                return F.cross_entropy(model(x[index]), y[index]), None
        else:
            noisy = torch.randn(x.shape, device=x.device).mul_(self.noise).add_(x)

            def loss_of(index):
                return F.mse_loss(model(noisy[index]), x[index]), None

        self._train(model, optimizer, sparsifier, x, loss_of, seed)
        self.model_ = model
        gen = torch.Generator().manual_seed(seed + 3)
        sample = torch.randperm(n, generator=gen)[: self.attribution_samples].to(x.device)
        if self.supervised:
            return output_attribution(model, x[sample])
        return encoder_attribution(model, x[sample])
