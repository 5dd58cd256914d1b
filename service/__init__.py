"""Kafka scoring workers for DangerCLIP.

Owns: message schemas, settings, the batch handler, the Kafka transport, metrics and the HTTP health server.
Imports the serving half of ``dangerclip`` (card, preprocess, scorer), kafka-python, pydantic and
prometheus-client. Never torch, never ``training``.
"""
