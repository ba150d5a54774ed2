"""What every sparse-network feature selector shares: input checks, the K rule, the seeded
training loop around :class:`~sparsenets.DynamicSparsity`, and the scikit-learn plumbing.

A selector subclasses :class:`SparseNetSelector` and implements :meth:`_fit_scores`, which
trains its network on the standardized data and returns one importance score per feature;
:meth:`fit` validates the input, seeds everything from ``random_state`` and keeps the
``n_features_to_select`` highest scores as the support.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.feature_selection import SelectorMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn
from tqdm.auto import tqdm

from ..dst import DynamicSparsity, Method
from ..errors import SparsenetsError
from ..training import resolve_device

BACKENDS = ("auto", "masked", "sparse")


def er_density(n_in: int, n_out: int, epsilon: float) -> float:
    """Erdős–Rényi density ε(n_in + n_out)/(n_in · n_out) of a layer, capped at 1."""
    return min(1.0, epsilon * (n_in + n_out) / (n_in * n_out))


def features_to_select(value: int | float | None, n_features: int) -> int:
    """The number K of features kept for ``n_features_to_select=value``.

    ``None`` keeps half (at least one); an integer must lie in [1, n_features]; a float in
    (0, 1) is that fraction of the features (at least one).
    """
    if value is None:
        return max(1, n_features // 2)
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise SparsenetsError(f"n_features_to_select must be an integer or a fraction, got {value!r}")
    if isinstance(value, int | np.integer):
        if not 1 <= value <= n_features:
            raise SparsenetsError(
                f"n_features_to_select={value} is not in [1, {n_features}] "
                f"(X has {n_features} features)"
            )
        return int(value)
    if not 0.0 < value < 1.0:
        raise SparsenetsError(
            f"n_features_to_select={value} as a fraction must be in (0, 1); "
            f"give an integer in [1, {n_features}] for a count"
        )
    return max(1, round(value * n_features))


def _check_frame_columns(X: Any) -> None:
    """One-line error for a pandas DataFrame with non-numeric columns."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or not hasattr(dtypes, "items"):
        return
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    bad = [str(col) for col, dtype in dtypes.items() if not (is_numeric_dtype(dtype) or is_bool_dtype(dtype))]
    if bad:
        shown = ", ".join(repr(c) for c in bad[:5]) + (" …" if len(bad) > 5 else "")
        raise SparsenetsError(
            f"X has non-numeric columns {shown}; encode them as numbers "
            f"(e.g. sklearn's OneHotEncoder) or drop them"
        )


