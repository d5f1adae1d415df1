"""The checked dataclasses under the settings: conversion, every problem with its place."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import pytest

from aggregator.checked import Bound, Parse, Problems, Section, is_marked
from aggregator.errors import ConfigError
from aggregator.settings import HttpSettings, SourceSettings, StoreSettings, parse_duration, validate


def _upper(value: object) -> object:
    if isinstance(value, str) and value != value.upper():
        raise ValueError("must be upper case")
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Inner(Section):
    level: Literal["a", "b"] = "a"
    count: Annotated[int, Bound(ge=1, le=10)] = 1


@dataclasses.dataclass(frozen=True, slots=True)
class Outer(Section):
    name: Annotated[str, Parse(_upper), Bound(max_length=4)]
    ratio: Annotated[float, Bound(gt=0)] = 0.5
    on: bool = True
    wait: Annotated[float, Parse(parse_duration)] | None = None
    inner: Inner = Inner()
    tags: tuple[str, ...] = ()
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    rows: tuple[Inner, ...] = ()

    def check(self) -> None:
        if self.wait is not None and self.wait > 60 and not self.on:
            raise ValueError("a long wait needs on = true")


def problems_of(raw: dict[str, object]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(Problems) as info:
        Outer.from_mapping(raw)
    return info.value.problems


def test_values_are_converted_to_their_declared_types() -> None:
    built = Outer.from_mapping(
        {"name": "AB", "ratio": 2, "on": "off", "wait": "30s", "inner": {"count": "3"}, "tags": ["x"], "rows": [{}]}
    )
    assert built.ratio == 2.0 and isinstance(built.ratio, float)
    assert built.on is False and built.wait == 30.0 and built.inner == Inner(count=3)
    assert built.tags == ("x",) and built.rows == (Inner(),)


def test_every_problem_is_reported_with_its_place() -> None:
    found = problems_of(
        {
            "name": "ab",
            "ratio": 0,
            "on": "maybe",
            "inner": {"level": "c", "count": 11, "extra": 1},
            "headers": {"A": 1},
            "rows": [{}, {"count": 0}],
            "bogus": True,
        }
    )
    assert dict(found) == {
        ("bogus",): "unknown key",
        ("name",): "must be upper case",
        ("ratio",): "must be greater than 0",
        ("on",): "expected true or false, got a string",
        ("inner", "extra"): "unknown key",
        ("inner", "level"): "expected one of 'a', 'b'",
        ("inner", "count"): "must be at most 10",
        ("headers", "A"): "expected a string, got an integer",
        ("rows", 1, "count"): "must be at least 1",
    }


@pytest.mark.parametrize(
    ("raw", "where", "words"),
    [
        ({}, ("name",), "missing (required)"),
        ({"name": "TOOLONG"}, ("name",), "at most 4 characters"),
        ({"name": "A", "ratio": True}, ("ratio",), "expected a number"),
        ({"name": "A", "ratio": "inf"}, ("ratio",), "finite"),
        ({"name": "A", "inner": {"count": 1.5}}, ("inner", "count"), "expected an integer"),
        ({"name": "A", "inner": "x"}, ("inner",), "expected a table"),
        ({"name": "A", "tags": "x"}, ("tags",), "expected an array, got a string"),
        ({"name": "A", "wait": "soon"}, ("wait",), "not a duration"),
        ({"name": "A", "wait": "2h", "on": False}, (), "a long wait needs on = true"),
    ],
)
def test_one_problem(raw: dict[str, object], where: tuple[str, ...], words: str) -> None:
    ((loc, message),) = problems_of(raw)
    assert loc == where and words in message


def test_a_missing_key_still_has_the_others_checked() -> None:
    assert problems_of({"ratio": "x", "inner": {"count": 0}, "nope": 1}) == [
        (("nope",), "unknown key"),
        (("name",), "missing (required)"),
        (("ratio",), "expected a number, got a string"),
        (("inner", "count"), "must be at least 1"),
    ]


def test_cross_field_rules_wait_for_valid_fields() -> None:
    # A bad field is the problem reported; the rule over fields does not run on it.
    assert problems_of({"name": "A", "wait": "x", "on": False}) == [
        (("wait",), problems_of({"name": "A", "wait": "x"})[0][1])
    ]


def test_building_and_replacing_check_too() -> None:
    source = SourceSettings(id="a", kind="newsnow", interval="2m")  # type: ignore[arg-type]
    assert source.interval == 120.0
    assert dataclasses.replace(source, interval="1h").interval == 3600.0  # type: ignore[arg-type]
    with pytest.raises(Problems, match=r"interval: .soon. is not a duration"):
        dataclasses.replace(source, interval="soon")  # type: ignore[arg-type]
    with pytest.raises(Problems, match="needs `url`"):
        SourceSettings(id="f", kind="feed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        source.id = "b"  # type: ignore[misc]


def test_durations_are_marked() -> None:
    hints = HttpSettings.hints()
    assert is_marked(hints["timeout"], parse_duration) and not is_marked(hints["max_bytes"], parse_duration)
    assert is_marked(SourceSettings.hints()["interval"], parse_duration)  # Duration | None
    assert not is_marked(StoreSettings.hints()["url"], parse_duration)


def test_settings_name_every_bad_key_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        validate(
            {
                "http": {"per_host_limit": 0, "timeout": "later"},
                "sources": [{"id": "a", "kind": "newsnow", "weight": -1}, {"kind": "feed"}],
            }
        )
    text = str(info.value)
    assert text.startswith("http.timeout: 'later' is not a duration")
    for part in (
        "http.per_host_limit: must be at least 1",
        "sources[0](id=a).weight: must be at least 0",
        "sources[1].id: missing (required)",
    ):
        assert part in text
