"""Frozen dataclasses whose fields are checked and converted when they are built.

The settings are a dozen small sections of typed keys. A `Section` subclass declares
them as a frozen dataclass; building one (from keyword arguments, from a TOML table
through `from_mapping`, or through `dataclasses.replace`) converts every field to its
declared type and raises `Problems` listing each bad key with its location, so one run
names every mistake in a settings file.

The vocabulary is what the settings use and nothing more: str, int, float, bool,
`Literal[...]`, `X | None`, `tuple[X, ...]`, `dict[str, str]`, nested sections, and
`Annotated[X, ...]` with `Parse(fn)` (fn converts or raises ValueError) and `Bound(...)`
(ranges, a length, a pattern). pydantic did this before; it cost the daemon ~8 MB of
resident memory for a job done once at start (issue #2's peak RSS aim is 100 MB).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

Location = tuple[int | str, ...]


class Problems(ValueError):
    """Every bad key of one build: (location, message) pairs, the location a path of
    field names and list indexes from the section built."""

    def __init__(self, problems: list[tuple[Location, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, loc)) or 'value'}: {msg}" for loc, msg in problems))


@dataclasses.dataclass(frozen=True, slots=True)
class Parse:
    """Annotated marker: `fn(value)` gives the field's value or raises ValueError."""

    fn: Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    """Annotated marker: limits on a number (ge, gt, le) or a string (max_length, pattern)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    max_length: int | None = None
    pattern: str | None = None

    def check(self, value: Any) -> None:
        if self.ge is not None and value < self.ge:
            raise ValueError(f"must be at least {_number(self.ge)}")
        if self.gt is not None and value <= self.gt:
            raise ValueError(f"must be greater than {_number(self.gt)}")
        if self.le is not None and value > self.le:
            raise ValueError(f"must be at most {_number(self.le)}")
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"must be at most {self.max_length} characters")
        if self.pattern is not None and not re.search(self.pattern, value):
            raise ValueError(f"must match the pattern {self.pattern}")


def _number(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array"}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_BOOLS = _TRUE | _FALSE


def _what(value: object) -> str:
    if isinstance(value, Mapping):
        return "a table"
    return _NAMES.get(type(value), type(value).__name__)


def _scalar(value: Any, tp: type) -> Any:
    if tp is str:
        if isinstance(value, str):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return value.strip().lower() in _TRUE
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
    elif tp is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is not None:
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            return number
    else:
        raise TypeError(f"no conversion to {tp!r}")
    raise ValueError(f"expected {_NAMES[tp]}, got {_what(value)}")


def convert(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` says, or ValueError (Problems for a nested place)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *marks = typing.get_args(hint)
        for mark in marks:
            if isinstance(mark, Parse):
                value = mark.fn(value)
        value = convert(value, base)
        for mark in marks:
            if isinstance(mark, Bound):
                mark.check(value)
        return value
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) != 1:
            raise TypeError(f"no conversion to {hint!r}")
        return convert(value, options[0])
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if isinstance(value, str) and value in choices:
            return value
        raise ValueError("expected one of " + ", ".join(repr(c) for c in choices))
    if origin is tuple:
        (item,) = (a for a in typing.get_args(hint) if a is not Ellipsis)
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected an array, got {_what(value)}")
        return tuple(_each((i, v, item) for i, v in enumerate(value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {_what(value)}")
        _key, item = typing.get_args(hint)
        keys = list(value)
        bad = [k for k in keys if not isinstance(k, str)]
        if bad:
            raise ValueError("keys must be strings")
        return dict(zip(keys, _each((k, value[k], item) for k in keys), strict=True))
    if isinstance(hint, type) and issubclass(hint, Section):
        if isinstance(value, hint):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {_what(value)}")
        return hint.from_mapping(value)
    return _scalar(value, hint)


def _each(values: Iterable[tuple[int | str, Any, Any]]) -> list[Any]:
    """Each (place, value, hint) converted; the problems of all of them, each under its place
    (an index, a key or a field name)."""
    out, problems = [], []
    for place, value, hint in values:
        try:
            out.append(convert(value, hint))
        except Problems as exc:
            problems += [((place, *loc), msg) for loc, msg in exc.problems]
        except ValueError as exc:
            problems.append(((place,), str(exc)))
    if problems:
        raise Problems(problems)
    return out


class Section:
    """Base of the checked dataclasses: subclasses are `@dataclass(frozen=True, slots=True)`."""

    __slots__ = ()
    _hints: ClassVar[dict[type, dict[str, Any]]] = {}

    @classmethod
    def hints(cls) -> dict[str, Any]:
        """Field name → resolved type hint (Annotated markers kept)."""
        found = Section._hints.get(cls)
        if found is None:
            every = typing.get_type_hints(cls, include_extras=True)
            found = Section._hints[cls] = {f.name: every[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return found

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> typing.Self:
        """A table (a TOML section) → the section; unknown and missing keys are problems."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        problems: list[tuple[Location, str]] = [
            ((name,), "missing (required)")
            for name, f in fields.items()
            if name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = bool(problems)
        problems[:0] = [((key,), "unknown key") for key in raw if key not in fields]
        known = {key: value for key, value in raw.items() if key in fields}
        if missing:
            # Nothing to build: each key given is still checked on its own.
            hints = cls.hints()
            try:
                _each((key, value, hints[key]) for key, value in known.items())
            except Problems as exc:
                problems += exc.problems
        else:
            try:
                built = cls(**known)
            except Problems as exc:
                problems += exc.problems
            else:
                if not problems:
                    return built
        raise Problems(problems)

    def __post_init__(self) -> None:
        problems: list[tuple[Location, str]] = []
        hints = self.hints()
        try:
            values = _each((name, getattr(self, name), hint) for name, hint in hints.items())
        except Problems as exc:
            problems = exc.problems
        else:
            for name, value in zip(hints, values, strict=True):
                object.__setattr__(self, name, value)
        if not problems:
            try:
                self.check()
            except ValueError as exc:
                problems.append(((), str(exc)))
        if problems:
            raise Problems(problems)

    def check(self) -> None:
        """Rules across fields, once each field is valid; raise ValueError to refuse."""


def is_marked(hint: Any, fn: Callable[[Any], Any]) -> bool:
    """Whether `hint` (or the one type inside `X | None`) is Annotated with `Parse(fn)`."""
    if typing.get_origin(hint) is typing.Annotated:
        return any(isinstance(m, Parse) and m.fn is fn for m in typing.get_args(hint)[1:])
    return any(is_marked(a, fn) for a in typing.get_args(hint) if a is not type(None))
