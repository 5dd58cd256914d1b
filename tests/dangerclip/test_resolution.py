"""Resolution is a model setting: created, saved, reloaded, exported and served at 224, 336 or 448 px, with the
card carrying it and the danger map as fine as the patch grid."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from dangerclip.modeling.backbone import build_clip, set_resolution
from dangerclip.modeling.checkpoint import load_checkpoint, save_checkpoint
from dangerclip.modeling.export import export_onnx
from dangerclip.modeling.factory import create_model, get_config
from dangerclip.runtime.scorer import DangerScorer


@pytest.mark.parametrize("size", [336, 448])
def test_a_model_at_a_higher_resolution_round_trips_and_serves_a_finer_map(size, tmp_path):
    m = create_model("tiny", seed=0, image_size=size).eval()
    grid = size // 16
    assert m.card.preprocess.image_size == size and tuple(m.card.grid) == (grid, grid)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(m, ckpt, version="t", include_backbone=False)  # the backbone is rebuilt from its seed
    back = load_checkpoint(ckpt)
    x = torch.randn(2, 3, size, size)
    assert torch.equal(m(x).scores, back(x).scores)
    scorer = DangerScorer(export_onnx(back, tmp_path / "m.onnx"))
    (pred,) = scorer.score_images([Image.new("RGB", (640, 480), (140, 40, 40))])
    assert pred.map.shape == (1, grid, grid)


def test_position_embeddings_are_interpolated_not_reset():
    torch.manual_seed(0)
    clip = build_clip(get_config("tiny")["clip"])
    before = clip.visual.positional_embedding.detach().clone()
    set_resolution(clip, 224)
    assert torch.equal(clip.visual.positional_embedding, before)  # native size: untouched
    set_resolution(clip, 448)
    pos = clip.visual.positional_embedding.detach()
    assert pos.shape == (1 + 28 * 28, before.shape[1]) and torch.equal(pos[0], before[0])
    # Bicubic upsampling keeps the grid's layout: the 2x-upsampled corner follows the original corner.
    grid = pos[1:].reshape(28, 28, -1)
    old = before[1:].reshape(14, 14, -1)
    assert torch.nn.functional.cosine_similarity(grid[0, 0], old[0, 0], dim=0) > 0.9
    with pytest.raises(ValueError, match="multiple of the patch size"):
        set_resolution(clip, 300)
