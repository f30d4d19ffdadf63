"""Argument checks shared by the public entry points: one clear nrnlib error per bad value.

Every check names the argument, the value it got and what it needs, and returns the value
converted (``int`` / ``float``). The errors subclass ``ValueError`` and ``TypeError``, so callers
that caught those keep working.
"""

from __future__ import annotations

import math
import numbers
import operator


class InvalidArgumentError(ValueError):
    """An argument of the right type with a value nrnlib cannot use (out of range, not finite)."""


class ArgumentTypeError(TypeError):
    """An argument of the wrong type (e.g. a float where a count is needed)."""


def _got(value: object) -> str:
    return f"{value!r} ({type(value).__name__})"


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def check_int(value: object, name: str, minimum: int | None = None, where: str = "",
              none_ok: bool = False) -> int | None:
    """``value`` as an ``int`` (Python, NumPy or 0-d integer tensor; not bool, not float), ``>= minimum``."""
    if value is None and none_ok:
        return None
    need = "an int" + (f" >= {minimum}" if minimum is not None else "") + (" or None" if none_ok else "")
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{_prefix(where)}{name} must be {need}, got {_got(value)}")
    try:
        number = operator.index(value)
    except TypeError:
        hint = "; pass a whole number such as 8" if isinstance(value, numbers.Real) else ""
        raise ArgumentTypeError(f"{_prefix(where)}{name} must be {need}, got {_got(value)}{hint}") from None
    if minimum is not None and number < minimum:
        raise InvalidArgumentError(f"{_prefix(where)}{name} must be {need}, got {number}")
    return number


def check_float(value: object, name: str, minimum: float | None = None, positive: bool = False,
                where: str = "") -> float:
    """``value`` as a finite ``float`` (``> 0`` with ``positive``, ``>= minimum`` with ``minimum``)."""
    need = "a finite number" + (" > 0" if positive else "") + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        try:  # 0-d tensors and NumPy scalars
            if getattr(value, "ndim", None) != 0 or isinstance(value, bool):
                raise TypeError
            value = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ArgumentTypeError(f"{_prefix(where)}{name} must be {need}, got {_got(value)}") from None
    number = float(value)
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{_prefix(where)}{name} must be {need}, got {number}")
    if (positive and number <= 0) or (minimum is not None and number < minimum):
        raise InvalidArgumentError(f"{_prefix(where)}{name} must be {need}, got {number}")
    return number
