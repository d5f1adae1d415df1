"""Logging setup: one line per event, text or JSON, upstream text unable to forge lines."""

from __future__ import annotations

import json
import logging
import sys
import time

# Every C0 and C1 control but tab, and the Unicode line and paragraph separators: some
# of them end a line for splitlines(), a terminal or a log shipper.
_ESCAPES = str.maketrans(
    {
        **{c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0))},
        "\n": "\\n",
        "\r": "\\r",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


_JSON_C1: dict[int | str, str] = {c: f"\\u{c:04x}" for c in range(0x7F, 0xA0)}
_JSON_ESCAPES = str.maketrans({**_JSON_C1, "\u2028": "\\u2028", "\u2029": "\\u2029"})


class TextFormatter(logging.Formatter):
    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        message = record.getMessage().translate(_ESCAPES)
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info).translate(_ESCAPES)
        who = f" [{self.instance}]" if self.instance else ""
        return f"{when} {record.levelname:<7}{who} {record.name}: {message}"


class JsonFormatter(logging.Formatter):
    def __init__(self, instance: str = "") -> None:
        super().__init__()
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.instance:
            entry["instance"] = self.instance
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # ensure_ascii=False keeps Chinese readable; the separators and C1 controls it would
        # leave raw are escaped so that no line splitter breaks the object.
        return json.dumps(entry, ensure_ascii=False).translate(_JSON_ESCAPES)


def setup_logging(level: str, fmt: str, instance: str = "") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(instance) if fmt == "json" else TextFormatter(instance))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter at INFO (every HTTP request, every scheduler tick) drowns our lines.
    for noisy in ("httpx", "httpcore", "apscheduler", "alembic", "aiosqlite", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
