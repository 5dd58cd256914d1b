"""``dangerclip pretrain``: pre-train a small CLIP on a synthetic manifest's captions and save its weights."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from dangerclip.modeling.device import torch_threads
from dangerclip.runtime.commandline import add_options, exits_2_on_bad_input, given_options
from training.pretrain.captions import load_caption_data
from training.pretrain.clip import build_clip, save_clip, tiny_clip_config
from training.pretrain.config import PretrainConfig
from training.pretrain.loop import pretrain
from training.pretrain.measure import contrastive_eval, probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="synthetic manifest.jsonl (from 'dangerclip synth') with captions")
    parser.add_argument("-o", "--out", required=True, help="output CLIP weights (.safetensors)")
    parser.add_argument("--config", default="tiny", help="DangerCLIP model config to pre-train (default tiny)")
    add_options(
        parser,
        PretrainConfig,
        flags={"time_limit_s": ("--time-limit-s", "--time-limit")},
        custom={"device": {"default": "auto"}},
    )
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--probe", default=None, help="manifest whose val/test images the linear probe uses")
    parser.add_argument("--probe-images", type=int, default=200, help="images of the linear probe (default 200)")


@exits_2_on_bad_input("pretrain")
def run(args: argparse.Namespace) -> int:
    """Pre-train on the manifest's train split, measure on its val/test split, save, print the report."""
    cfg = PretrainConfig(**given_options(PretrainConfig, args))
    with torch_threads(args.threads):
        clip = build_clip(args.config, seed=cfg.seed)
        size = int(tiny_clip_config(args.config)["vision_cfg"]["image_size"])
        data = load_caption_data(args.manifest, image_size=size, splits=("train",), seed=cfg.seed, limit=args.limit)
        report: dict[str, Any] = {"config": asdict(cfg), "images": len(data)}
        if args.probe:
            report["probe_before"] = probe(clip, args.probe, limit=args.probe_images)
        report["train"] = pretrain(clip, data, cfg).summary()
        held = load_caption_data(args.manifest, image_size=size, splits=("val", "test"), seed=cfg.seed + 1, limit=512)
        report["heldout"] = contrastive_eval(clip, held)
        if args.probe:
            report["probe_after"] = probe(clip, args.probe, limit=args.probe_images)
    save_clip(clip, args.out, metadata={"dangerclip.pretrain": json.dumps(report)})
    print(json.dumps(report, indent=2))
    return 0
