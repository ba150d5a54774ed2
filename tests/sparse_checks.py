"""Invariants every sparse step must leave behind, shared by the property and integration tests."""

from __future__ import annotations

from sparsenets.optim import per_element_state


def assert_nothing_revived(s, step=None) -> None:
    """Weights and every per-element optimizer state (momentum, Adam moments) are exactly zero at
    the inactive positions of every layer of the sparsifier ``s``."""
    for name, mask in s.masks.items():
        param = s.params[name]
        assert bool((param[~mask] == 0).all()), (name, step)
        for state in per_element_state(s.optimizer, param):
            assert bool((state[~mask] == 0).all()), (name, step)


def assert_exact_counts(s) -> None:
    """Each layer holds exactly its allocated number of active weights."""
    assert {n: s.masks.nnz(n) for n in s.masks} == s.target_counts
