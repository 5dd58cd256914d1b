"""Training and evaluation of DangerCLIP heads, and the data and backbone they need.

Owns the synthetic data (``synth``), datasets and augmented views (``data``), the feature cache (``cache``),
the head's run (``config``, ``train``, ``sampler``, ``train_state``, ``history``, ``finish``), evaluation
(``metrics``, ``evaluate``, ``report``), the CNN and zero-shot baselines (``baselines``), contrastive
pre-training of a small CLIP (``pretrain``) and the offline demo model (``demo_model``); and the helpers these
and ``pseudomask`` share: ``optim`` (parameter groups, schedule, optimiser step), ``runtime`` (device,
threads, signals, worker processes), ``files`` (atomic writes, strict JSON) and ``commandline`` (options from
dataclass configs, exit code 2 on bad input).

Imports ``dangerclip`` (both halves), torch and scikit-learn. Nothing in ``dangerclip`` or ``service``
imports this package.
"""
