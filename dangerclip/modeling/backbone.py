"""The frozen CLIP: building it, loading its weights, and reading dense patch tokens from it.

Dense tokens follow MaskCLIP: in the last vision block the patch tokens skip the query–key attention and take
only its value path (``ln_1`` → value projection → ``out_proj``), then the block's residual and MLP, then
``ln_post`` and ``proj``. That puts every patch in CLIP's joint image–text space, where a text embedding can be
matched against it. The class token takes the ordinary path, so the global embedding is exactly
``encode_image``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """The CLIP weights asked for cannot be had, or are not what they should be."""


def state_dict_sha256(module: nn.Module) -> str:
    """A hash of a module's weights: names, dtypes, shapes and bytes, in name order.

    Independent of device and of how the weights were stored, so a checkpoint can recognise its backbone.
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


QUICK_GELU_TAGS = frozenset({"openai"})
"""Pretrained tags whose weights were trained with QuickGELU, whatever the installed open_clip lists them under
(open_clip 3 lists ``openai`` under plain ``ViT-B-16`` too, and only warns when the activation is wrong)."""


def wants_quick_gelu(name: str, pretrained: str | None, default: bool = False) -> bool:
    """Whether an open_clip architecture must run QuickGELU for ``pretrained``.

    A known tag decides (OpenAI's, and every tag open_clip lists under ``<name>-quickgelu``); a local file or
    random weights take the config's ``quick_gelu`` (``default``).
    """
    path_like = "/" in pretrained if pretrained else False
    if not pretrained or path_like or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        return default
    if pretrained in QUICK_GELU_TAGS:
        return True
    import open_clip

    return any(n == f"{name}-quickgelu" and t == pretrained for n, t in open_clip.list_pretrained())


def architecture(clip: nn.Module) -> dict[str, Any]:
    """What the module *is*, read from it (not from the config that asked for it): the towers' shapes, the
    patch embedding and the MLP activation. Two CLIPs with equal architectures run the same function of their
    weights; ``state_dict_sha256`` cannot tell QuickGELU from GELU (neither has parameters), this can."""
    v = clip.visual
    blocks = v.transformer.resblocks
    size = v.image_size
    patch = v.patch_size

    def act(block: nn.Module) -> str:
        return type(getattr(block.mlp, "gelu", None) or block.mlp[1]).__name__

    text = getattr(clip, "transformer", None)
    return {
        "embed_dim": int(v.proj.shape[1]),
        "activation": act(blocks[0]),
        "vision": {
            "width": int(v.transformer.width),
            "layers": len(blocks),
            "heads": int(blocks[0].attn.num_heads),
            "patch_size": int(patch[0] if isinstance(patch, (tuple, list)) else patch),
            "image_size": int(size[0] if isinstance(size, (tuple, list)) else size),
            "stem": type(v.conv1).__name__,
        },
        "text": None if text is None else {"width": int(text.width), "layers": len(text.resblocks)},
    }


def architecture_id(clip: nn.Module) -> str:
    """``<activation>-<12 hex of the architecture's sha256>``: short, and names the activation for people."""
    arch = architecture(clip)
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:12]
    return f"{arch['activation'].lower()}-{digest}"


