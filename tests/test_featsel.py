"""Feature selectors: scikit-learn contract, determinism, the methods' own rules, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.datasets import load_digits, make_classification
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from sparsenets import DynamicSparsity
from sparsenets.errors import SparsenetsError
from sparsenets.featsel import (
    MLP,
    WAST,
    Autoencoder,
    NeuroFS,
    NeuronAttribution,
    QuickSelection,
    encoder_attribution,
    features_to_select,
    input_strength,
    output_attribution,
    output_strength,
)
from sparsenets.featsel.base import scale
from sparsenets.scores import sign_sided_rank
from sparsenets.select import select_bottomk
from sparsenets.sparse import SparseLinear

SMALL = {"backend": "masked", "device": "cpu", "random_state": 0}


def small_selectors():
    return [
        QuickSelection(hidden=8, epochs=2, **SMALL),
        WAST(hidden=8, epochs=1, **SMALL),
        NeuroFS(hidden=8, n_layers=2, epochs=3, **SMALL),
        NeuronAttribution(hidden=8, epochs=2, **SMALL),
        NeuronAttribution(mode="unsupervised", hidden=8, epochs=2, **SMALL),
    ]


@parametrize_with_checks(small_selectors())
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return x[:600], y[:600]


def madelon_like(seed=0, n=600):
    """Informative + redundant columns first (shuffle=False), then a seeded permutation."""
    x, y = make_classification(
        n_samples=n, n_features=60, n_informative=4, n_redundant=4, n_repeated=0,
        n_clusters_per_class=1, class_sep=2.0, shuffle=False, random_state=seed,
    )
    order = np.random.default_rng(seed).permutation(x.shape[1])
    relevant = set(np.flatnonzero(order < 8).tolist())
    return x[:, order], y, relevant


# -- scikit-learn usage -------------------------------------------------------------------
def test_pipeline_clone_and_dataframe_names(digits):
    x, y = digits
    frame = pd.DataFrame(x, columns=[f"px{i}" for i in range(x.shape[1])])
    selector = QuickSelection(10, hidden=32, epochs=2, **SMALL)
    pipe = make_pipeline(selector, KNeighborsClassifier()).fit(frame, y)
    assert pipe.score(frame, y) > 0.5
    fitted = pipe[0]
    names = fitted.get_feature_names_out()
    assert len(names) == 10 and set(names) <= set(frame.columns)
    assert list(fitted.feature_names_in_) == list(frame.columns)
    assert fitted.transform(frame).shape == (len(x), 10)
    assert clone(selector).get_params() == selector.get_params()
    assert not hasattr(clone(fitted), "scores_")


@pytest.mark.parametrize("make", [
    lambda: QuickSelection(8, hidden=16, epochs=2, **SMALL),
    lambda: WAST(8, hidden=16, epochs=1, **SMALL),
    lambda: NeuroFS(8, hidden=16, n_layers=2, epochs=4, **SMALL),
    lambda: NeuronAttribution(8, hidden=16, epochs=2, **SMALL),
])
def test_deterministic_under_random_state(make, digits):
    x, y = digits
    first, second = make().fit(x, y), make().fit(x, y)
    np.testing.assert_array_equal(first.scores_, second.scores_)
    np.testing.assert_array_equal(first.get_support(), second.get_support())
    other = make().set_params(random_state=1).fit(x, y)
    assert not np.array_equal(first.scores_, other.scores_)
    assert first.get_support().sum() == 8


@pytest.mark.parametrize("make", [
    lambda b: QuickSelection(8, hidden=16, epsilon=3, epochs=3, backend=b, device="cpu", random_state=0),
    lambda b: NeuroFS(8, hidden=16, epsilon=3, n_layers=2, epochs=4, backend=b, device="cpu", random_state=0),
])
def test_sparse_backend_selects_like_masked(make, digits):
    x, y = digits
    masked, sparse = make("masked").fit(x, y), make("sparse").fit(x, y)
    assert set(sparse.sparsifier_.backends.values()) == {"sparse"}
    np.testing.assert_allclose(sparse.scores_, masked.scores_, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(sparse.get_support(), masked.get_support())


def test_k_rule():
    assert features_to_select(None, 9) == 4
    assert features_to_select(None, 1) == 1
    assert features_to_select(3, 9) == 3
    assert features_to_select(0.5, 10) == 5
    assert features_to_select(0.01, 10) == 1


# -- bad input: one-line errors -----------------------------------------------------------
@pytest.mark.parametrize("k, match", [
    (0, r"n_features_to_select=0 is not in \[1, 64\]"),
    (65, r"n_features_to_select=65 is not in \[1, 64\] \(X has 64 features\)"),
    (1.5, r"as a fraction must be in \(0, 1\)"),
    ("10", "must be an integer or a fraction"),
])
def test_bad_k(k, match, digits):
    with pytest.raises(SparsenetsError, match=match):
        QuickSelection(k, hidden=4, epochs=1, **SMALL).fit(digits[0])


@pytest.mark.parametrize("bad, match", [
    (np.nan, "Input X contains NaN"),
    (np.inf, "Input X contains infinity"),
])
def test_nan_and_inf(bad, match, digits):
    x = digits[0].copy()
    x[3, 5] = bad
    with pytest.raises(SparsenetsError, match=match) as info:
        QuickSelection(4, hidden=4, epochs=1, **SMALL).fit(x)
    assert "\n" not in str(info.value)


def test_one_dimensional_x():
    with pytest.raises(SparsenetsError, match=r"X must be 2-D .* got a 1-D array of length 5"):
        QuickSelection(1, **SMALL).fit(np.arange(5.0))


def test_supervised_needs_two_classes_and_labels(digits):
    x, _ = digits
    with pytest.raises(SparsenetsError, match=r"y holds a single class \(3\)"):
        NeuroFS(4, hidden=4, epochs=1, **SMALL).fit(x, np.full(len(x), 3))
    with pytest.raises(SparsenetsError, match="requires y to be passed"):
        NeuroFS(4, hidden=4, epochs=1, **SMALL).fit(x)


def test_non_numeric_dataframe_columns():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "colour": ["red", "blue", "red"], "b": [0, 1, 0]})
    with pytest.raises(SparsenetsError, match=r"X has non-numeric columns 'colour'; encode them"):
        QuickSelection(1, **SMALL).fit(frame)


@pytest.mark.parametrize("params, match", [
    ({"backend": "csr"}, "unknown backend 'csr'"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"learning_rate": float("nan")}, "learning_rate must be a positive finite number"),
    ({"density": 1.5}, r"density must be in \(0, 1\]"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_bad_parameters(params, match, digits):
    selector = QuickSelection(4, hidden=4, epochs=1, **SMALL).set_params(**params)
    with pytest.raises(SparsenetsError, match=match):
        selector.fit(digits[0])


def test_diverging_training_is_an_error(digits):
    with pytest.raises(SparsenetsError, match="the training loss became .* lower learning_rate"):
        QuickSelection(4, hidden=16, epochs=3, learning_rate=1e6, **SMALL).fit(digits[0])


# -- what each method computes -------------------------------------------------------------
def test_quickselection_scores_are_the_encoder_strength(digits):
    selector = QuickSelection(8, hidden=32, epochs=3, **SMALL).fit(digits[0])
    weight = selector.model_.encoder.weight.detach()
    np.testing.assert_allclose(selector.scores_, weight.abs().sum(0).double().numpy(), rtol=1e-6)
    density = (weight != 0).float().mean().item()
    assert abs(density - 13 * (64 + 32) / (64 * 32)) < 0.01  # ER, ε = 13
    # updates after epochs 1 and 2 only, never after the last one
    assert [h["step"] for h in selector.sparsifier_.history] == [6, 12]


def test_quickselection_dense_baseline(digits):
    selector = QuickSelection(8, hidden=16, epochs=1, density=1.0, **SMALL).fit(digits[0])
    assert selector.sparsifier_ is None
    assert bool((selector.model_.encoder.weight != 0).all())


def test_wast_updates_every_batch_with_exact_counts(digits):
    x = digits[0][:300]
    selector = WAST(8, hidden=16, epochs=2, batch_size=50, **SMALL).fit(x)
    sparsifier = selector.sparsifier_
    assert [h["step"] for h in sparsifier.history] == list(range(1, 13))
    for record in sparsifier.history:
        assert record["nnz"] == sum(sparsifier.target_counts.values())
    importance = sparsifier.state.inputs["encoder.weight"]
    np.testing.assert_allclose(selector.scores_, importance.double().numpy())
    assert bool((importance > 0).all())


def test_neurofs_keeps_exactly_k_input_neurons(digits):
    x, y = digits
    selector = NeuroFS(10, hidden=32, n_layers=2, epochs=10, **SMALL).fit(x, y)
    mask = selector.sparsifier_.masks["layers.0.weight"]
    active = mask.any(0)
    assert int(active.sum()) == 10
    np.testing.assert_array_equal(selector.get_support(), active.numpy())
    assert bool((selector.scores_[~active.numpy()] == 0).all())
    head = selector.sparsifier_.history
    # the classifier head never changes; hidden layers keep their exact count
    assert all(r["layers"]["layers.2.weight"]["grown"] == 0 for r in head if "layers.2.weight" in r["layers"])
    assert all(r["layers"]["layers.4.weight"]["grown"] == 0 for r in head if "layers.4.weight" in r["layers"])


@pytest.mark.parametrize("make", [
    lambda: NeuroFS(8, hidden=64, n_layers=2, epochs=30, **SMALL),
    lambda: NeuronAttribution(8, hidden=64, epochs=10, **SMALL),
])
def test_supervised_selectors_recover_the_informative_features(make):
    x, y, relevant = madelon_like(n=2000)  # 8 relevant of 60; a random pick finds ~1
    found = set(np.flatnonzero(make().fit(x, y).get_support()).tolist())
    assert len(found & relevant) >= 6


def test_wast_finds_the_relevant_madelon_features_unsupervised():
    x, _ = make_classification(
        n_samples=1000, n_features=200, n_informative=5, n_redundant=15, n_repeated=0,
        n_clusters_per_class=16, shuffle=False, random_state=0,
    )
    order = np.random.default_rng(0).permutation(200)
    relevant = set(np.flatnonzero(order < 20).tolist())
    selector = WAST(20, epochs=3, **SMALL).fit(x[:, order])  # no labels
    assert len(set(np.flatnonzero(selector.get_support()).tolist()) & relevant) >= 16


def test_scaling_options():
    x = torch.tensor([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    per_feature = scale(x.clone(), "feature")
    torch.testing.assert_close(per_feature.std(0, unbiased=False), torch.ones(2))
    overall = scale(x.clone(), "global")
    assert abs(float(overall.mean())) < 1e-6 and abs(float(overall.std(unbiased=False)) - 1) < 1e-6
    ratio = overall[:, 1].std() / overall[:, 0].std()
    assert abs(float(ratio) - 10.0) < 1e-4  # the features keep their relative spread
    assert scale(x, "none") is x and scale(x, False) is x  # (global and feature work in place)
    with pytest.raises(SparsenetsError, match="unknown standardize 'z'"):
        scale(x, "z")


def test_attribution_matches_the_jacobian():
    torch.manual_seed(0)
    mlp = MLP(5, 7, 2, 3).eval()
    x = torch.randn(6, 5)
    jac = torch.stack([torch.autograd.functional.jacobian(mlp, row) for row in x])  # (n, 3, 5)
    expected = jac.abs().mean(0).sum(0)
    torch.testing.assert_close(output_attribution(mlp, x, batch_size=4), expected)

    ae = Autoencoder(5, 4).eval()
    jac = torch.stack([torch.autograd.functional.jacobian(ae.encode, row) for row in x])
    expected = jac.abs().mean(0).sum(0)
    torch.testing.assert_close(encoder_attribution(ae, x), expected)
    ae.encoder = SparseLinear.from_dense(ae.encoder, torch.rand(4, 5) < 0.6)
    jac = torch.stack([torch.autograd.functional.jacobian(ae.encode, row) for row in x])
    torch.testing.assert_close(encoder_attribution(ae, x), jac.abs().mean(0).sum(0))


def test_strength_of_sparse_and_dense_layers_agree():
    torch.manual_seed(0)
    dense = nn.Linear(9, 6)
    mask = torch.rand(6, 9) < 0.4
    sparse = SparseLinear.from_dense(dense, mask)
    with torch.no_grad():
        dense.weight.mul_(mask)
    torch.testing.assert_close(input_strength(sparse), input_strength(dense))
    torch.testing.assert_close(output_strength(sparse), output_strength(dense))


# -- the DST options the selectors use ------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 0.6))
def test_sign_sided_rank_drops_the_same_share_of_each_side(seed, fraction):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(12, 10, generator=gen)
    mask = torch.rand(12, 10, generator=gen) < 0.6
    weight = weight * mask
    n_pos, n_neg = int((mask & (weight > 0)).sum()), int((mask & (weight < 0)).sum())
    k = round(fraction * int(mask.sum()))
    dropped = select_bottomk(sign_sided_rank(weight.abs(), weight, mask), k, mask)
    d_pos, d_neg = int((dropped & (weight > 0)).sum()), int((dropped & (weight < 0)).sum())
    assert d_pos + d_neg == k
    assert abs(d_pos / max(n_pos, 1) - d_neg / max(n_neg, 1)) <= 1.0 / max(min(n_pos, n_neg), 1) + 1e-9
    # within a side, every dropped weight is closer to zero than every kept one
    for side in (weight > 0, weight < 0):
        gone, kept = weight[dropped & side].abs(), weight[mask & side & ~dropped].abs()
        if gone.numel() and kept.numel():
            assert float(gone.max()) <= float(kept.min())


def test_set_with_sign_sided_drop_and_normal_regrowth():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 50))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights the update sees are these
    s = DynamicSparsity(
        model, opt, density=0.3, total_steps=2, method="set", update_every=1, drop_fraction=0.4,
        drop_schedule="constant", sign_sided=True, regrow_init="normal", regrow_std=0.05,
    )
    old_mask = s.masks["0.weight"].clone()
    weight = model[0].weight.detach().clone()
    model(torch.randn(4, 40)).sum().backward()
    s.step()
    new_mask = s.masks["0.weight"]
    grown = new_mask & ~old_mask
    dropped = old_mask & ~new_mask
    pos, neg = old_mask & (weight > 0), old_mask & (weight < 0)
    assert abs(int((dropped & pos).sum()) / int(pos.sum()) - int((dropped & neg).sum()) / int(neg.sum())) < 0.02
    values = model[0].weight.detach()[grown]
    assert int(new_mask.sum()) == int(old_mask.sum())
    assert 0.035 < float(values.std()) < 0.065
    with pytest.raises(SparsenetsError, match="regrow_std must be a positive finite number"):
        DynamicSparsity(model, opt, density=0.3, total_steps=2, method="set", regrow_std=0.0)


@pytest.mark.parametrize("make, match", [
    (lambda: WAST(2, hidden=0, **SMALL), "hidden must be a positive integer, got 0"),
    (lambda: QuickSelection(2, hidden=-1, **SMALL), "hidden must be a positive integer, got -1"),
    (lambda: NeuronAttribution(2, n_layers=0, **SMALL), "n_layers must be a positive integer, got 0"),
    (lambda: NeuroFS(2, n_layers=0, **SMALL), "n_layers must be a positive integer, got 0"),
])
def test_network_sizes_are_checked(make, match, digits):
    with pytest.raises(SparsenetsError, match=match):
        make().fit(*digits)


def test_continuous_labels_are_one_line(digits):
    x, _ = digits
    with pytest.raises(SparsenetsError, match="needs class labels") as info:
        NeuroFS(2, hidden=4, epochs=1, **SMALL).fit(x, np.linspace(0, 1, len(x)))
    assert "\n" not in str(info.value)
