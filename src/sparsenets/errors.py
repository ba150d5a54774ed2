"""Exceptions raised by sparsenets.

Every error raised for bad user input is a :class:`SparsenetsError` (a ``ValueError``) whose
message is one line naming the bad value and what would be valid. The CLI prints that line and
exits non-zero without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class SparsenetsError(ValueError):
    """Bad input to sparsenets: the message names the value and the valid choices."""


def choice_error(what: str, value: object, valid: Iterable[object]) -> SparsenetsError:
    """Build the standard 'unknown X' error, e.g. ``unknown method 'foo' (valid: rigl, set)``."""
    valid_list = ", ".join(str(v) for v in valid)
    return SparsenetsError(f"unknown {what} {value!r} (valid: {valid_list})")


def check_density(density: float, what: str = "density") -> float:
    """Return ``density`` as float if it lies in (0, 1], else raise a one-line error."""
    try:
        value = float(density)
    except (TypeError, ValueError):
        raise SparsenetsError(f"{what} must be a number in (0, 1], got {density!r}") from None
    if not 0.0 < value <= 1.0:
        raise SparsenetsError(f"{what} must be in (0, 1], got {density!r}")
    return value
