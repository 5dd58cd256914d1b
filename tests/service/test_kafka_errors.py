"""The worker decides on kafka-python's errors by class: subclasses count, names this version lacks are skipped."""

from __future__ import annotations

import kafka.errors

from service import kafka_errors


def test_named_errors_and_their_subclasses_match_and_others_do_not():
    class Wrapped(kafka.errors.MessageSizeTooLargeError):
        pass

    assert kafka_errors.is_a(kafka.errors.MessageSizeTooLargeError("x"), kafka_errors.TOO_LARGE)
    assert kafka_errors.is_a(Wrapped("x"), kafka_errors.TOO_LARGE)
    assert not kafka_errors.is_a(kafka.errors.KafkaTimeoutError("x"), kafka_errors.TOO_LARGE)
    assert not kafka_errors.is_a(None, kafka_errors.TOO_LARGE)

    # A class named like a kafka-python error but not one is not mistaken for it (the old name comparison was).
    class UnsupportedCodecError(Exception):
        pass

    assert not kafka_errors.is_a(UnsupportedCodecError("x"), kafka_errors.FATAL_POLL)
    assert kafka_errors.is_a(kafka.errors.UnsupportedCodecError("x"), kafka_errors.FATAL_POLL)


def test_names_a_kafka_python_version_lacks_are_left_out():
    got = kafka_errors.classes(("KafkaTimeoutError", "NoSuchErrorInAnyVersion"))
    assert got == (kafka.errors.KafkaTimeoutError,)
    # Every class the worker relies on for start-up retries exists in the supported kafka-python.
    assert kafka.errors.KafkaConnectionError in kafka_errors.classes(kafka_errors.RETRIABLE_CONNECT)
