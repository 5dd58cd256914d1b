"""Static QDQ INT8: every MatMul of the graph (attention included) runs on int8 inputs, the copy stays within the
INT8 export tolerance of fp32 on images it was not calibrated on, and it loads and scores in the scorer."""

from __future__ import annotations

import numpy as np

from dangerclip.modeling.export import TOLERANCES, check_images
from dangerclip.modeling.quantize import qdq_matmuls, quantize_static_qdq
from dangerclip.runtime.scorer import DangerScorer


def test_static_qdq_quantizes_attention_and_stays_within_tolerance(tiny_model, tiny_onnx_path, tmp_path):
    calib = check_images(tiny_model, n=8, seed=1)
    held_out = check_images(tiny_model, n=6, seed=2)
    dev = quantize_static_qdq(tiny_onnx_path, tmp_path / "q.onnx", calib, held_out)
    both, total = qdq_matmuls(tmp_path / "q.onnx")
    assert total > 0 and both == total  # the attention products too, not only the weight MatMuls
    assert dev["score_q"] <= TOLERANCES["int8"]["score"] and dev["map_q"] <= TOLERANCES["int8"]["map"]
    s = DangerScorer(tmp_path / "q.onnx", providers="cpu")
    scores, maps = s.predict(held_out)
    assert np.isfinite(scores).all() and maps.shape[0] == 6
    assert s.session.get_modelmeta().custom_metadata_map["dangerclip.precision"] == "int8-static"


def test_the_weights_only_recipe_keeps_exactly_the_attention_products_in_fp32(tiny_model, tiny_onnx_path, tmp_path):
    from dangerclip.modeling.quantize import activation_matmuls

    calib = check_images(tiny_model, n=8, seed=1)
    attention = activation_matmuls(tiny_onnx_path)
    quantize_static_qdq(tiny_onnx_path, tmp_path / "w.onnx", calib, attention=False)
    both, total = qdq_matmuls(tmp_path / "w.onnx")
    assert attention and total - both == len(attention)  # every other MatMul is int8 on both inputs
    meta = DangerScorer(tmp_path / "w.onnx", providers="cpu").session.get_modelmeta().custom_metadata_map
    assert meta["dangerclip.precision"] == "int8-static-weights"