class SparseNetSelector(SelectorMixin, BaseEstimator):
    """Base of the sparse-network selectors (not used directly).

    Subclasses set :attr:`supervised` and implement :meth:`_fit_scores`.

    Attributes (after ``fit``):
        scores_: ``(n_features,)`` float64 importance of each feature (higher = more important).
        support_: ``(n_features,)`` bool, the ``n_features_selected_`` highest scores.
        n_features_selected_: K, the number of features kept.
        n_features_in_, feature_names_in_: as for every scikit-learn estimator.
        classes_: the labels seen (supervised selectors).
        sparsifier_: the :class:`~sparsenets.DynamicSparsity` that trained the network (None for
            a dense network).
        history_: per-epoch training loss.
        fit_seconds_: wall time of the training.
    """

    supervised: ClassVar[bool] = False

    # -- scikit-learn plumbing ---------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self.supervised
        tags.input_tags.allow_nan = False
        return tags

    def _get_support_mask(self) -> np.ndarray:
        check_is_fitted(self, "support_")
        return self.support_

    def fit(self, X: Any, y: Any = None) -> SparseNetSelector:
        """Train the selector's sparse network on ``X`` (and ``y``) and keep the K best features.

        Args:
            X: ``(n_samples, n_features)`` numbers: a NumPy array, a pandas DataFrame (its
                column names are kept) or anything ``numpy.asarray`` takes.
            y: ``(n_samples,)`` class labels; required by supervised selectors, ignored otherwise.

        Returns:
            self.
        """
        x, labels = self._validate_input(X, y)
        k = features_to_select(self.n_features_to_select, x.shape[1])
        device = resolve_device(self.device)
        self._check_common_params()
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        started = time.perf_counter()
        fork = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed)
            data = scale(torch.from_numpy(np.array(x, dtype=np.float32)), self.standardize)
            data = data.to(device)
            target = None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
            self.history_: list[float] = []
            self.sparsifier_ = None
            scores = self._fit_scores(data, target, k, seed)
        self.fit_seconds_ = time.perf_counter() - started
        scores = np.nan_to_num(scores.detach().double().cpu().numpy(), nan=-np.inf)
        order = np.argsort(-scores, kind="stable")
        support = np.zeros(x.shape[1], dtype=bool)
        support[order[:k]] = True
        self.scores_, self.support_, self.n_features_selected_ = scores, support, k
        return self

    def _validate_input(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray | None]:
        shape = getattr(X, "shape", None)
        flat_list = isinstance(X, list | tuple) and len(X) > 0 and np.isscalar(X[0])
        if (shape is not None and len(shape) == 1) or flat_list:
            raise SparsenetsError(
                f"X must be 2-D (n_samples, n_features), got a 1-D array of length {len(X)}; "
                f"use X.reshape(-1, 1) for a single feature or X.reshape(1, -1) for a single sample"
            )
        _check_frame_columns(X)
        try:
            if self.supervised:
                if y is None:
                    raise SparsenetsError(
                        f"{type(self).__name__} requires y to be passed, but the target y is None "
                        f"(it is supervised: fit(X, y) with the class labels)"
                    )
                x, y = validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
            else:
                x = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        except SparsenetsError:
            raise
        except ValueError as error:  # scikit-learn's messages, made one line
            raise SparsenetsError(" ".join(str(error).split())) from None
        if not self.supervised:
            return x, None
        try:
            check_classification_targets(y)
        except ValueError as error:
            raise SparsenetsError(
                f"{' '.join(str(error).split())}; {type(self).__name__} needs class labels"
            ) from None
        encoder = LabelEncoder().fit(y)
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise SparsenetsError(
                f"y holds a single class ({self.classes_[0].tolist()!r}); {type(self).__name__} is "
                f"supervised and needs at least 2 classes"
            )
        return x, encoder.transform(y)

    def _check_common_params(self) -> None:
        if self.backend not in BACKENDS:
            raise SparsenetsError(f"unknown backend {self.backend!r} (valid: {', '.join(BACKENDS)})")
        for name in ("epochs", "batch_size", "hidden", "n_layers"):
            if not hasattr(self, name):
                continue
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise SparsenetsError(f"{name} must be a positive integer, got {value!r}")
        lr = self.learning_rate
        if not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
            raise SparsenetsError(f"learning_rate must be a positive finite number, got {lr!r}")

    # -- what subclasses implement -----------------------------------------------------------
    def _fit_scores(
        self, x: torch.Tensor, y: torch.Tensor | None, k: int, seed: int
    ) -> torch.Tensor:
        """Train on standardized ``x`` ``(n, d)`` (and labels ``y`` ``(n,)``); return ``(d,)``."""
        raise NotImplementedError

    # -- shared helpers ----------------------------------------------------------------------
    def _sparsify(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        densities: Mapping[str, float],
        method: Method,
        total_steps: int,
        seed: int,
    ) -> DynamicSparsity | None:
        """A :class:`DynamicSparsity` over the named weights at these densities (None when every
        density is 1: the network stays dense).

        The sparse weights, drawn by PyTorch for the dense fan-in, are first scaled by
        1/√density, so that each neuron's input keeps the variance it has in a dense layer
        (the sparsity-aware initialization of Evci et al., 2022); without it a deep sparse MLP
        at a few percent density starts with vanishing activations and barely trains.
        """
        sparse = {name: d for name, d in densities.items() if d < 1.0}
        if not sparse:
            return None
        shapes = dict(model.named_parameters())
        with torch.no_grad():
            for name, d in sparse.items():
                shapes[name].mul_(d ** -0.5)
        total = sum(shapes[n].numel() for n in sparse)
        density = sum(d * shapes[n].numel() for n, d in sparse.items()) / total
        sparsifier = DynamicSparsity(
            model, optimizer, density=density, distribution=dict(sparse), total_steps=total_steps,
            method=method, seed=seed, include=list(sparse), backend=self.backend,
            auto_batch_size=self.batch_size,
        )
        self.sparsifier_ = sparsifier
        return sparsifier

    def _epochs(self, n: int, seed: int) -> Iterator[tuple[int, Iterator[torch.Tensor]]]:
        """``(epoch, batches of sample indices)`` for each epoch, shuffled from ``seed``."""
        gen = torch.Generator().manual_seed(seed + 1)
        bar = tqdm(range(self.epochs), desc=type(self).__name__, disable=not self.verbose, leave=False)
        for epoch in bar:
            order = torch.randperm(n, generator=gen)
            yield epoch, iter(order.split(self.batch_size))
            if self.history_:
                bar.set_postfix(loss=f"{self.history_[-1]:.4g}")

    def _train(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        sparsifier: DynamicSparsity | None,
        x: torch.Tensor,
        loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, Any]],
        seed: int,
        after_optimizer: Callable[[torch.Tensor, Any], None] | None = None,
    ) -> None:
        """The mini-batch loop over shuffled sample indices.

        For each batch: ``loss, extra = loss_of(index)``, backward, the optimizer step, then
        ``after_optimizer(index, extra)`` — after the weights moved and before the sparsifier
        counts the step and (when due) updates the topology.
        """
        model.train()
        for epoch, batches in self._epochs(x.shape[0], seed):
            total, count = 0.0, 0
            for index in batches:
                index = index.to(x.device)
                optimizer.zero_grad(set_to_none=True)
                loss, extra = loss_of(index)
                if not torch.isfinite(loss):
                    raise SparsenetsError(
                        f"{type(self).__name__}: the training loss became {float(loss.detach())} in epoch "
                        f"{epoch + 1}; lower learning_rate (now {self.learning_rate})"
                    )
                loss.backward()
                if sparsifier is not None:
                    sparsifier.before_optimizer_step()
                optimizer.step()
                if after_optimizer is not None:
                    after_optimizer(index, extra)
                if sparsifier is not None:
                    sparsifier.after_optimizer_step()
                total += float(loss.detach()) * len(index)
                count += len(index)
            self.history_.append(total / count)
        model.eval()

    def _sgd(self, model: nn.Module, *, nesterov: bool = False) -> torch.optim.SGD:
        """SGD over the model with the selector's learning rate, momentum and weight decay."""
        return torch.optim.SGD(
            model.parameters(), lr=self.learning_rate, momentum=self.momentum,
            weight_decay=self.weight_decay, nesterov=nesterov,
        )

    def _steps(self, n: int) -> tuple[int, int]:
        """``(steps per epoch, total steps)`` for ``n`` training samples."""
        per_epoch = math.ceil(n / self.batch_size)
        return per_epoch, per_epoch * self.epochs


