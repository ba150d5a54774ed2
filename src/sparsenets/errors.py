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


def check_fraction(value: float, what: str, *, include_zero: bool, include_one: bool) -> float:
    """Return ``value`` as float if it lies in the unit interval with the given ends, else raise.

    The one validator behind :func:`check_density` (``(0, 1]``) and :func:`check_sparsity`
    (``[0, 1)``); the one-line message names ``what``, the interval and the bad value. NaN fails.
    """
    interval = f"{'[' if include_zero else '('}0, 1{']' if include_one else ')'}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SparsenetsError(f"{what} must be a number in {interval}, got {value!r}") from None
    above_zero = number >= 0.0 if include_zero else number > 0.0
    below_one = number <= 1.0 if include_one else number < 1.0
    if not (above_zero and below_one):
        raise SparsenetsError(f"{what} must be in {interval}, got {value!r}")
    return number


def check_density(density: float, what: str = "density") -> float:
    """Return ``density`` (fraction of weights kept) as float if it lies in (0, 1], else raise."""
    return check_fraction(density, what, include_zero=False, include_one=True)


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Return ``sparsity`` (fraction of weights removed) as float if it lies in [0, 1), else raise."""
    return check_fraction(sparsity, what, include_zero=True, include_one=False)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's
    name when the message is empty: what a one-line error quotes of a library's exception."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__
