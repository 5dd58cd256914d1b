"""Contrastive pre-training of the tiny CLIP: pieces agree with open_clip, the loss falls, weights load back."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import pretrain as pt
from training.synth import DISTRACTOR_KINDS, WEAPON_KINDS, SynthConfig, generate


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("pre") / "set", SynthConfig(n=48, seed=21))


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    return pt.build_clip("tiny", seed=0).eval()


def test_short_context_text_encoding_equals_open_clip(small_set: Path, clip: torch.nn.Module) -> None:
    data = pt.load_caption_data(small_set, limit=8)
    assert data.tokens.shape[1] < 77
    full = F.pad(data.tokens, (0, 77 - data.tokens.shape[1]))
    with torch.no_grad():
        ours = pt.encode_text(clip, data.tokens)
        theirs = clip.encode_text(full)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_dense_tokens_match_encode_image(clip: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        g, patches = pt.dense_tokens(clip, x)
        ref = clip.encode_image(x)
    assert patches.shape == (2, 196, 128)
    torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)


def test_dense_tokens_match_the_backbone_reader(clip: torch.nn.Module) -> None:
    # What pre-training shapes must be exactly what the DangerCLIP head reads.
    backbone = pytest.importorskip("dangerclip.modeling.backbone")
    dense = backbone.DenseCLIP(pt.build_clip("tiny", seed=0), "tiny")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        g, patches = pt.dense_tokens(clip, x)
    g2, p2 = dense.encode_dense(x)
    torch.testing.assert_close(F.normalize(g, dim=-1), g2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patches, p2, rtol=1e-4, atol=1e-5)


def test_token_masking_keeps_the_class_token_and_count(clip: torch.nn.Module) -> None:
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        g, patches = pt.dense_tokens(clip, x, keep=49, generator=torch.Generator().manual_seed(0))
    assert g.shape == (3, 128) and patches.shape == (3, 49, 128)


def test_hard_negative_swaps_exactly_one_noun_across_vocabularies() -> None:
    objects = [
        {"kind": "pistol", "colour": "red", "visible": 10},
        {"kind": "circle", "colour": "blue", "visible": 5},
    ]
    rng = random.Random(0)
    for _ in range(20):
        cap = pt.hard_negative_caption(objects, "striped", rng)
        words = cap.split()
        assert cap != "a red pistol and a blue circle on a striped background"
        assert words[2] in WEAPON_KINDS or words[2] in DISTRACTOR_KINDS
        swapped = (words[2] != "pistol") + (words[6] != "circle")
        assert swapped == 1
        if words[2] != "pistol":
            assert words[2] in DISTRACTOR_KINDS
        else:
            assert words[6] in WEAPON_KINDS


def test_contrastive_loss_is_low_for_matched_pairs() -> None:
    e = F.normalize(torch.randn(8, 16), dim=-1)
    matched = pt.contrastive_loss(e, e, None, torch.tensor(50.0))
    shuffled = pt.contrastive_loss(e, e.roll(1, 0), None, torch.tensor(50.0))
    assert matched < 0.05 < shuffled


def test_pretrain_reduces_the_loss_and_saves_loadable_weights(small_set: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = pt.load_caption_data(small_set, limit=16)
    model = pt.build_clip("tiny", seed=1)
    before = pt.contrastive_eval(model, data, batch_size=16)["loss"]
    cfg = pt.PretrainConfig(steps=12, batch_size=16, lr=2e-3, warmup=2, mask_ratio=0.75, log_every=0)
    res = pt.pretrain(model, data, cfg)
    after = pt.contrastive_eval(model, data, batch_size=16)["loss"]
    assert res.steps == 12 and len(res.losses) == 12
    assert after < before - 0.3, (before, after)
    assert np.mean(res.losses[-3:]) < np.mean(res.losses[:3])

    path = pt.save_clip(model, tmp_path / "clip.safetensors")
    back = pt.load_clip(path)
    for (k, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(back.state_dict().items()), strict=True):
        assert torch.equal(a, b), k


def test_saved_weights_load_in_the_factory(small_set: Path, tmp_path: Path) -> None:
    factory = pytest.importorskip("dangerclip.modeling.factory")
    model = pt.build_clip("tiny", seed=5)
    path = pt.save_clip(model, tmp_path / "clip.safetensors")
    dc = factory.create_model("tiny", pretrained=str(path), prompts=["weapon"])
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = F.normalize(model.encode_image(x), dim=-1)
    g, _ = dc.backbone.encode_dense(x)
    torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5)


def test_linear_probe_finds_planted_signal() -> None:
    # Patch features with one informative direction: the probe must find it; pure noise stays near 0.5.
    rng = np.random.default_rng(0)
    cover = (rng.random((40, 196)) < 0.1).astype(np.float32)
    noise = rng.normal(size=(40, 196, 16)).astype(np.float32)
    signal = noise.copy()
    signal[..., 3] += 2.0 * cover
    assert pt.linear_probe(signal, cover)["auroc"] > 0.85
    assert abs(pt.linear_probe(noise, cover)["auroc"] - 0.5) < 0.08


def test_scikit_learn_probe_equals_the_hand_written_one() -> None:
    # The reference is the torch L-BFGS probe this replaced (commit 81caa24), on the same fixed features; the
    # objectives are the same, the solvers' tolerances differ (measured: |delta AUROC| <= 1.2e-5 on four sets).
    rng = np.random.default_rng(0)
    cover = (rng.random((40, 196)) < 0.1).astype(np.float32)
    feats = rng.normal(size=(40, 196, 16)).astype(np.float32)
    feats[..., 3] += 0.6 * cover
    feats[..., 5] -= 0.4 * cover
    got = pt.linear_probe(feats, cover)
    assert got["auroc"] == pytest.approx(0.6661024251268154, abs=1e-4)
    assert (got["n_train_patches"], got["n_test_patches"]) == (3920, 3920)
    assert got["positive_rate"] == pytest.approx(0.10459183901548386, abs=1e-7)


def test_cli_runs_and_reports(small_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dangerclip_cli.main import main

    out = tmp_path / "c.safetensors"
    rc = main(["pretrain", str(small_set), "-o", str(out), "--steps", "2", "--batch-size", "8", "--limit", "16"])
    assert rc == 0 and out.is_file()
    assert '"steps": 2' in capsys.readouterr().out


def test_caption_tags_name_visible_nouns_and_hypernyms() -> None:
    tags = pt.caption_tags(
        [{"kind": "knife", "visible": 3}, {"kind": "mug", "visible": 9}, {"kind": "rifle", "visible": 0}]
    )
    on = {w for w, t in zip(pt.TAG_WORDS, tags, strict=True) if t}
    assert on == {"knife", "mug", "weapon"}
    assert sum(pt.caption_tags([{"kind": "circle", "visible": 1}])) == 1


def test_word_grounding_prefers_the_patch_that_matches() -> None:
    torch.manual_seed(0)
    words = F.normalize(torch.randn(3, 8), dim=-1)
    background = torch.randn(2, 10, 8) * 0.1
    patches = background.clone()
    patches[0, 4] = words[1] * 3  # image 0 holds word 1 in one patch
    tags = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    g = pt.WordGrounding()
    assert g(patches, words, tags) < g(background, words, tags)


def test_in_memory_stream_is_the_generator_and_ignores_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from training.pretrain import captions
    from training.synth import make_sample

    monkeypatch.setattr(captions, "_STREAM_CHUNK", 10)  # three work units
    one = pt.synthetic_caption_data(25, 77, workers=1)
    two = pt.synthetic_caption_data(25, 77, workers=2)
    assert torch.equal(one.images, two.images) and torch.equal(one.hard_tokens, two.hard_tokens)
    assert one.captions == two.captions and torch.equal(one.tags, two.tags)
    s = make_sample(13, SynthConfig(n=25, seed=77))
    assert one.captions[13] == s.caption
    assert np.array_equal(one.images[13].numpy(), np.asarray(s.image))
    assert one.captions != pt.synthetic_caption_data(25, 78).captions


def test_grey_share_of_the_stream_is_grey_with_colourless_captions_and_leaves_the_rest_alone() -> None:
    from training.synth import COLOURS

    colour = pt.synthetic_caption_data(30, 77)
    mixed = pt.synthetic_caption_data(30, 77, grayscale=0.5, workers=2)
    grey = [i for i in range(30) if not torch.equal(colour.images[i], mixed.images[i])]
    assert 5 <= len(grey) <= 25
    for i in range(30):
        im = mixed.images[i]
        if i in grey:
            # Three equal channels (what a greyscale upload decodes to), and no colour word to match.
            assert torch.equal(im[..., 0], im[..., 1]) and torch.equal(im[..., 1], im[..., 2])
            words = set(mixed.captions[i].replace(",", "").split())
            assert not words & set(COLOURS), mixed.captions[i]
            assert set(colour.captions[i].replace(",", "").split()) - words  # the colour caption had some
        else:
            assert mixed.captions[i] == colour.captions[i]
            a, b = mixed.hard_tokens[i], colour.hard_tokens[i]  # padded to each set's longest caption
            assert torch.equal(a[a != 0], b[b != 0])
    # The nouns, and so the word-grounding targets, do not change.
    assert torch.equal(mixed.tags, colour.tags)


def test_pretraining_the_conv_stem_config_reduces_the_loss() -> None:
    from dangerclip.modeling.backbone import ConvStem

    torch.manual_seed(0)
    clip = pt.build_clip("demo", seed=0)
    assert isinstance(clip.visual.conv1, ConvStem)
    data = pt.synthetic_caption_data(16, 5)
    # "auto" takes the CPU where there is no CUDA; the model comes back on the CPU in eval mode either way.
    cfg = pt.PretrainConfig(steps=12, batch_size=16, lr=1e-3, warmup=2, decay_steps=1000, device="auto")
    res = pt.pretrain(clip, data, cfg)
    assert res.steps == 12 and np.mean(res.losses[-3:]) < np.mean(res.losses[:3])
    assert next(clip.parameters()).device.type == "cpu" and not clip.training
