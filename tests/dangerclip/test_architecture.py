"""Real CLIP weights get the architecture they were trained in: OpenAI's tags run QuickGELU whatever the
installed open_clip does, the architecture (activation included) is part of the backbone's identity, and a
checkpoint refuses a backbone of another architecture. Random weights here; no network."""

from __future__ import annotations

import pytest
import torch

from dangerclip.modeling.backbone import BackboneError, architecture, build_clip, wants_quick_gelu
from dangerclip.modeling.checkpoint import load_checkpoint, save_checkpoint
from dangerclip.modeling.factory import create_model, get_config


def test_tags_decide_the_activation_and_files_take_the_config():
    assert wants_quick_gelu("ViT-B-16", "openai") is True
    assert wants_quick_gelu("ViT-B-16", "metaclip_400m") is True  # listed under ViT-B-16-quickgelu
    assert wants_quick_gelu("ViT-B-16", "laion2b_s34b_b88k") is False
    assert wants_quick_gelu("ViT-B-16", "/weights/vit-b-16.pt", default=True) is True
    assert wants_quick_gelu("ViT-B-16", None, default=False) is False


@pytest.mark.slow
def test_vit_b_16_from_its_config_runs_quickgelu_and_says_so():
    """The paper's config with random weights (no download): QuickGELU, as the OpenAI weights it defaults to."""
    cfg = get_config("ViT-B-16")
    assert cfg["pretrained"] == "openai"
    torch.manual_seed(0)
    quick = build_clip(cfg["clip"], None)
    arch = architecture(quick)
    assert arch["activation"] == "QuickGELU" and arch["vision"]["patch_size"] == 16 and arch["vision"]["layers"] == 12
    torch.manual_seed(0)
    plain = build_clip(cfg["clip"], None, quick_gelu=False)
    # Same weights (and weight hash), other function: the identity must tell them apart.
    from dangerclip.modeling.backbone import DenseCLIP

    a, b = DenseCLIP(quick, "ViT-B-16"), DenseCLIP(plain, "ViT-B-16")
    assert a.sha256 == b.sha256 and a.arch != b.arch
    assert a.arch.startswith("quickgelu-") and b.arch.startswith("gelu-")
    x = torch.randn(1, 3, 224, 224)
    assert not torch.allclose(a.encode_dense(x)[0], b.encode_dense(x)[0])


def test_a_big_config_never_gets_random_weights_by_default():
    with pytest.raises(BackboneError, match="openai"):  # no network here: the default tag cannot be fetched
        create_model("ViT-B-16")


def test_a_checkpoint_refuses_a_backbone_of_another_architecture(tmp_path):
    m = create_model("tiny", seed=0)
    assert m.card.backbone.arch.startswith("gelu-")
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(m.eval(), ckpt, version="t", include_backbone=False)
    assert load_checkpoint(ckpt).card.backbone.arch == m.card.backbone.arch
    # The same checkpoint claiming QuickGELU (as one built on OpenAI weights would) is refused, naming both.
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(ckpt), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    import json

    card = json.loads(meta["dangerclip.card"])
    card["backbone"]["arch"] = "quickgelu-" + card["backbone"]["arch"].split("-", 1)[1]
    meta["dangerclip.card"] = json.dumps(card)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(BackboneError) as e:
        load_checkpoint(bad)
    assert card["backbone"]["arch"] in str(e.value) and m.card.backbone.arch in str(e.value)


def test_cards_written_before_the_architecture_was_recorded_still_load():
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / "dangerclip" / "assets" / "demo" / "model.safetensors"
    model = load_checkpoint(demo)
    assert model.card.backbone.sha256 and model.backbone.arch
