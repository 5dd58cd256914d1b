"""The modeling half: torch and open_clip. Builds, trains' building blocks, saves and exports DangerCLIP.

``backbone`` (frozen CLIP with MaskCLIP dense tokens), ``model`` (the head and the zero-shot head),
``losses``, ``factory`` (named configs in ``model_configs/``), ``checkpoint`` (safetensors with the card),
``export`` (ONNX, parity-checked), ``device`` (device, threads, seeding, signals for long jobs).
It may import ``dangerclip.runtime``; nothing in ``dangerclip.runtime`` imports it.
"""
