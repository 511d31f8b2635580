"""Config validation helpers shared by every schema (model, attention, data, run, regression), so every
message has one style: ``<key path>=<value> <what is wrong>; <what to do>``.

Schemas call these from ``__post_init__``; each raises ``ValueError`` naming the full key path, and
:func:`transformer.training.config.load_config` adds the file or override the value came from.
This module imports nothing heavy (no torch), so it is usable before any model code loads.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Sequence


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` (difflib ratio >= 0.6), or None."""
    found = difflib.get_close_matches(str(word), list(candidates), n=1)
    return found[0] if found else None


def choice(key: str, value: Any, allowed: Sequence[Any]) -> None:
    """``key=value`` must be one of ``allowed``; the message suggests the closest allowed value."""
    if value not in allowed:
        near = closest(str(value), [str(a) for a in allowed])
        hint = f"; did you mean {near!r}?" if near else ""
        raise ValueError(f"{key}={value!r} is not one of {tuple(allowed)}{hint}")


def positive_int(key: str, value: Any, *, optional: bool = False) -> None:
    """``key`` must be an integer >= 1 (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        tail = " or null" if optional else ""
        raise ValueError(f"{key}={value!r} must be a positive integer{tail}")


def positive_fields(section: str, obj: Any, names: Sequence[str], *, optional: bool = False) -> None:
    """:func:`positive_int` for each attribute ``names`` of ``obj``, reported as ``section.name``."""
    for name in names:
        positive_int(f"{section}.{name}", getattr(obj, name), optional=optional)


def in_range(key: str, value: Any, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False) -> None:
    """``low <= value <= high`` (``<`` on an open side); None bounds are unbounded."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN fails
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{key}={value!r} must be in {span}")


def field_names(schema: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(schema))


def known_keys(keys: Iterable[str], schema: type | Sequence[str], *, prefix: str = "", what: str = "config key") -> None:
    """``ValueError`` naming the first of ``keys`` not in ``schema`` (a dataclass or a list of names),
    with the closest known name."""
    known = field_names(schema) if isinstance(schema, type) else sorted(schema)
    for key in keys:
        if key not in known:
            near = closest(key, known)
            hint = f"; did you mean {prefix}{near}?" if near else ""
            raise ValueError(f"unknown {what} {prefix}{key}{hint} (known: {', '.join(known)})")
