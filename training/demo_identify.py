"""``dangerclip demo-identify``: the identification stage's offline demo assets, built by one cached command.

From the synthetic fine-grained firearm set (``dangerclip firearms``) it trains the two served models of the
stage — a firearm-type head (``dangerclip types train``) and a DeepFirearm retrieval embedder (``dangerclip
retrieval train``) — and writes, into ``dangerclip/assets/identify/``:

- ``type_head.onnx`` and ``embedder.onnx`` (their cards hold the classes, calibration and match distance);
- ``catalogue/<model>.jpg``: one reference picture per firearm model, which ``dangerclip demo`` indexes (PDQ and
  embeddings) at start, as an investigator indexes a catalogue;
- ``samples/*.jpg``: uploads the demo streams: new pictures of catalogued models, one look-alike, and one
  catalogue picture re-encoded (a known picture);
- ``report.md`` / ``report.json``: the held-out figures of both models, honest about the synthetic data.

Each step is skipped when its output exists (``--force`` redoes all).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from dangerclip.runtime.commandline import add_options, exits_2_on_bad_input, given_options
from dangerclip.runtime.files import atomic_write_text, write_json

log = logging.getLogger(__name__)
ASSETS = Path(__file__).resolve().parents[1] / "dangerclip" / "assets" / "identify"


@dataclass
class IdentifyDemoConfig:
    work: str = "runs/demo-identify"
    """Working folder (data, runs); reused between invocations."""
    assets: str = str(ASSETS)
    """Where the models, the catalogue, the samples and the report are written."""
    per_family: int = 10
    """Firearm models per family (six families)."""
    images_per_model: int = 40
    """Pictures per model."""
    size: int = 96
    """Side of the generated pictures (px)."""
    seed: int = 7
    """Seed of the catalogue, the pictures and the training runs."""
    type_backbone: str = "resnet-small"
    """Type head backbone (``dangerclip types``)."""
    type_method: str = "supervised"
    """Type head pre-training method."""
    type_epochs: int = 15
    """Type head pre-training epochs."""
    type_finetune_epochs: int = 10
    """Type head fine-tuning epochs."""
    retrieval_cls_epochs: int = 12
    """Embedder stage-1 (classification) epochs."""
    retrieval_pair_epochs: int = 8
    """Embedder stage-2 (pairs) epochs."""
    workers: int = 2
    """Processes drawing pictures."""

    def validate(self) -> None:
        """Raises ValueError on a setting that cannot work, before anything is drawn or trained."""
        from training.ssl.config import check_method

        try:  # the type head's own checks (a known backbone and method, and one that fits the other)
            check_method(self.type_backbone, self.type_method)
        except ValueError as e:
            raise ValueError(f"type head: {e}") from None
        if self.per_family < 3 or self.images_per_model < 4:
            raise ValueError("need at least 3 models per family and 4 images per model (2 are queries)")


def build(cfg: IdentifyDemoConfig, force: bool = False) -> dict[str, Any]:
    """Every step (reusing finished ones); returns the report written into ``cfg.assets``."""
    cfg.validate()
    from training.firearms.catalogue import make_catalogue
    from training.firearms.dataset import FirearmsConfig, generate
    from training.retrieval.train import RetrievalConfig
    from training.retrieval.train import train as train_retrieval
    from training.ssl.config import TypeConfig
    from training.ssl.run import run as train_types

    work, assets = Path(cfg.work), Path(cfg.assets)
    if force and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "firearms"
    fcfg = FirearmsConfig(
        per_family=cfg.per_family, images_per_model=cfg.images_per_model, size=cfg.size, seed=cfg.seed
    )
    t0 = time.perf_counter()
    if not (data / "retrieval.json").is_file():
        generate(data, fcfg, workers=cfg.workers)
    seconds = {"data": round(time.perf_counter() - t0, 1)}

    types_out = work / "types"
    if not (types_out / "metrics.json").is_file():
        t0 = time.perf_counter()
        train_types(
            TypeConfig(
                data=str(data / "types"),
                out=str(types_out),
                backbone=cfg.type_backbone,
                method=cfg.type_method,
                epochs=cfg.type_epochs,
                finetune_epochs=cfg.type_finetune_epochs,
                seed=cfg.seed,
                device="cpu",
            )
        )
        seconds["types"] = round(time.perf_counter() - t0, 1)
    types = json.loads((types_out / "metrics.json").read_text())

    retr_out = work / "retrieval"
    if not (retr_out / "metrics.json").is_file():
        t0 = time.perf_counter()
        train_retrieval(
            RetrievalConfig(
                data=str(data),
                out=str(retr_out),
                image_size=cfg.size,
                cls_epochs=cfg.retrieval_cls_epochs,
                pair_epochs=cfg.retrieval_pair_epochs,
                seed=cfg.seed,
            )
        )
        seconds["retrieval"] = round(time.perf_counter() - t0, 1)
    retr = json.loads((retr_out / "metrics.json").read_text())

    if assets.exists():
        shutil.rmtree(assets)
    (assets / "catalogue").mkdir(parents=True)
    (assets / "samples").mkdir()
    shutil.copy(types_out / "type_head.onnx", assets / "type_head.onnx")
    from dangerclip.runtime.typehead import TypeHead

    head = TypeHead(assets / "type_head.onnx")
    shutil.copy(retr_out / "embedder.onnx", assets / "embedder.onnx")
    models = make_catalogue(cfg.per_family, cfg.seed, fcfg.spread)
    for m in models:  # the catalogue: each model's first picture
        shutil.copy(data / "images" / m.name / "000.jpg", assets / "catalogue" / f"{m.name}.jpg")
    samples = _samples(models, data, assets / "samples", cfg)
    report = {
        "command": "dangerclip demo-identify",
        "config": asdict(cfg),
        "types": {
            "test_accuracy": types["served"]["test_accuracy"],
            "ece": types["served"]["ece_after"],
            "confidence": types["served"]["confidence"],
            "classes": head.card.classes,
            "look_alike": head.card.look_alike,
        },
        "retrieval": {"test": retr["test"], "match_distance": retr["match_distance"]},
        "samples": samples,
        "seconds": seconds,
        "files": {p.name: p.stat().st_size for p in (assets / "type_head.onnx", assets / "embedder.onnx")},
        "note": "synthetic pictures only: these figures show the stage working, not accuracy on real firearms",
    }
    write_json(assets / "report.json", report, indent=1)
    atomic_write_text(assets / "report.md", _markdown(report))
    log.info("identification demo assets written to %s", assets)
    return report


def _samples(models: list[Any], data: Path, out: Path, cfg: IdentifyDemoConfig) -> dict[str, str]:
    """Uploads for the demo: unseen pictures of a few models (one per family), and a catalogue picture
    re-encoded larger (the index knows that very picture)."""
    from training.firearms.draw import draw_image

    picked: dict[str, Any] = {}
    for m in models:
        picked.setdefault(m.family, m)
    what: dict[str, str] = {}
    for family, m in picked.items():
        name = f"firearm_{family}.jpg"
        draw_image(m, cfg.seed * 100_000 + 50_000, cfg.size * 2).save(out / name, quality=88)
        what[name] = f"a new picture of {m.name}"
    ref = models[0]
    with Image.open(data / "images" / ref.name / "000.jpg") as im:
        buf = io.BytesIO()
        im.convert("RGB").resize((cfg.size * 3 // 2,) * 2).save(buf, "JPEG", quality=70)
    (out / "firearm_known_picture.jpg").write_bytes(buf.getvalue())
    what["firearm_known_picture.jpg"] = f"catalogue picture of {ref.name}, re-encoded larger"
    write_json(out.parent / "samples.json", what, indent=1)
    return what


def _fmt(x: Any) -> str:
    return "–" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


def _markdown(r: dict[str, Any]) -> str:
    full = next(iter(r["retrieval"]["test"].values()))
    lines = [
        "# Identification stage: offline demo assets",
        "",
        f"Built by `{r['command']}` (`training/demo_identify.py`). {r['note'][0].upper()}{r['note'][1:]}.",
        "",
        "| model | held-out figure |",
        "|---|---|",
        f"| type head ({r['config']['type_backbone']}, {r['config']['type_method']}) | test accuracy "
        f"{_fmt(r['types']['test_accuracy'])} over {len(r['types']['classes'])} types, ECE {_fmt(r['types']['ece'])} |",
        f"| retrieval embedder (small, cls + double margin) | test mAP {_fmt(full['mAP'])}, rank-1 "
        f"{_fmt(full['rank1'])} (classes unseen in training); match distance {_fmt(r['retrieval']['match_distance'])}"
        " (90 % precision on val pairs) |",
        "",
        f"Types: {', '.join(r['types']['classes'])}. Files: "
        + ", ".join(f"`{k}` ({v / 2**20:.1f} MB)" for k, v in r["files"].items())
        + f". Build seconds: {json.dumps(r['seconds'])}.",
        "",
        "Samples the demo streams:",
        "",
        *[f"- `{k}`: {v}" for k, v in r["samples"].items()],
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, IdentifyDemoConfig)
    parser.add_argument("--force", action="store_true", help="redo every step")


@exits_2_on_bad_input("demo-identify")
def run(args: argparse.Namespace) -> int:
    report = build(IdentifyDemoConfig(**given_options(IdentifyDemoConfig, args)), force=args.force)
    print(json.dumps({k: report[k] for k in ("types", "retrieval", "seconds")}, indent=1, default=str))
    return 0
