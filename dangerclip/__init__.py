"""DangerCLIP: open-domain weapon and danger detection on frozen CLIP.

This package owns the model, in two halves split by what they may import:

- ``dangerclip.runtime``: numpy, Pillow and onnxruntime only: the model card, preprocessing, the ONNX scorer,
  heat maps, the manifest format and shared helpers. ``service/`` imports nothing else from here.
- ``dangerclip.modeling``: torch and open_clip: backbone, head, losses, factory, checkpoint, export.
  ``training/`` and ``pseudomask/`` build on it.

Importing ``dangerclip`` itself imports neither torch nor onnxruntime. The ``dangerclip`` command lives above
every package, in ``dangerclip_cli``.
"""

__version__ = "0.1.0"
