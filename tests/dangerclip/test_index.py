"""The known-content index: PDQ finds the same picture after a resize and a re-encode and not another, every
change is a new generation a reader sees whole or not at all, hash banks round-trip, and the command works."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dangerclip.runtime.index import IndexReader, IndexWriter
from dangerclip.runtime.index.bank import read_bank, write_bank
from dangerclip.runtime.index.pdq import DEFAULT_THRESHOLD, hamming, pdq_hash
from dangerclip.runtime.index.store import entry_for_image
from tests.support.models import export_embedder

pytest.importorskip("pdqhash")
pytest.importorskip("faiss")


def _picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(0, 280, 2))
        d.rectangle(
            [x0, y0, x0 + int(rng.integers(10, 90)), y0 + int(rng.integers(10, 90))],
            fill=tuple(int(v) for v in rng.integers(0, 255, 3)),
        )
    return im


def _reencoded(im: Image.Image, scale: float = 0.6, quality: int = 60) -> Image.Image:
    buf = io.BytesIO()
    im.resize((int(im.width * scale), int(im.height * scale)), Image.Resampling.BILINEAR).save(
        buf, "JPEG", quality=quality
    )
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _catalogue(tmp_path: Path, upload: int) -> None:
    """``catalogue/pistols/{0,1,2}.png``, and ``upload.jpg``: picture ``upload`` resized and re-encoded."""
    folder = tmp_path / "catalogue" / "pistols"
    folder.mkdir(parents=True)
    for i in range(3):
        _picture(i).save(folder / f"{i}.png")
    _reencoded(_picture(upload)).save(tmp_path / "upload.jpg")


def test_pdq_matches_the_same_picture_and_not_another():
    a, b = _picture(1), _picture(2)
    ha, qa = pdq_hash(a)
    assert len(ha) == 32 and qa >= 50
    assert hamming(ha, pdq_hash(_reencoded(a))[0]) <= DEFAULT_THRESHOLD
    assert hamming(ha, pdq_hash(b)[0]) > 2 * DEFAULT_THRESHOLD


def test_add_query_remove_and_reload(tmp_path: Path):
    pics = {f"ref-{i}": _picture(i) for i in range(20)}
    w = IndexWriter(tmp_path / "idx")
    w.write([entry_for_image(im, id=k, label="catalogue") for k, im in list(pics.items())[:10]])
    r = IndexReader(tmp_path / "idx")
    first = r.generation
    (top,) = r.query_images([_reencoded(pics["ref-3"])], k=3)
    assert top[0].id == "ref-3" and top[0].distance <= r.threshold and top[1].distance > r.threshold
    w.add([entry_for_image(im, id=k) for k, im in list(pics.items())[10:]])
    assert len(r) == 10 and r.reload_if_changed() and len(r) == 20 and r.generation != first
    with pytest.raises(ValueError, match="already in the index"):
        w.add([entry_for_image(pics["ref-1"], id="ref-1")])
    _, n = w.remove(["ref-3", "nope"])
    r.reload_if_changed()
    assert n == 1 and len(r) == 19
    (after,) = r.query_images([_reencoded(pics["ref-3"])], k=1)
    assert after[0].id != "ref-3" and after[0].distance > r.threshold  # removed means gone
    assert r.stats()["entries"] == 19 and len(list((tmp_path / "idx").glob("gen-*"))) <= 2


def test_a_reader_never_sees_half_a_generation(tmp_path: Path):
    root = tmp_path / "idx"
    w = IndexWriter(root)
    sizes = [5, 40, 15, 60, 25]
    entries = [entry_for_image(_picture(i), id=f"e{i}") for i in range(max(sizes))]
    w.write(entries[: sizes[0]])
    r = IndexReader(root)
    seen: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                r.reload_if_changed()
                seen.append(len(r))
                assert len(r.query_hashes([bytes(32)], k=3)[0]) == min(3, len(r))
            except BaseException as e:  # noqa: BLE001 - collected and asserted below
                errors.append(e)
                return

    t = threading.Thread(target=read)
    t.start()
    deadline = time.monotonic() + 20
    for _ in range(3):
        for n in sizes[1:]:
            w.write(entries[:n])
            if time.monotonic() > deadline:
                break
    stop.set()
    t.join(10)
    assert not errors, errors
    assert set(seen) <= set(sizes) and len(set(seen)) >= 2


def test_hash_banks_round_trip_and_bad_lines_are_named(tmp_path: Path):
    w = IndexWriter(tmp_path / "idx")
    w.write([entry_for_image(_picture(i), id=f"p{i}", label="gun") for i in range(4)])
    n = write_bank(tmp_path / "bank.csv", w.entries())
    back = read_bank(tmp_path / "bank.csv")
    assert n == 4 and [(e.id, e.pdq, e.label) for e in back] == [(e.id, e.pdq, e.label) for e in w.entries()]
    plain = tmp_path / "tx.txt"
    plain.write_text("# from ThreatExchange\n" + "\n".join(e.pdq for e in back[:2]) + "\n")
    assert [e.id for e in read_bank(plain, label="tx")] == ["tx:2", "tx:3"]
    plain.write_text("abc123\n")
    with pytest.raises(ValueError, match=r"tx.txt:1"):
        read_bank(plain)


def test_the_index_command(tmp_path: Path, capsys):
    from dangerclip_cli.main import main

    _catalogue(tmp_path, upload=1)
    idx = str(tmp_path / "idx")
    assert main(["index", "build", "--index", idx, str(tmp_path / "catalogue")]) == 0
    assert main(["index", "query", "--index", idx, str(tmp_path / "upload.jpg"), "-k", "2"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out[-1]["known_match"] is True and out[-1]["matches"][0]["id"].endswith("pistols/1.png")
    assert out[-1]["matches"][0]["label"] == "pistols"
    assert main(["index", "export", "--index", idx, str(tmp_path / "b.csv")]) == 0
    assert main(["index", "import", "--index", str(tmp_path / "idx2"), str(tmp_path / "b.csv")]) == 0
    assert main(["index", "stats", "--index", str(tmp_path / "idx2")]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["entries"] == 3


# ---------------------------------------------------------------------------- the embedding signal
def test_the_embedding_signal_survives_add_and_remove_and_says_same_model_by_the_card(tmp_path: Path, caplog):
    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.index.store import embedder_identity

    emb = Embedder(export_embedder(tmp_path / "e.onnx"))
    ident = embedder_identity(emb.card)
    pics = {f"ref-{i}": _picture(i) for i in range(12)}
    w = IndexWriter(tmp_path / "idx")
    first = list(pics)[:8]
    w.write([entry_for_image(pics[k], id=k) for k in first], emb.embed([pics[k] for k in first]), ident)
    r = IndexReader(tmp_path / "idx", embedder=emb)
    (row,) = r.query_images([_reencoded(pics["ref-5"])], k=3)
    by = [m for m in row if m.signal == "embedding"]
    assert [m.signal for m in row] == ["pdq"] * 3 + ["embedding"] * 3
    assert by[0].id == "ref-5" and by[0].distance < by[1].distance
    assert all(m.same_model == (m.distance <= 0.5) for m in by)
    # add keeps every old vector with its entry; remove takes the vector with it
    later = list(pics)[8:]
    new = [entry_for_image(pics[k], id=k) for k in later]
    w.add(new, embeddings=emb.embed([pics[k] for k in later]), embedder=ident)
    w.remove(["ref-5"])
    r.reload_if_changed()
    for k in ("ref-1", "ref-10"):
        (row,) = r.query_images([pics[k]], k=1)
        assert [(m.signal, m.id) for m in row] == [("pdq", k), ("embedding", k)] and row[1].distance < 1e-3
    (row,) = r.query_images([pics["ref-5"]], k=11)
    assert "ref-5" not in {m.id for m in row} and len(row) == 22
    assert r.stats()["signals"] == ["pdq", "embedding"] and r.stats()["embedder"]["search"] == "exact"
    # an index with embeddings takes no entry without one, nor one from another embedder
    with pytest.raises(ValueError, match="holds embeddings from test-embedder@1"):
        w.add([entry_for_image(_picture(99), id="x")])
    other = Embedder(export_embedder(tmp_path / "e2.onnx", version="2"))
    with pytest.raises(ValueError, match="rebuild the index"):
        x = [entry_for_image(_picture(99), id="x")]
        w.add(x, embeddings=other.embed([_picture(99)]), embedder=embedder_identity(other.card))
    # a reader with another embedder searches PDQ only, and says why
    with caplog.at_level("ERROR"):
        r2 = IndexReader(tmp_path / "idx", embedder=other)
    assert {m.signal for m in r2.query_images([pics["ref-1"]], k=2)[0]} == {"pdq"}
    assert "searching PDQ only" in caplog.text


def test_above_the_exact_limit_the_vectors_are_an_hnsw_graph_with_high_recall(tmp_path: Path, monkeypatch):
    from dangerclip.runtime.index import vectors

    rng = np.random.default_rng(0)
    v = rng.standard_normal((3000, 64)).astype(np.float32)
    q = v[:200] + 0.3 * rng.standard_normal((200, 64)).astype(np.float32)
    exact, hnsw = vectors.build(v), vectors.build(v, exact_up_to=1000)
    assert vectors.kind(exact) == "exact" and vectors.kind(hnsw) == "hnsw"
    de, ie = vectors.search(exact, q, 10)
    dh, ih = vectors.search(hnsw, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ie, ih, strict=True)])
    assert recall >= 0.95, recall
    assert np.all(np.diff(de, axis=1) >= -1e-6) and np.allclose(
        de[:, 0], np.linalg.norm(vectors.unit(q) - vectors.unit(v[ie[:, 0]]), axis=1), atol=1e-4
    )
    # the writer builds the graph past the limit, and a reloaded reader searches it
    monkeypatch.setattr(vectors, "EXACT_UP_TO", 10)
    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.index.store import embedder_identity

    emb = Embedder(export_embedder(tmp_path / "e.onnx"))
    pics = [_picture(i) for i in range(24)]
    IndexWriter(tmp_path / "idx").write(
        [entry_for_image(p, id=str(i)) for i, p in enumerate(pics)], emb.embed(pics), embedder_identity(emb.card)
    )
    r = IndexReader(tmp_path / "idx", embedder=emb)
    assert r.stats()["embedder"]["search"] == "hnsw"
    assert r.query_images([pics[7]], k=1)[0][1].id == "7"


def test_the_index_command_with_an_embedder(tmp_path: Path, capsys):
    from dangerclip_cli.main import main

    _catalogue(tmp_path, upload=2)
    e = str(export_embedder(tmp_path / "e.onnx", match_distance=0.2))
    idx = str(tmp_path / "idx")
    assert main(["index", "build", "--index", idx, "--embedder", e, str(tmp_path / "catalogue")]) == 0
    assert main(["index", "query", "--index", idx, "--embedder", e, str(tmp_path / "upload.jpg"), "-k", "1"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    (pdq, by) = out["matches"]
    assert pdq["signal"] == "pdq" and out["known_match"] is True
    assert by["signal"] == "embedding" and by["id"].endswith("pistols/2.png")
    assert by["same_model"] == (by["distance"] <= 0.2)


def test_a_reader_maps_the_vectors_instead_of_copying_them_into_its_heap(tmp_path: Path):
    """40 MB of vectors: loaded the usual way they would add 40 MB of private memory to every worker process.
    Measured in a fresh process (a long-lived one reuses freed heap, which hides a copy)."""
    import subprocess
    import sys

    from dangerclip.runtime.index import vectors

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs /proc/self/status (RssAnon)")
    path = tmp_path / "vectors.faiss"
    v = np.random.default_rng(0).standard_normal((160_000, 64)).astype(np.float32)
    vectors.save(vectors.build(v, exact_up_to=len(v)), path)
    probe = f"""
