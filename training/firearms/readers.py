"""The retrieval layouts users bring, read into one shape (:class:`RetrievalSet`): the classes of each split, the
image files of each class, and which of a val/test class's images are its queries.

- a ``dangerclip firearms`` folder: ``images/<model>/*.jpg``, ``retrieval.json`` (the split), ``catalogue.json``
  (each model's family);
- Firearm 14k's retrieval release (DeepFirearm, ``firearm-dataset``): ``train/<class>/*.jpg``, and ``val/`` and
  ``test/`` each with ``database_image/*.jpg``, ``query_info/query_image/*.jpg`` and
  ``query_info/ground_truth_info.json`` (``{query file: [database files of its class]}``). Its val and test
  classes have no names: a class is the database images a query's ground truth lists (the two queries of a class
  list the same ones), and a database image no query lists is a distractor, a class of its own with no query;
- a folder per class (``<class>/*.jpg``, CrawledFirearmsRGB-style or a user's own): classes go whole to train, val
  or test (classes disjoint across splits, as the paper), and two images of each val/test class are its queries,
  removed from the database.

Evaluation relevance is "same class" in all three, so mAP and CMC mean what the paper's do.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from dangerclip.runtime.preprocess import IMAGE_SUFFIXES

SPLITS = ("train", "val", "test")


@dataclass
class RetrievalSet:
    """A retrieval data set, whatever layout it came from.

    Attributes:
        classes: ``{split: [class, ...]}`` for train, val and test; no class is in two splits.
        images: ``{class: [image file, ...]}``.
        queries: ``{class: [index into images[class], ...]}`` for val and test classes (the rest is the database).
        family: ``{class: family}`` where known (the synthetic set); stage 2 draws half its negatives from it.
        layout: which reader read it.
    """

    classes: dict[str, list[str]]
    images: dict[str, list[Path]]
    queries: dict[str, list[int]]
    family: dict[str, str] = field(default_factory=dict)
    layout: str = ""

    def check(self) -> RetrievalSet:
        """Raises ValueError when the set cannot be trained and evaluated on (the message says what is short)."""
        seen: dict[str, str] = {}
        for split in SPLITS:
            for c in self.classes.get(split, []):
                if c in seen:
                    raise ValueError(f"class {c!r} is in both {seen[c]} and {split}: splits must not share classes")
                seen[c] = split
        if len(self.classes.get("train", [])) < 2:
            raise ValueError(
                f"{self.layout}: need at least 2 train classes, found {len(self.classes.get('train', []))}"
            )
        for split in ("val", "test"):
            if not any(self.queries.get(c) for c in self.classes.get(split, [])):
                raise ValueError(f"{self.layout}: the {split} split has no query")
        short = [c for c in self.classes["train"] if len(self.images[c]) < 2]
        if short:
            raise ValueError(f"{self.layout}: train classes need 2 images or more for pairs; {short[:5]} have fewer")
        return self

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            s: {
                "classes": len(cs),
                "images": sum(len(self.images[c]) for c in cs),
                "queries": sum(len(self.queries.get(c, [])) for c in cs),
            }
            for s, cs in self.classes.items()
        }


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_synthetic(root: str | Path) -> RetrievalSet:
    """A ``dangerclip firearms`` folder."""
    root = Path(root)
    split = json.loads((root / "retrieval.json").read_text())
    family = {m["name"]: m["family"] for m in json.loads((root / "catalogue.json").read_text())}
    classes = {s: list(split["classes"][s]) for s in SPLITS}
    images = {c: _images(root / "images" / c) for cs in classes.values() for c in cs}
    queries = {k: list(v) for k, v in split["queries"].items()}
    return RetrievalSet(classes, images, queries, family, layout="dangerclip firearms").check()


def read_firearm14k(root: str | Path) -> RetrievalSet:
    """Firearm 14k's retrieval release (see the module's docstring)."""
    root = Path(root)
    classes: dict[str, list[str]] = {s: [] for s in SPLITS}
    images: dict[str, list[Path]] = {}
    queries: dict[str, list[int]] = {}
    for d in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        found = _images(d)
        if found:
            classes["train"].append(d.name)
            images[d.name] = found
    for split in ("val", "test"):
        base = root / split
        db = {p.name: p for p in _images(base / "database_image")}
        qdir = base / "query_info" / "query_image"
        qs = {p.name: p for p in _images(qdir)}
        truth = json.loads((base / "query_info" / "ground_truth_info.json").read_text())
        groups: dict[frozenset[str], list[str]] = {}  # the database images of a class -> its queries
        for q in sorted(qs):
            if q not in truth:
                raise ValueError(f"{qdir / q}: no entry in ground_truth_info.json")
            unknown = [n for n in truth[q] if n not in db]
            if unknown:
                raise ValueError(f"ground truth of {q} names {unknown[:3]}, not in {base / 'database_image'}")
            groups.setdefault(frozenset(truth[q]), []).append(q)
        owner: dict[str, str] = {}
        for k, (members, qnames) in enumerate(sorted(groups.items(), key=lambda g: sorted(g[1]))):
            name = f"{split}:{k:03d}"
            overlap = [n for n in members if n in owner]
            if overlap:
                raise ValueError(f"{split}: {overlap[0]} is in the ground truth of two different query classes")
            owner.update(dict.fromkeys(members, name))
            classes[split].append(name)
            images[name] = [qs[q] for q in sorted(qnames)] + [db[n] for n in sorted(members)]
            queries[name] = list(range(len(qnames)))
        for n in sorted(set(db) - set(owner)):  # distractors: database images no query is about
            name = f"{split}:distractor:{n}"
            classes[split].append(name)
            images[name] = [db[n]]
    return RetrievalSet(classes, images, queries, layout="Firearm 14k").check()


def read_class_folders(
    root: str | Path, val: float = 0.15, test: float = 0.25, seed: int = 0, queries_per_class: int = 2
) -> RetrievalSet:
    """A folder per class. Classes with fewer than ``queries_per_class + 1`` images only train; the rest are drawn
    whole into val and test (``val``, ``test``: shares of those classes, at least one each)."""
    root = Path(root)
    images = {d.name: _images(d) for d in sorted(p for p in root.iterdir() if p.is_dir())}
    images = {c: v for c, v in images.items() if v}
    rng = random.Random(f"retrieval-split:{seed}")
    eligible = [c for c, v in images.items() if len(v) > queries_per_class]
    rng.shuffle(eligible)
    if len(eligible) < 4:
        raise ValueError(
            f"{root}: need at least 4 classes with more than {queries_per_class} images each (2 to train, 1 val, "
            f"1 test); found {len(eligible)} of {len(images)} classes"
        )
    n_test = max(1, round(len(eligible) * test))
    n_val = max(1, round(len(eligible) * val))
    classes = {
        "test": sorted(eligible[:n_test]),
        "val": sorted(eligible[n_test : n_test + n_val]),
        "train": sorted(set(images) - set(eligible[: n_test + n_val])),
    }
    queries = {
        c: sorted(rng.sample(range(len(images[c])), queries_per_class)) for s in ("val", "test") for c in classes[s]
    }
    return RetrievalSet(classes, images, queries, layout="folder per class").check()


def read_retrieval_set(root: str | Path, seed: int = 0) -> RetrievalSet:
    """Whichever of the three layouts ``root`` is.

    Raises:
        ValueError: ``root`` is none of them, or too small to train and evaluate on (the message says why).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    if (root / "retrieval.json").is_file():
        return read_synthetic(root)
    if (root / "test" / "database_image").is_dir():
        return read_firearm14k(root)
    if any(p.is_dir() for p in root.iterdir()):
        return read_class_folders(root, seed=seed)
    raise ValueError(
        f"{root}: not a retrieval set (a `dangerclip firearms` folder, Firearm 14k's train/ val/ test/ release, "
        "or a folder per class)"
    )
