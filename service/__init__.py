"""Kafka scoring workers for DangerCLIP.

Owns: message schemas (``messages``), settings (``settings``), the batch handler (``handler``) and its
identification stage for flagged images (``identify``), the Kafka transport (``worker``, ``checkpoint``,
``delivery``, ``kafka_errors``), metrics, the HTTP health server, ``dangerclip serve`` (``serve``) and
``dangerclip doctor`` (``doctor``). Imports ``dangerclip.runtime`` only from the model package (card,
preprocess, scorer, type head, index), kafka-python, pydantic and prometheus-client; never torch, ``training``,
``pseudomask`` or the CLI (import-linter checks it).
"""