import faiss
from pathlib import Path
from dangerclip.runtime.index import vectors
def anon():
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(x.split()[1]) for x in lines if x.startswith("RssAnon:")) / 1024
a = anon(); mapped = vectors.load(Path({str(path)!r})); b = anon(); copied = faiss.read_index({str(path)!r}); c = anon()
assert mapped.ntotal == copied.ntotal == 160000
print(b - a, c - b)
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    grew_mapped, grew_copied = map(float, r.stdout.split())
    assert grew_copied > 30 and grew_mapped < 5, (grew_mapped, grew_copied)


def test_the_vectors_can_live_in_qdrant_and_answer_as_the_local_index_does(tmp_path: Path, capsys):
    """qdrant-client's local mode (no server): same neighbours as faiss, a collection per generation, old ones
    dropped with their generation, a change keeps the backend, and a reader can be pointed elsewhere."""
    pytest.importorskip("qdrant_client")
    from dangerclip.runtime.embedder import Embedder
    from dangerclip.runtime.index import qdrant
    from dangerclip.runtime.index.store import embedder_identity

    emb = Embedder(export_embedder(tmp_path / "e.onnx"))
    ident = embedder_identity(emb.card)
    pics = {f"ref-{i}": _picture(i) for i in range(10)}
    vecs = emb.embed(list(pics.values()))
    entries = [entry_for_image(im, id=k) for k, im in pics.items()]
    location = f"path:{tmp_path / 'qdrant'}"
    IndexWriter(tmp_path / "local").write(entries, vecs, ident)
    w = IndexWriter(tmp_path / "q", qdrant=location, collection_prefix="test")
    w.write(entries, vecs, ident)
    local, remote = IndexReader(tmp_path / "local", embedder=emb), IndexReader(tmp_path / "q", embedder=emb)
    assert remote.stats()["embedder"]["search"] == "qdrant"
    queries = [_reencoded(pics["ref-4"]), pics["ref-7"]]
    for a, b in zip(local.query_images(queries, k=4), remote.query_images(queries, k=4), strict=True):
        ea, eb = [m for m in a if m.signal == "embedding"], [m for m in b if m.signal == "embedding"]
        assert [m.id for m in ea] == [m.id for m in eb]
        assert np.allclose([m.distance for m in ea], [m.distance for m in eb], atol=1e-3)
    c = qdrant.client(location)
    first = {x.name for x in c.get_collections().collections}
    w.remove(["ref-4"])  # no --qdrant: the change keeps the index's backend
    w.add([entry_for_image(_picture(50), id="new")], embeddings=emb.embed([_picture(50)]), embedder=ident)
    names = {x.name for x in c.get_collections().collections}
    assert len(first) == 1 and len(names) == 2 and not (first & names)  # the oldest generation's collection dropped
    remote.reload_if_changed()
    (row,) = remote.query_images([_picture(50)], k=1)
    assert [(m.signal, m.id) for m in row] == [("pdq", "new"), ("embedding", "new")]
    assert "ref-4" not in {m.id for m in remote.query_images([pics["ref-4"]], k=10)[0]}
    with pytest.raises(ValueError, match="not a Qdrant location"):
        IndexReader(tmp_path / "q", embedder=emb, qdrant="qdrant:6333")
    # the command, searching the same Qdrant
    from dangerclip_cli.main import main

    pics["ref-7"].save(tmp_path / "upload.png")
    args = ["index", "query", "--index", str(tmp_path / "q"), "--embedder", str(tmp_path / "e.onnx")]
    assert main([*args, "--qdrant", location, str(tmp_path / "upload.png"), "-k", "1"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [(m["signal"], m["id"]) for m in out["matches"]] == [("pdq", "ref-7"), ("embedding", "ref-7")]
