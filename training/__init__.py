"""Training and evaluation of DangerCLIP heads: datasets, feature caching, training loop, metrics, baselines.

Imports ``dangerclip`` (both halves) and torch. Nothing in ``service`` imports this package.
"""
