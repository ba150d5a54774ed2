"""QuickSelection (Atashgahi et al., 2022): input-neuron strength of a sparse denoising autoencoder."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..dst import SET
from ..errors import SparsenetsError, check_fraction
from .base import SparseNetSelector, er_density, evolve_between_epochs
from .networks import Autoencoder, input_strength


class QuickSelection(SparseNetSelector):
    """Unsupervised feature selection by the strength of the input neurons of a sparse
    denoising autoencoder trained with SET.

    The network is ``x̃ → sigmoid(W₁ x̃) → dropout → W₂ h`` (linear output, MSE against the clean
    ``x``), both layers at Erdős–Rényi density ε(n_in + n_out)/(n_in·n_out). After every epoch
    but the last, SET drops the share ``drop_fraction`` of each layer's positive weights closest
    to zero and as many of its negative ones (``sign_sided``), and regrows as many at random
    positions with values from N(0, 0.1²) (the reference's N(0, 1)/10). The noisy input
    ``x̃ = x + noise·N(0, 1)`` is drawn once before training. A feature's score is the strength of
    its input neuron, Σ|w| over its connections, read after the last epoch (no update follows
    it, so freshly grown weights never count).

    Defaults are those of the reference code (``zahraatashgahi/QuickSelection``): 1000 hidden
    units, ε = 13, ζ = 0.2, dropout 0.2, noise 0.2, SGD lr 0.01, momentum 0.9, weight decay 1e-5,
    batch 100; 10 epochs ("QuickSelection₁₀").

    Args:
        n_features_to_select: K: an integer, a fraction in (0, 1), or None (half).
        hidden: hidden units.
        epsilon: ER ε of both layers.
        density: a density in (0, 1] for both layers instead of ε (1.0: a dense autoencoder,
            the usual dense baseline, strength-ranked the same way).
        drop_fraction: ζ, the share of each sign side dropped per update.
        dropout: dropout on the hidden code.
        noise: standard deviation of the input noise.
        epochs, batch_size, learning_rate, momentum, weight_decay: the SGD training.
        standardize: ``"global"`` (default: one mean and standard deviation for all of X, so
            the features keep their relative variances, which unsupervised selection reads),
            ``"feature"`` (every column to zero mean and unit variance) or ``"none"``.
        backend: ``"auto"`` (per layer, the faster of masked and CSR by timing), ``"masked"`` or
            ``"sparse"`` (CSR layers: the memory and time win on wide data).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        random_state: seed (int), ``numpy.random.RandomState`` or None.
        verbose: show a progress bar over epochs.
    """

    supervised = False

    def __init__(
        self,
        n_features_to_select=None,
        *,
        hidden=1000,
        epsilon=13.0,
        density=None,
        drop_fraction=0.2,
        dropout=0.2,
        noise=0.2,
        epochs=10,
        batch_size=100,
        learning_rate=0.01,
        momentum=0.9,
        weight_decay=1e-5,
        standardize="global",
        backend="auto",
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.n_features_to_select = n_features_to_select
        self.hidden = hidden
        self.epsilon = epsilon
        self.density = density
        self.drop_fraction = drop_fraction
        self.dropout = dropout
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

    def _layer_densities(self, n_in: int) -> dict[str, float]:
        if self.density is not None:
            density = check_fraction(self.density, "density", include_zero=False, include_one=True)
            return {"encoder.weight": density, "decoder.weight": density}
        if not self.epsilon > 0:
            raise SparsenetsError(f"epsilon must be positive, got {self.epsilon!r}")
        d = er_density(n_in, self.hidden, self.epsilon)
        return {"encoder.weight": d, "decoder.weight": d}

    def _fit_scores(self, x, y, k, seed):
        n, d = x.shape
        check_fraction(self.dropout, "dropout", include_zero=True, include_one=False)
        model = Autoencoder(d, self.hidden, self.dropout).to(x.device)
        optimizer = self._sgd(model)
        per_epoch, total = self._steps(n)
        method = SET(
            update_every=per_epoch, end_fraction=evolve_between_epochs(self.epochs),
            drop_fraction=self.drop_fraction, drop_schedule="constant", sign_sided=True,
            regrow_init="normal", regrow_std=0.1,
        )
        sparsifier = self._sparsify(model, optimizer, self._layer_densities(d), method, total, seed)
        noisy = torch.randn(x.shape, device=x.device).mul_(self.noise).add_(x)

        def loss_of(index):
            return F.mse_loss(model(noisy[index]), x[index]), None

        self._train(model, optimizer, sparsifier, x, loss_of, seed)
        self.model_ = model
        return input_strength(model.encoder)
