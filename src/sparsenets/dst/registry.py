"""Method lookup by name."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from ..errors import SparsenetsError, choice_error
from .base import Method
from .methods import CTRE, MEST, SET, SNFS, RigL, Static
from .pruning import GMP, GraNet
from .seft import SEFT

#: Method classes by their CLI/recipe name.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Static, SET, RigL, SNFS, MEST, CTRE, GMP, GraNet, SEFT)
}


def method_options(name: str) -> tuple[str, ...]:
    """The hyperparameter names accepted by the method ``name``."""
    return tuple(f.name for f in fields(method_class(name)))


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name.lower()]
    except (KeyError, AttributeError):
        raise choice_error("method", name, METHODS) from None


def make_method(method: str | Method, **options: Any) -> Method:
    """A method object from a name and options, or the given object (then no options)."""
    if isinstance(method, Method):
        if options:
            raise SparsenetsError(
                f"options {sorted(options)} were given with a method object; "
                f"set them on the object instead, e.g. RigL(update_every=100)"
            )
        return method
    if not isinstance(method, str):
        raise choice_error("method", method, METHODS)
    cls = method_class(method)
    valid = method_options(cls.name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SparsenetsError(
            f"unknown option {unknown[0]!r} for method {cls.name!r} (valid: {', '.join(valid) or 'none'})"
        )
    return cls(**options)
