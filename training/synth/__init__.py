"""Synthetic weapon / distractor images with exact masks and captions (``dangerclip synth``).

Each image is a textured background with a little clutter and one to four flat-coloured objects drawn as
polygons: *weapons* (pistol, revolver, rifle, knife, dagger — each a procedural shape with randomised
proportions) and *distractors* (circle, box, phone, bottle, umbrella, mug, spoon, star). Every object gets
a random pose (rotation, mirror), scale, position and colour; weapons and distractors are drawn from the
same colour and size distributions so that neither colour nor size gives the label away.

The masks are exact: the generator keeps an owner map (which object painted each pixel, after
occlusion), and a category's mask is the set of pixels whose visible owner belongs to that category, at the
image's full resolution. Captions ("a red pistol and a blue circle on a striped background") are written
for the contrastive pre-training of the tiny demo CLIP (``training.pretrain``).

**This data makes the pipeline testable offline; it is not a claim about real images.** A model that
does well here has learnt to tell these procedural silhouettes apart, nothing more.

Everything is deterministic: image ``i`` of a dataset depends only on ``(seed, i)`` and the options, so
a dataset can be regenerated, extended, or generated in parallel with identical bytes.

Output layout (``dangerclip synth OUT``)::

    OUT/manifest.jsonl        one row per image (dangerclip.runtime.manifest format + caption/objects/background)
    OUT/images/000000.jpg     the images
    OUT/masks/000000_gun.png  one 1-bit mask per image and category (all zero for negatives)
    OUT/synth.json            the options the set was generated with

Modules: ``vocabulary`` (shapes, categories, colours), ``shapes`` (the polygons), ``config``
(``SynthConfig``), ``scene`` (drawing one image: ``make_sample``), ``dataset`` (``generate``), ``samples``
(the demo's sample images), ``cli`` (``dangerclip synth``). The names below are the package's API.
"""

from dangerclip.modeling.device import map_in_processes
from training.synth.cli import add_arguments, config_from_args, run
from training.synth.config import SynthConfig
from training.synth.dataset import JPEG_QUALITY, generate, jpeg_bytes, redraw_split
from training.synth.samples import SAMPLE_FORMATS, SAMPLE_SEED, encode_sample, write_samples
from training.synth.scene import SynthObject, SynthSample, caption_for, make_sample, split_of
from training.synth.vocabulary import BACKGROUNDS, CATEGORY_KINDS, COLOURS, DISTRACTOR_KINDS, WEAPON_KINDS

__all__ = [
    "BACKGROUNDS",
    "CATEGORY_KINDS",
    "COLOURS",
    "DISTRACTOR_KINDS",
    "JPEG_QUALITY",
    "SAMPLE_FORMATS",
    "SAMPLE_SEED",
    "WEAPON_KINDS",
    "SynthConfig",
    "SynthObject",
    "SynthSample",
    "add_arguments",
    "caption_for",
    "config_from_args",
    "encode_sample",
    "generate",
    "jpeg_bytes",
    "make_sample",
    "map_in_processes",
    "redraw_split",
    "run",
    "split_of",
    "write_samples",
]
