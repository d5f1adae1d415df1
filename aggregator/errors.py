"""The exception tree of aggregator.

    AggregatorError
    ├── ConfigError          a setting is wrong; names the key (exit status 2)
    ├── CollectError         one poll of one source failed; carries an error kind
    │   ├── FetchError       the request did not give a usable response
    │   └── ParseError       the response was not the list we expected
    └── StoreError           the database refused or is not ours

Expected failures are shown as one line (`str(exc)`); anything else is a bug and is
never wrapped.
"""

from __future__ import annotations


class AggregatorError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(AggregatorError):
    """A setting is missing, unknown or malformed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class CollectError(AggregatorError):
    """A poll failed. `kind` is one of ERROR_KINDS and is stored on the poll."""

    kind = "network"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        http_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.http_status = http_status
        self.retry_after_s = retry_after_s


class FetchError(CollectError):
    """Timeout, refused connection, HTTP error status, oversized or blocked response."""


class ParseError(CollectError):
    """The body was fetched but is not the shape this source's parser expects."""

    kind = "parse"


class StoreError(AggregatorError):
    """The database cannot be opened, is newer than this code, or is not ours."""


# Every value that polls.error_kind can hold.
ERROR_KINDS = (
    "timeout",
    "network",
    "dns",
    "tls",
    "http_4xx",
    "http_5xx",
    "rate_limited",
    "too_large",
    "redirect_loop",
    "blocked",
    "parse",
    "schema",
    "empty",
    "store",
    "internal",
)
