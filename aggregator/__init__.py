"""aggregator: a hot-topic feed aggregator daemon (trending lists and feeds → one SQL store)."""

__version__ = "0.1.0"
