"""Contrastive image–caption pre-training of a small CLIP on synthetic captions (``dangerclip pretrain``).

Why this exists: the offline demo runs on a small CLIP for which no public weights exist. A head on a
*randomly initialised* frozen backbone cannot learn much, because random patch tokens carry almost no object
information (a linear probe separates weapon patches with AUROC ≈ 0.57–0.67). Real CLIP gets its features
from contrastive image–text training, so the demo backbone does the same on the synthetic set's captions
("a red pistol and a blue circle on a striped background"), and is then frozen for head training exactly as
the paper freezes ViT-B/16.

How much it takes (measured; see the ``demo_model`` docstring): the ``tiny`` config (linear 16×16 patch
embedding, 2 layers) barely learns shapes at all, even supervised on the weapon label (test AUROC 0.65 after
200 000 image views, ``bench/learnability.py``), so the demo uses the ``demo`` config, a hybrid ViT with a
convolutional stem (``dangerclip.modeling.backbone.ConvStem``). Its patch tokens reach probe AUROC 0.984 (random
init: 0.669) after 1.28 million image views of this pre-training (5 000 steps of 256): six minutes on an H100
(``device="cuda"``, bfloat16 autocast), about 16 hours on 2 CPU cores (22 views/s). The images are drawn
in memory by ``synthetic_caption_data`` (several processes), not written to disk.

What is trained and how:

* the whole CLIP (both towers), symmetric InfoNCE on the global embeddings (open_clip's ``ClipLoss``);
* *hard-negative captions* (as in NegCLIP): each image also meets its own caption with one object's noun
  swapped between the weapon and distractor vocabularies ("a red *bottle* and a blue circle ..."). Colours
  and backgrounds alone then no longer identify the caption, so the towers must learn the shapes;
* a *dense-pooled* contrastive term: the mean of the MaskCLIP dense patch tokens (the tokens the DangerCLIP
  head reads, see ``dangerclip.modeling.backbone.DenseCLIP.encode_dense``) is contrasted with the caption too, so the
  dense path is trained towards the joint space rather than being a by-product of the class token;
* a *word-grounding* term (``WordGrounding``): each caption noun, and its hypernym from a fixed word
  hierarchy (a pistol is a weapon), is matched against every patch token with a sigmoid loss and a smooth
  maximum over patches, as multiple-instance learning. A word can only score where some patch matches it,
  so object identity has to reach the dense tokens; this is what makes a short run useful to the head.

No masks and no dataset labels are used: the only supervision is the caption text, as for CLIP (the word
``weapon`` enters only as the hypernym of nouns the caption names). Pre-training
images must come from a set disjoint from the head's evaluation split (``demo_model`` uses another seed).

The result is a state dict of an open_clip ``CLIP`` of a DangerCLIP config (``tiny``, ``demo``), saved as
safetensors, which ``dangerclip.modeling.factory.create_model(NAME, pretrained=PATH)`` loads. ``linear_probe``
measures what it learnt: a logistic regression on frozen patch tokens, weapon vs other patches, AUROC on
held-out images.

This is a demonstration backbone for synthetic data, not a claim about real images.

Modules: ``config`` (``PretrainConfig``), ``captions`` (the data), ``clip`` (building, the dense forward pass
with gradients, weights files), ``losses``, ``loop`` (``pretrain``), ``measure`` (held-out retrieval, the
linear probe), ``cli`` (``dangerclip pretrain``). The names below are the package's API.
"""

from training.pretrain.captions import (
    HYPERNYMS,
    TAG_WORDS,
    CaptionData,
    caption_tags,
    hard_negative_caption,
    load_caption_data,
    synthetic_caption_data,
    tag_tokens,
)
from training.pretrain.cli import add_arguments, run
from training.pretrain.clip import (
    build_clip,
    dense_tokens,
    encode_text,
    load_clip,
    normalise,
    save_clip,
    tiny_clip_config,
)
from training.pretrain.config import PretrainConfig
from training.pretrain.loop import PretrainResult, pretrain
from training.pretrain.losses import WordGrounding, contrastive_loss
from training.pretrain.measure import contrastive_eval, linear_probe, patch_features, probe

__all__ = [
    "HYPERNYMS",
    "TAG_WORDS",
    "CaptionData",
    "PretrainConfig",
    "PretrainResult",
    "WordGrounding",
    "add_arguments",
    "build_clip",
    "caption_tags",
    "contrastive_eval",
    "contrastive_loss",
    "dense_tokens",
    "encode_text",
    "hard_negative_caption",
    "linear_probe",
    "load_caption_data",
    "load_clip",
    "normalise",
    "patch_features",
    "pretrain",
    "probe",
    "run",
    "save_clip",
    "synthetic_caption_data",
    "tag_tokens",
    "tiny_clip_config",
]
