"""The model: frozen dense CLIP, relational descriptor head, k prompts, zero-shot mode, factory."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from dangerclip.modeling.backbone import BackboneError, build_clip
from dangerclip.modeling.factory import create_model, get_config, list_models
from dangerclip.modeling.losses import danger_loss


def test_list_models_and_unknown_name():
    assert {"tiny", "demo", "ViT-B-16"} <= set(list_models())
    with pytest.raises(ValueError, match="tiny"):
        create_model("no-such-model")


def test_global_token_equals_encode_image(tiny_model):
    x = torch.randn(3, 3, 224, 224)
    g, patches = tiny_model.backbone.encode_dense(x)
    ref = F.normalize(tiny_model.backbone.clip.encode_image(x), dim=-1)
    assert torch.allclose(g, ref, atol=1e-5)
    assert patches.shape == (3, 196, tiny_model.backbone.embed_dim)


def test_patch_tokens_are_the_value_path_not_open_clip_tokens(tiny_model):
    # open_clip's output_tokens are un-projected width-d tokens from the ordinary attention; ours are in
    # the joint space (embed_dim) and come from the last block's value path.
    x = torch.randn(1, 3, 224, 224)
    v = tiny_model.backbone.clip.visual
    _, patches = tiny_model.backbone.encode_dense(x)
    xx = v._embeds(x)
    for blk in v.transformer.resblocks[:-1]:
        xx = blk(xx)
    last = v.transformer.resblocks[-1]
    y = last.ln_1(xx)
    w_v = last.attn.in_proj_weight.chunk(3)[2]
    b_v = last.attn.in_proj_bias.chunk(3)[2]
    t = xx[:, 1:] + last.attn.out_proj(F.linear(y[:, 1:], w_v, b_v))
    t = t + last.mlp(last.ln_2(t))
    expect = v.ln_post(t) @ v.proj
    assert torch.allclose(patches, expect, atol=1e-5)


def test_backbone_is_frozen_and_stays_in_eval():
    m = create_model("tiny", seed=1)
    m.train()
    assert not m.backbone.training and not m.backbone.clip.training
    assert all(not p.requires_grad for p in m.backbone.parameters())
    out = m(torch.randn(2, 3, 224, 224))
    loss = danger_loss(
        out.logits,
        out.map_logits,
        torch.tensor([[1.0], [0.0]]),
        torch.rand(2, 1, 196),
        torch.ones(2, 1, dtype=torch.bool),
    )["loss"]
    loss.backward()
    assert all(p.grad is None for p in m.backbone.parameters())
    assert all(p.grad is not None for p in m.trainable_parameters())


def test_several_prompts_give_a_score_and_map_each():
    m = create_model("tiny", prompts=["gun", "knife", "explosive"], seed=2)
    out = m(torch.randn(2, 3, 224, 224))
    assert out.scores.shape == (2, 3)
    assert out.maps.shape == (2, 3, 14, 14)
    assert out.map_logits.shape == (2, 2, 3, 196)  # 2 head layers in the tiny config
    assert ((out.scores > 0) & (out.scores < 1)).all()
    assert m.card.prompts == ["gun", "knife", "explosive"]
    assert m.head.text.shape == (3, 128)


def test_text_embeddings_are_buffers_from_the_text_tower(tiny_model):
    expect = tiny_model.backbone.encode_text(["weapon"])
    assert torch.allclose(tiny_model.head.text, expect)
    assert "text" in dict(tiny_model.head.named_buffers())


def test_the_heads_query_tokens_are_zegclips_relation_descriptor(tiny_model):
    """What the head feeds its first block, caught in the act: for each prompt t and image g the query is
    q_in(q_proj([t ⊙ g, t])) (ZegCLIP's relation descriptor: the element-wise product with the image embedding,
    concatenated with the text embedding), followed by the projected patch tokens."""
    head = tiny_model.head
    g = F.normalize(torch.randn(2, 128), dim=-1)
    patches = torch.randn(2, 196, 128)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        head.q_proj.register_forward_hook(lambda m, i, o: seen.update(q_in=i[0])),
        head.blocks[0].register_forward_hook(lambda m, i, o: seen.update(x=i[0])),
    ]
    try:
        head(g, patches)
    finally:
        for h in hooks:
            h.remove()
    t = F.normalize(head.text, dim=-1)  # the stored text embeddings are unit vectors
    k = t.shape[0]
    descriptor = torch.cat([t[None] * g[:, None], t[None].expand(2, -1, -1)], dim=-1)  # [B, k, 2D]
    assert torch.allclose(seen["q_in"], descriptor, atol=1e-6)
    w, b = head.q_proj.weight, head.q_proj.bias
    queries = head.q_in(descriptor @ w.T + b)
    assert torch.allclose(seen["x"][:, :k], queries, atol=1e-5)
    assert torch.allclose(seen["x"][:, k:], head.p_in(patches), atol=1e-5)


def test_the_zero_shot_map_lights_the_patch_that_matches_the_prompt():
    from dangerclip.modeling.model import ZeroShotHead

    torch.manual_seed(0)
    text = F.normalize(torch.randn(1, 64), dim=-1)
    safe = F.normalize(torch.randn(4, 64), dim=-1)
    head = ZeroShotHead(text, safe, logit_scale=100.0)
    # Background patches look like the safe prompts (plus noise); one patch shows the thing the prompt names.
    patches = safe[torch.randint(0, 4, (49,))][None] + 0.05 * torch.randn(1, 49, 64)
    patches[0, 17] = text[0] + 0.05 * torch.randn(64)
    out = head(F.normalize(torch.randn(1, 64), dim=-1), patches)
    m = out.map_logits[0, 0, 0]  # [N] log-odds of "weapon" against the safe prompts
    assert int(m.argmax()) == 17 and torch.sigmoid(m[17]) > 0.99 and (torch.sigmoid(m) > 0.5).sum() == 1


@pytest.mark.weights
@pytest.mark.skipif(not os.environ.get("DANGERCLIP_REAL_WEIGHTS"), reason="set DANGERCLIP_REAL_WEIGHTS=1 (downloads)")
def test_real_openai_weights_give_the_papers_backbone_and_sensible_zero_shot_scores():
    """With the OpenAI ViT-B/16 weights (network once): QuickGELU, and the zero-shot model prefers 'a photo of a
    gun' for a drawn pistol over the safe prompts more than for a plain grey image."""
    from PIL import Image, ImageDraw

    from dangerclip.runtime.preprocess import preprocess_batch

    m = create_model("ViT-B-16", mode="zeroshot", prompts=["gun"]).eval()
    assert m.card.backbone.pretrained == "openai" and m.card.backbone.arch.startswith("quickgelu-")
    gun = Image.new("RGB", (224, 224), (230, 230, 230))
    d = ImageDraw.Draw(gun)
    d.rectangle([40, 80, 190, 110], fill=(20, 20, 20))
    d.polygon([(60, 110), (90, 110), (75, 180), (45, 180)], fill=(20, 20, 20))
    grey = Image.new("RGB", (224, 224), (128, 128, 128))
    x = torch.from_numpy(preprocess_batch([gun, grey], m.card.preprocess))
    s = m(x).scores[:, 0]
    assert s[0] > s[1]