def build_clip(clip_cfg: Mapping[str, Any], pretrained: str | None = None, quick_gelu: bool | None = None) -> nn.Module:
    """Build an open_clip ``CLIP`` from a DangerCLIP config's ``clip`` section.

    Args:
        clip_cfg: either ``{"open_clip": NAME}`` for an architecture open_clip knows, or open_clip's own
            ``embed_dim`` / ``vision_cfg`` / ``text_cfg`` for a custom one.
        pretrained: ``None`` or ``""`` for random weights; an open_clip pretrained tag (``openai``); or a
            local weights file (open_clip checkpoint, torch state dict or safetensors).

    The activation follows the weights: QuickGELU for the tags trained with it (:func:`wants_quick_gelu`),
    else the config's ``quick_gelu``; ``quick_gelu`` given here overrides both (a checkpoint rebuilding the
    architecture its card records).

    Raises:
        BackboneError: the file is missing or does not hold this architecture's weights, or the tag cannot
            be fetched.
    """
    import open_clip

    local = _as_local_file(pretrained)
    if "open_clip" in clip_cfg:
        name = str(clip_cfg["open_clip"])
        quick = wants_quick_gelu(name, pretrained, bool(clip_cfg.get("quick_gelu", False)))
        quick = quick if quick_gelu is None else quick_gelu
        if name not in open_clip.list_models():
            raise BackboneError(f"open_clip has no architecture {name!r}")
        if pretrained and local is None:
            tags = [t for n, t in open_clip.list_pretrained() if n == name]
            if pretrained not in tags:
                raise BackboneError(
                    f"{pretrained!r} is neither a file nor an open_clip pretrained tag for {name}; tags: {tags}"
                )
            try:
                clip = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=quick)
            except Exception as e:  # noqa: BLE001 - hub errors come in many types; all mean "not here"
                raise BackboneError(
                    f"could not fetch open_clip weights {name}/{pretrained} ({type(e).__name__}: {e}). "
                    "Without network, download them elsewhere and pass the local file path instead."
                ) from e
        else:
            clip = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick)
    else:
        from open_clip.model import CLIP

        vision_cfg = dict(clip_cfg["vision_cfg"])
        stem = vision_cfg.pop("conv_stem", None)
        clip = CLIP(
            embed_dim=int(clip_cfg["embed_dim"]),
            vision_cfg=vision_cfg,
            text_cfg=dict(clip_cfg["text_cfg"]),
            quick_gelu=bool(clip_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu,
        )
        if stem:
            # Hybrid ViT (Dosovitskiy et al. 2021, sec. 3.1): convolutions make the patch tokens, then the
            # transformer runs unchanged. open_clip calls ``visual.conv1`` for the patch embedding, so
            # swapping that one module is all it takes (the MaskCLIP dense path is the same).
            clip.visual.conv1 = ConvStem(stem, int(vision_cfg["width"]), int(vision_cfg["patch_size"]))
    if local is not None:
        load_clip_weights(clip, local)
    return clip


SUPPORTED_SIZES = (224, 336, 448)
"""Input sides a model is created, trained, exported and served at (any multiple of the patch size works)."""


def set_resolution(clip: nn.Module, image_size: int) -> nn.Module:
    """Run ``clip``'s vision tower at ``image_size`` px: position embeddings interpolated bicubically to the new
    patch grid (the class token's kept), as ZegCLIP and MaskCLIP do to run CLIP at 512 px.

    Deterministic, so a checkpoint rebuilds the same weights (and weight hash) from the original ones. A no-op
    at the native size.

    Raises:
        ValueError: ``image_size`` is not a multiple of the patch size.
    """
    v = clip.visual
    patch = v.patch_size[0] if isinstance(v.patch_size, (tuple, list)) else v.patch_size
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    grid = image_size // patch
    old = v.grid_size[0] if isinstance(v.grid_size, (tuple, list)) else v.grid_size
    if grid == old:
        return clip
    pos = v.positional_embedding.detach()
    cls, patches = pos[:1], pos[1:]
    width = patches.shape[-1]
    patches = patches.reshape(1, old, old, width).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid * grid, width).to(pos.dtype)
    v.positional_embedding = nn.Parameter(torch.cat([cls, patches]), requires_grad=False)
    v.grid_size = (grid, grid)
    v.image_size = (image_size, image_size)
    if hasattr(v, "preprocess_cfg") and isinstance(v.preprocess_cfg, dict):
        v.preprocess_cfg = {**v.preprocess_cfg, "size": (image_size, image_size)}
    return clip


