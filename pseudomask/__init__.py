"""Offline pseudo-mask generation: GroundingDINO boxes for the prompts, SAM masks, on the patch grid.

Owns the ``dangerclip pseudomask`` job (``job``) and its command line (``cli``), its settings (``config``),
inputs and shards (``inputs``), resume bookkeeping (``resume``), progress lines (``progress``), the models a
config names (``factory``) and their building from local weights (``models``), box and mask geometry
(``geometry``), the output folder and results log (``output``), QA overlays (``qa``).
Imports ``dangerclip`` (preprocessing geometry, manifest format, model card), the helpers it shares with
``training`` (``training.runtime``, ``training.files``, ``training.commandline``, ``training.data``'s
normalisation constants), torch, segment-anything, groundingdino and transformers. Nothing in ``dangerclip``
or ``service`` may import this package.
"""
