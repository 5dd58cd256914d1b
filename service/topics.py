"""Create the worker's topics when they are missing (demo, benchmark, tests; any Kafka cluster)."""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def ensure_topics(
    bootstrap_servers: str | list[str],
    topics: dict[str, int],
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    **client_options: Any,
) -> list[str]:
    """Create each topic with the given partition count unless it exists; wait until all are visible.

    Args:
        bootstrap_servers: brokers.
        topics: ``{name: partitions}``.
        replication_factor: for new topics (3 on a production cluster).
        timeout_s: how long to keep trying while the cluster comes up.
        client_options: security options for ``KafkaAdminClient`` (``Settings.kafka_security()``).

    Returns:
        The topics that were created.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # Each connection attempt is bounded by what is left of timeout_s (kafka-python's own default is 30 s).
            left_ms = max(100, int((deadline - time.monotonic()) * 1000))
            options = {"bootstrap_timeout_ms": left_ms, **client_options}
            admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **options)
            break
        except Exception as e:  # noqa: BLE001 - the cluster may still be starting
            if time.monotonic() > deadline:
                raise
            log.info("admin client cannot connect yet (%s); retrying", e)
            time.sleep(0.5)
    created = []
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, p, replication_factor) for n, p in topics.items() if n not in existing]
        if new:
            try:
                admin.create_topics(new)
                created = [t.name for t in new]
            except TopicAlreadyExistsError:
                pass
        while not set(topics) <= set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(topics)} not all visible after {timeout_s}s")
            time.sleep(0.1)
    finally:
        admin.close()
    if created:
        log.info("created topics %s", created)
    return created