class ConvStem(nn.Module):
    """A small convolutional patch embedding: ``[B, 3, S, S] -> [B, width, S/patch, S/patch]``.

    Stages of (3×3 stride-2 conv, BatchNorm, ReLU, 3×3 conv, BatchNorm, ReLU) with the given channels, then
    a linear ``k×k`` stride-``k`` conv to ``width`` for the remaining factor ``k = patch / 2**stages``.
    Early convolutions (Xiao et al. 2021) make a small ViT learn shapes from far fewer images than a
    linear 16×16 patch projection, which matters for a backbone trained from scratch on synthetic data.
    """

    def __init__(self, channels: Sequence[int], width: int, patch_size: int) -> None:
        super().__init__()
        k = patch_size // 2 ** len(channels)
        if k < 1 or k * 2 ** len(channels) != patch_size:
            raise ValueError(f"conv_stem {list(channels)} does not divide patch_size {patch_size}")
        layers: list[nn.Module] = []
        c = 3
        for o in channels:
            layers += [
                nn.Conv2d(c, o, 3, 2, 1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, 1, 1, bias=False),
                nn.BatchNorm2d(o),
                nn.ReLU(inplace=True),
            ]
            c = o
        layers.append(nn.Conv2d(c, width, k, k))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _as_local_file(pretrained: str | None) -> Path | None:
    if not pretrained:
        return None
    p = Path(pretrained).expanduser()
    looks_like_path = p.suffix in (".pt", ".pth", ".bin", ".safetensors") or "/" in pretrained
    if p.is_file():
        return p
    if looks_like_path:
        raise BackboneError(f"CLIP weights file not found: {p}")
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a torch checkpoint (``state_dict`` nesting and ``module.`` stripped)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path))
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for non-checkpoints
            raise BackboneError(f"{path} is not a readable torch checkpoint: {e}") from e
        if isinstance(sd, Mapping) and "state_dict" in sd:
            sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise BackboneError(f"{path} does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


def load_clip_weights(clip: nn.Module, path: str | Path, *, visual_only: bool = False) -> None:
    """Load a CLIP state dict into ``clip``; the file must match the architecture exactly.

    Args:
        visual_only: the file holds only the vision tower (``visual.*``), as DangerCLIP checkpoints do.
    """
    sd = read_state_dict(path)
    target = clip.visual if visual_only else clip
    if visual_only:
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    expected = target.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise BackboneError(
            f"{path} does not hold the weights of this CLIP architecture: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} with other shapes (e.g. {wrong[:3]})"
        )
    target.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()})


