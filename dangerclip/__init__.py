"""DangerCLIP: open-domain weapon and danger detection on frozen CLIP.

This package owns the model. It has two halves:

- the serving half (``card``, ``preprocess``, ``scorer``, ``heatmap``, ``manifest``): numpy, Pillow and
  onnxruntime only. ``service/`` imports nothing else from here.
- the torch half (``backbone``, ``model``, ``factory``, ``losses``, ``zeroshot``, ``checkpoint``,
  ``export``): torch and open_clip. ``training/`` and ``pseudomask/`` build on it.

Importing ``dangerclip`` itself imports neither torch nor onnxruntime.
"""

__version__ = "0.1.0"
