"""Values of an experiment file read as the RunConfig field types demand: integers that are
integers, finite numbers, the allowed words; every refusal says what the value was."""

from __future__ import annotations

import functools
import math
import re
import types
import typing
from typing import Any

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class Invalid(ValueError):
    pass


# YAML's types in words, most specific first (bool before int: True is an int in Python)
_TYPE_WORDS = ((bool, "a boolean"), (str, "a string"), (float, "a float"), (int, "an integer"),
               (list, "a list"), (dict, "a mapping"))


def what(value: Any) -> str:
    if value is None:
        return "has no value (null)"
    word = next((w for t, w in _TYPE_WORDS if isinstance(value, t)), None)
    return f"{value!r} is {word or f'a {type(value).__name__}'}"


def as_int(value: Any, allowed: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    hint = (" (write it without a dot or exponent)" if isinstance(value, float) else
            " (write it unquoted, without a dot or exponent)" if isinstance(value, str) else "")
    raise Invalid(f"{what(value)}, not an integer{hint}; allowed: {allowed}")


def as_number(value: Any, allowed: str, keep_int: bool = False) -> float:
    """A finite number; a plain decimal string (``"1e-3"``) is converted. ``keep_int`` keeps an
    integer an integer (a grid value's cell id stays as written)."""
    number = value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise Invalid(f"{what(value)}, not a number; allowed: {allowed}")
    if not math.isfinite(number):
        raise Invalid(f"{value!r} is not finite; allowed: {allowed}")
    return number if keep_int and isinstance(number, int) else float(number)


def as_str(value: Any, allowed: str) -> str:
    if isinstance(value, str):
        return value
    hint = " (YAML reads yes/no/on/off/true/false as booleans: quote it)" \
        if isinstance(value, bool) else " (quote it)" if isinstance(value, int | float) else ""
    raise Invalid(f"{what(value)}, not a string{hint}; allowed: {allowed}")


def describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is tuple:
        return f"a list of {describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return getattr(hint, "__name__", str(hint))


def coerce(hint: Any, value: Any) -> Any:
    """``value`` checked against a config field's type annotation (lists become tuples)."""
    allowed = describe(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            try:
                return coerce(rest[0], value)
            except Invalid as e:
                raise Invalid(str(e).rsplit("; allowed: ", 1)[0] + f"; allowed: {allowed}"
                               ) from None
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise Invalid(f"{what(value)}, not a boolean; allowed: true or false")
    if hint is int:
        return as_int(value, allowed)
    if hint is float:
        return as_number(value, allowed, keep_int=True)
    if hint is str or (origin is typing.Literal and all(isinstance(a, str) for a in args)):
        return as_str(value, allowed)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise Invalid(f"{what(value)}; allowed: {allowed}")
        item = args[0]
        try:
            return tuple(coerce(item, v) for v in value)
        except Invalid as e:
            raise Invalid(f"item {str(e).rsplit('; allowed: ', 1)[0]}; allowed: {allowed}"
                           ) from None
    if isinstance(value, list | dict):  # an annotation this loader does not know: scalars only
        raise Invalid(f"{what(value)}; allowed: a single value")
    return value


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def as_bool(value: Any, allowed: str) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid(f"{what(value)}, not true or false; allowed: {allowed}")