class DenseCLIP(nn.Module):
    """A frozen open_clip CLIP that returns the global embedding and dense patch tokens.

    It stays in eval mode and its weights never take gradients, whatever the enclosing module does.

    Args:
        clip: an open_clip ``CLIP`` with a ViT vision tower (class-token pooling, no attentional pooler).
        name: architecture name (for the model card).
        pretrained: where the weights came from (tag or path, ``""`` for random).
    """

    def __init__(self, clip: nn.Module, name: str, pretrained: str = "") -> None:
        super().__init__()
        visual = getattr(clip, "visual", None)
        if visual is None or not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise BackboneError("DenseCLIP needs an open_clip CLIP with a ViT vision tower")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise BackboneError("DenseCLIP supports class-token pooling only (no attentional pooler)")
        if getattr(visual, "final_ln_after_pool", False):
            raise BackboneError("DenseCLIP does not support final_ln_after_pool vision towers")
        last = visual.transformer.resblocks[-1]
        if not isinstance(last.attn, nn.MultiheadAttention):
            raise BackboneError("DenseCLIP supports open_clip's default residual attention blocks only")
        self.clip = clip
        self.name = name
        self.pretrained = pretrained or ""
        self.text_loaded = True
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()
        self._sha256: str | None = None

    def train(self, mode: bool = True) -> DenseCLIP:
        # Frozen: BatchNorm-free, dropout-free behaviour regardless of the parent's mode.
        super().train(False)
        return self

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.proj.shape[1])

    @property
    def image_size(self) -> int:
        s = self.clip.visual.image_size
        return int(s[0] if isinstance(s, (tuple, list)) else s)

    @property
    def grid(self) -> tuple[int, int]:
        g = self.clip.visual.grid_size
        return int(g[0]), int(g[1])

    @property
    def arch(self) -> str:
        """The architecture id (:func:`architecture_id`): activation and shapes, which the weights' hash misses."""
        return architecture_id(self.clip)

    @property
    def sha256(self) -> str:
        """Hash of the vision tower's weights (what the head depends on); cached."""
        if self._sha256 is None:
            self._sha256 = state_dict_sha256(self.clip.visual)
        return self._sha256

    @torch.no_grad()
    def encode_dense(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global embedding and dense patch tokens.

        Args:
            images: ``[B, 3, S, S]`` preprocessed images.

        Returns:
            ``g [B, D]``, the L2-normalised global embedding (``encode_image`` normalised), and
            ``patches [B, N, D]``, joint-space patch tokens (not normalised), ``N = h * w`` row-major.
        """
        g, patches = dense_forward(self.clip, images)
        return F.normalize(g, dim=-1), patches

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """L2-normalised text embeddings ``[k, D]``, one per prompt, averaged over the templates."""
        if not self.text_loaded:
            raise BackboneError("this backbone's text tower was not loaded (checkpoint holds the vision tower only)")
        import open_clip

        ctx = int(getattr(self.clip, "context_length", 77))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
        out = []
        for p in prompts:
            tokens = tokenizer([t.format(p) for t in templates])
            e = F.normalize(self.clip.encode_text(tokens.to(self._device())), dim=-1).mean(0)
            out.append(F.normalize(e, dim=-1))
        return torch.stack(out)

    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device


def dense_forward(
    clip: nn.Module, images: torch.Tensor, keep: int | None = None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The MaskCLIP reading of a CLIP vision tower, with gradients: what ``DenseCLIP.encode_dense`` serves and
    what pre-training (``training.pretrain``) trains, one computation for both.

    Args:
        images: ``[B, 3, S, S]`` preprocessed images.
        keep: if set, only this many randomly chosen patch tokens per image enter the transformer (FLIP's token
            masking, for pre-training at a fraction of the cost).
        generator: random source for the kept tokens.

    Returns:
        ``g [B, D]`` (``encode_image``, not normalised) and ``patches [B, N', D]`` (``N' = keep`` or ``N``).
    """
    v = clip.visual
    x = v._embeds(images)  # [B, 1+N, W] after ln_pre
    if keep is not None and keep < x.shape[1] - 1:
        b, n1, w = x.shape
        idx = (torch.rand(b, n1 - 1, generator=generator).argsort(1)[:, :keep] + 1).to(x.device)
        x = torch.cat([x[:, :1], x.gather(1, idx.unsqueeze(-1).expand(b, keep, w))], 1)
    blocks = v.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    last = blocks[-1]
    y = last.ln_1(x)
    w_q, w_k, w_v = last.attn.in_proj_weight.chunk(3, dim=0)
    b_q, b_k, b_v = last.attn.in_proj_bias.chunk(3, dim=0)
    # Class token: the block's ordinary attention, with the class token as the only query.
    cls = x[:, :1]
    attn = _attend(y[:, :1], y, last.attn.num_heads, (w_q, w_k, w_v), (b_q, b_k, b_v))
    cls = cls + last.ls_1(last.attn.out_proj(attn))
    cls = cls + last.ls_2(last.mlp(last.ln_2(cls)))
    # Patch tokens: value path only (MaskCLIP), then the same residual and MLP.
    pv = last.attn.out_proj(F.linear(y[:, 1:], w_v, b_v))
    pt = x[:, 1:] + last.ls_1(pv)
    pt = pt + last.ls_2(last.mlp(last.ln_2(pt)))
    return v.ln_post(cls[:, 0]) @ v.proj, v.ln_post(pt) @ v.proj


def _attend(
    q_x: torch.Tensor,
    kv_x: torch.Tensor,
    heads: int,
    w: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    bsz, lq, width = q_x.shape
    hd = width // heads
    q = F.linear(q_x, w[0], b[0]).view(bsz, lq, heads, hd).transpose(1, 2)
    k = F.linear(kv_x, w[1], b[1]).view(bsz, -1, heads, hd).transpose(1, 2)
    val = F.linear(kv_x, w[2], b[2]).view(bsz, -1, heads, hd).transpose(1, 2)
    a = torch.softmax((q @ k.transpose(-1, -2)) * hd**-0.5, dim=-1)
    return (a @ val).transpose(1, 2).reshape(bsz, lq, width)
