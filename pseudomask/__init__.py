"""Offline pseudo-mask generation: GroundingDINO boxes for the prompts, SAM masks, on the patch grid.

Owns the ``dangerclip pseudomask`` job (``job``) and its command line (``cli``), its settings (``config``),
inputs and shards (``inputs``), resume bookkeeping (``resume``), the models a
config names (``factory``) and their building from local weights (``models``), box and mask geometry
(``geometry``), the output folder and results log (``output``), QA overlays (``qa``).
Imports ``dangerclip`` (preprocessing geometry, manifest format, model card, normalisation constants, and the
shared helpers: ``dangerclip.runtime.files``, ``dangerclip.runtime.commandline``, ``dangerclip.modeling.device``),
torch, segment-anything, groundingdino and transformers. It imports neither ``training`` nor ``service``, and
only ``dangerclip_cli`` imports it (import-linter checks both).
"""
