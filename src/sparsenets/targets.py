"""Which parameters of a model are sparsified.

By default the ``weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` is a target; biases,
normalization parameters and embeddings stay dense. Users refine the set with shell-style name
patterns (``fnmatch``) and can keep the first and/or the last target layer dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn

from .errors import SparsenetsError

#: Module types whose ``weight`` is sparsified by default.
DEFAULT_TARGET_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _as_patterns(patterns: str | Sequence[str] | None) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def find_targets(
    model: nn.Module,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
) -> list[str]:
    """Names of the parameters to sparsify, in the model's registration order.

    Args:
        model: any ``nn.Module``.
        include: name patterns (``fnmatch``, e.g. ``"fc*.weight"``). When given, only the weights
            of default target layers that match a pattern are kept. A pattern may also name a
            parameter of another module type explicitly by its full name.
        exclude: name patterns removed from the selection.
        dense_first: keep the first target layer dense (drop it from the targets).
        dense_last: keep the last target layer dense (e.g. the classifier head).

    Returns:
        Fully qualified parameter names, e.g. ``["fc1.weight", "fc2.weight"]``.

    Raises:
        SparsenetsError: if a pattern matches nothing or no target remains.
    """
    include_patterns = _as_patterns(include)
    exclude_patterns = _as_patterns(exclude)
    all_params = dict(model.named_parameters())
    default_names = [
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if isinstance(module, DEFAULT_TARGET_TYPES) and getattr(module, "weight", None) is not None
    ]
    names = [n for n in default_names if n in all_params]
    if include_patterns:
        for pattern in include_patterns:
            if not any(fnmatchcase(n, pattern) for n in all_params):
                raise SparsenetsError(
                    f"include pattern {pattern!r} matches no parameter "
                    f"(parameters: {', '.join(all_params)})"
                )
        explicit = [
            n for n in all_params if n in include_patterns and n not in default_names
        ]
        names = [n for n in names if any(fnmatchcase(n, p) for p in include_patterns)]
        names += explicit
        names.sort(key=list(all_params).index)
    for pattern in exclude_patterns:
        if not any(fnmatchcase(n, pattern) for n in all_params):
            raise SparsenetsError(
                f"exclude pattern {pattern!r} matches no parameter "
                f"(parameters: {', '.join(all_params)})"
            )
    names = [n for n in names if not any(fnmatchcase(n, p) for p in exclude_patterns)]
    if dense_first and names:
        names = names[1:]
    if dense_last and names:
        names = names[:-1]
    if not names:
        raise SparsenetsError(
            "no parameter left to sparsify (the model needs nn.Linear/nn.Conv layers, or "
            "include/exclude/dense_first/dense_last removed all of them)"
        )
    return names
