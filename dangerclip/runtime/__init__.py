"""The serving half of the model package: numpy, Pillow and onnxruntime only (never torch).

``card`` (what a model file says about itself), ``preprocess`` (bounded image decoding and the one
preprocessing path), ``scorer`` (ONNX Runtime sessions and providers), ``heatmap``, ``manifest`` (the dataset
file format), and the helpers every package shares: ``files`` (atomic writes), ``commandline`` (dataclass
configs as command-line options) and ``logs``. ``service/`` imports from here and from nowhere else in
``dangerclip``; import-linter checks it (``pyproject.toml``).
"""