def test_zero_shot_scores_are_clip_softmax_against_safe_prompts():
    m = create_model("tiny", mode="zeroshot", safe_prompts=["a cat", "a tree"], seed=3)
    x = torch.randn(2, 3, 224, 224)
    out = m(x)
    g = F.normalize(m.backbone.clip.encode_image(x), dim=-1)
    texts = torch.cat([m.head.text, m.head.safe])
    p = torch.softmax(m.head.logit_scale * g @ texts.T, dim=-1)[:, :1]
    assert torch.allclose(out.scores, p, atol=1e-5)
    assert out.maps.shape == (2, 1, 14, 14)
    assert m.card.mode == "zeroshot" and m.card.safe_prompts == ["a cat", "a tree"]


def test_missing_or_wrong_weights_file_is_a_clear_error(tmp_path):
    cfg = get_config("tiny")["clip"]
    with pytest.raises(BackboneError, match="not found"):
        build_clip(cfg, str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(1)}, str(bad))
    with pytest.raises(BackboneError, match="missing"):
        build_clip(cfg, str(bad))


def test_local_weights_file_loads(tmp_path):
    m = create_model("tiny", seed=5)
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.backbone.clip.state_dict().items()}}, path)
    m2 = create_model("tiny", pretrained=str(path), seed=99)
    assert m2.backbone.sha256 == m.backbone.sha256
    assert m2.card.backbone.pretrained == str(path)


def test_unknown_pretrained_tag_lists_the_valid_ones():
    with pytest.raises(BackboneError, match="openai"):
        build_clip({"open_clip": "ViT-B-16"}, "no-such-tag")


def test_conv_stem_makes_the_patch_tokens_and_hashes_its_buffers():
    from dangerclip.modeling.backbone import ConvStem, state_dict_sha256

    m = create_model("demo", seed=0)
    visual = m.backbone.clip.visual
    assert isinstance(visual.conv1, ConvStem)
    # BatchNorm's 0-d ``num_batches_tracked`` buffers are part of the hash.
    assert any(t.dim() == 0 for t in visual.state_dict().values())
    assert len(state_dict_sha256(visual)) == 64
    with torch.no_grad():
        g, patches = m.backbone.encode_dense(torch.randn(2, 3, 224, 224))
    assert g.shape == (2, 128) and patches.shape == (2, 196, 128)
    with pytest.raises(ValueError, match="does not divide"):
        ConvStem([32, 64, 128, 256, 512], 128, 16)


def test_map_calibration_is_per_category_and_old_scalar_checkpoints_load():
    from dangerclip.modeling.model import DangerHead, HeadConfig

    head = DangerHead(torch.randn(3, 16), HeadConfig(layers=1, width=16, heads=2))
    assert head.map_scale.shape == (3,) and head.map_bias.shape == (3,)
    state = head.state_dict()
    state["map_scale"], state["map_bias"] = torch.tensor(1.5), torch.tensor(-1.0)  # as written before
    head.load_state_dict(state)
    assert torch.equal(head.map_scale.data, torch.full((3,), 1.5)) and torch.equal(
        head.map_bias.data, torch.full((3,), -1.0)
    )
    with torch.no_grad():
        head.map_bias[1] = 4.0  # one category's map brighter, the others untouched
    out = head(torch.nn.functional.normalize(torch.randn(2, 16), dim=-1), torch.randn(2, 9, 16))
    assert (out.map_logits[:, :, 1] > out.map_logits[:, :, 0]).float().mean() > 0.9
