"""Training and evaluation of DangerCLIP heads and the firearm models, and the data and backbones they need.

Owns the synthetic data (``synth``; fine-grained firearms: ``firearms``), datasets and augmented views
(``data``), the feature cache (``cache``), the head's run (``config``, ``train``, ``sampler``, ``train_state``,
``history``, ``finish``), evaluation (``metrics``, ``evaluate``, ``report``), the CNN and zero-shot baselines
(``baselines``), contrastive pre-training of a small CLIP (``pretrain``), the offline demo model
(``demo_model``), DeepFirearm retrieval (``retrieval``) and firearm types with self-supervised pre-training
(``ssl``); and ``optim`` (parameter groups, schedule, optimiser step), shared by the loops. The helpers every
package shares live in ``dangerclip.runtime`` (files, commandline, progress) and ``dangerclip.modeling.device``.

Imports ``dangerclip`` (both halves), torch, lightly and scikit-learn. Only ``dangerclip_cli`` imports this
package (import-linter checks it)."""
