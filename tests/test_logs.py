"""Log lines: upstream text cannot break a line in either format."""

from __future__ import annotations

import json
import logging

import pytest

from aggregator.logs import JsonFormatter, TextFormatter

HOSTILE = [
    "a\nb",
    "a\rb",
    "a\x85b",
    "a\u2028b",
    "a\u2029b",
    "a\x0bb",
    "a\x0cb",
    "a\x1cb",
    "a\x1eb",
    "a\x1b[2Jb",
    "a\x00b",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_one_line_whatever_the_message(text: str) -> None:
    record = logging.LogRecord("aggregator.poll", logging.WARNING, "", 0, "poll x failed: %s", (text,), None)
    line = TextFormatter("host:1").format(record)
    assert len(line.splitlines()) == 1 and "poll x failed: a" in line and line.endswith("b")
    blob = JsonFormatter("host:1").format(record)
    assert len(blob.splitlines()) == 1
    assert json.loads(blob)["message"] == f"poll x failed: {text}"