def evolve_between_epochs(epochs: int) -> float:
    """``end_fraction`` that makes per-epoch topology updates happen after epochs 1 … E−1 and
    not after the last one (the scores are read from a topology that has trained since)."""
    return (epochs - 0.5) / epochs


SCALINGS = ("feature", "global", "none")


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per column (constant columns are only centred), in place. ``(n, d)``."""
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    return x.sub_(mean).div_(torch.where(std > 0, std, torch.ones_like(std)))


def scale(x: torch.Tensor, how: str | bool | None) -> torch.Tensor:
    """``x`` ``(n, d)`` scaled as the ``standardize`` parameter says (``"global"`` in place).

    ``"feature"`` (or True): every column to zero mean and unit variance. ``"global"``: one mean
    and one standard deviation for the whole matrix, so the features keep their relative
    variances — what unsupervised selectors need, since a feature's variance is part of what
    makes it informative (the WAST reference normalizes Madelon this way). ``"none"`` (or
    False/None): as given.
    """
    if how is True or how == "feature":
        return standardize(x)
    if how == "global":  # in place: X may be large
        std = float(x.std(unbiased=False))
        return x.sub_(x.mean()).div_(std if std > 0 else 1.0)
    if how is False or how is None or how == "none":
        return x
    raise SparsenetsError(f"unknown standardize {how!r} (valid: {', '.join(SCALINGS)}, True, False)")
