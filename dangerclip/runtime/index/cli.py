"""``dangerclip index``: build, change, query and inspect a known-content index; import and export hash banks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dangerclip.runtime.preprocess import IMAGE_SUFFIXES, load_image


def _images(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--index", required=True, help="index folder")

    b = sub.add_parser("build", help="a new index from images (replaces what the index held)")
    a = sub.add_parser("add", help="add images to the index")
    for p in (b, a):
        common(p)
        p.add_argument("images", nargs="+", help="image files or folders")
        p.add_argument("--label", help="label of every entry (default: the image's folder name)")
        p.add_argument("--threshold", type=int, default=31, help="PDQ distance for known_match (HMA: 31)")
    a.add_argument("--replace", action="store_true", help="overwrite entries whose id exists")
    q = sub.add_parser("query", help="nearest entries of images, as JSON lines")
    for p in (b, a, q):
        p.add_argument(
            "--qdrant",
            help="keep (build, add) or find (query) the vectors in Qdrant: http(s)://host:6333, or path:DIR for "
            "qdrant-client's local mode (default: a local faiss file; a change keeps the index's backend)",
        )
        p.add_argument(
            "--embedder",
            help="a retrieval embedder (dangerclip retrieval train's embedder.onnx): entries and queries get the "
            "embedding signal too (which firearm model, not only which picture)",
        )
    r = sub.add_parser("remove", help="remove entries by id")
    common(r)
    r.add_argument("ids", nargs="+")
    common(q)
    q.add_argument("images", nargs="+")
    q.add_argument("-k", type=int, default=5)
    s = sub.add_parser("stats", help="entries, labels, generation")
    common(s)
    i = sub.add_parser("import", help="add a PDQ hash bank (HMA/ThreatExchange: hash[,id[,label]] per line)")
    common(i)
    i.add_argument("bank")
    i.add_argument("--label")
    i.add_argument("--replace", action="store_true")
    e = sub.add_parser("export", help="write the index's hashes as a bank (CSV hash,id,label,quality)")
    common(e)
    e.add_argument("out")


def run(args: argparse.Namespace) -> int:
    from dangerclip.runtime.index.bank import read_bank, write_bank
    from dangerclip.runtime.index.store import IndexReader, IndexWriter, entry_for_image

    embedder = None
    if getattr(args, "embedder", None):
        from dangerclip.runtime.embedder import Embedder

        embedder = Embedder(args.embedder)
    if args.action in ("build", "add"):
        from dangerclip.runtime.index.store import embedder_identity

        paths = _images(args.images)
        entries, vecs = [], []
        for k in range(0, len(paths), 64):  # a chunk of images decoded at a time: bounded memory
            imgs = [load_image(p) for p in paths[k : k + 64]]
            for p, img in zip(paths[k : k + 64], imgs, strict=True):
                entries.append(entry_for_image(img, id=str(p), label=args.label or p.parent.name, source=str(p)))
            if embedder is not None:
                vecs.append(embedder.embed(imgs))
        emb = np.concatenate(vecs) if embedder is not None and vecs else None
        ident = embedder_identity(embedder.card) if embedder is not None else None
        if embedder is not None and emb is None:
            emb = np.zeros((0, embedder.dim), np.float32)
        w = IndexWriter(args.index, threshold=args.threshold, qdrant=args.qdrant)
        if args.action == "build":
            gen = w.write(entries, emb, ident)
        else:
            gen = w.add(entries, replace=args.replace, embeddings=emb, embedder=ident)
        print(json.dumps({"generation": gen.name, "added": len(entries), "entries": len(w.entries())}))
    elif args.action == "remove":
        gen, n = IndexWriter(args.index).remove(args.ids)
        print(json.dumps({"generation": gen.name, "removed": n}))
    elif args.action == "import":
        entries = read_bank(args.bank, label=args.label)
        w = IndexWriter(args.index)
        gen = w.add(entries, replace=args.replace)
        print(json.dumps({"generation": gen.name, "imported": len(entries)}))
    elif args.action == "export":
        n = write_bank(args.out, IndexWriter(args.index).entries())
        print(json.dumps({"out": args.out, "entries": n}))
    else:
        reader = IndexReader(args.index, embedder=embedder, qdrant=getattr(args, "qdrant", None))
        if args.action == "stats":
            print(json.dumps(reader.stats()))
            return 0
        paths = _images(args.images)
        for p, matches in zip(paths, reader.query_images([load_image(p) for p in paths], k=args.k), strict=True):
            known = any(m.signal == "pdq" and m.distance <= reader.threshold for m in matches)
            rows = [
                {"id": m.id, "label": m.label, "distance": m.distance, "signal": m.signal, "same_model": m.same_model}
                for m in matches
            ]
            print(json.dumps({"image": str(p), "known_match": known, "matches": rows}))
    return 0
