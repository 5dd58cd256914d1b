"""The kafka-python errors the worker decides on, as classes (``isinstance``, so subclasses count too).

kafka-python is imported on first use, so importing the service stays light; a name this kafka-python does not
define (the set differs between major versions) is left out rather than failing.
"""

from __future__ import annotations

import functools

RETRIABLE_CONNECT = ("NoBrokersAvailable", "KafkaConnectionError", "KafkaTimeoutError")
"""Client errors at start that mean "the brokers are not reachable yet": retried. Anything else is fatal."""

FATAL_POLL = ("UnsupportedCodecError", "CorruptRecordError", "KafkaConfigurationError")
"""Poll errors that retrying cannot fix: after a few in a row the worker exits loudly."""

TOO_LARGE = ("MessageSizeTooLargeError", "RecordListTooLargeError")
"""Produce errors that mean this record can never be sent as it is."""


@functools.cache
def classes(names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    """The error classes of ``kafka.errors`` with these names (those this version defines)."""
    import kafka.errors

    found = (getattr(kafka.errors, n, None) for n in names)
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def is_a(err: BaseException | None, names: tuple[str, ...]) -> bool:
    """Whether ``err`` is one of the named kafka-python errors (or a subclass of one)."""
    return err is not None and isinstance(err, classes(names))
