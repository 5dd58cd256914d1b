"""The identification stage: for flagged images only, which firearm it is.

Runs in the same batch as detection, after it (no extra round trip): the flagged records' images go through the
type head (``dangerclip.runtime.typehead``) and, when an index is configured, the known-content matchers. A
failure here never costs the record its result: the result goes out without ``identification`` and the failure
is counted (``dangerclip_identification_errors_total``) and logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

from PIL import Image

from service.messages import Identification, MatchResult, TypeResult, TypeScore

log = logging.getLogger(__name__)


class Matcher(Protocol):
    """Known-content matching (an index of reference images): the ``k`` nearest entries of each image."""

    def match(self, images: Sequence[Image.Image]) -> list[list[MatchResult]]: ...

    def known(self, matches: Sequence[MatchResult]) -> bool: ...


class IndexMatcher:
    """Matching against a ``dangerclip index`` folder, reloading a rebuilt index: PDQ (the same picture again:
    ``known``) and, when the reader has the index's embedder, embeddings (the same firearm model in another
    picture: each match's ``same_model``).

    Args:
        reader: the index.
        top_k: matches per image.
        reload_s: at most this often, check whether a new generation went live (a stat and a small read).
    """

    def __init__(self, reader: Any, top_k: int = 3, reload_s: float = 10.0) -> None:
        self.reader = reader
        self.top_k = top_k
        self.reload_s = reload_s
        self._checked = time.monotonic()
        embedder = getattr(reader, "embedder", None)
        self.image_size: int | None = embedder.card.image_size if embedder is not None else None
        """The embedder's input side (None: PDQ only)."""

    def match(self, images: Sequence[Image.Image]) -> list[list[MatchResult]]:
        now = time.monotonic()
        if now - self._checked >= self.reload_s:
            self._checked = now
            try:
                self.reader.reload_if_changed()
            except Exception as e:  # noqa: BLE001 - keep serving the generation already loaded
                log.warning("index reload failed, keeping generation %s: %s", self.reader.generation, e)
        return [
            [
                MatchResult(id=m.id, label=m.label, distance=m.distance, signal=m.signal, same_model=m.same_model)
                for m in row
            ]
            for row in self.reader.query_images(images, k=self.top_k)
        ]

    def known(self, matches: Sequence[MatchResult]) -> bool:
        """A PDQ match within the index's threshold: this very picture is in the index."""
        return any(m.signal == "pdq" and m.distance <= self.reader.threshold for m in matches)


class Identifier:
    """Type head and/or matcher on the flagged images of a batch.

    Args:
        type_head: a :class:`~dangerclip.runtime.typehead.TypeHead` (or anything with ``predict`` and ``card``).
        matcher: known-content matching.
        metrics: the worker's metrics (``None``: none recorded).
    """

    def __init__(self, type_head: Any = None, matcher: Matcher | None = None, metrics: Any = None) -> None:
        if type_head is None and matcher is None:
            raise ValueError("an identifier needs a type head or a matcher")
        self.type_head = type_head
        self.matcher = matcher
        self.metrics = metrics
        sides = [type_head.card.image_size] if type_head is not None else []
        sides += [side] if (side := getattr(matcher, "image_size", None)) else []
        self.keep_side = max([*sides, 224]) * 2
        """Shortest side of the copy of each decoded image kept until the batch is scored."""

    def thumbnail(self, img: Image.Image) -> Image.Image:
        """The small copy of a decoded image kept for identification (shortest side ``keep_side``)."""
        w, h = img.size
        scale = self.keep_side / min(w, h)
        if scale >= 1:
            return img.copy()
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)

    def _count_matches(self, matches: Sequence[MatchResult], known: bool) -> None:
        c = self.metrics.identification_matches
        c.labels(signal="pdq", result="match" if known else "no_match").inc()
        by_embedding = [x for x in matches if x.signal == "embedding"]
        if by_embedding:
            same = any(x.same_model for x in by_embedding)
            c.labels(signal="embedding", result="match" if same else "no_match").inc()

    def identify(self, images: Sequence[Image.Image]) -> list[Identification | None]:
        """One ``Identification`` per image; ``None`` for all of them when the stage fails."""
        if not images:
            return []
        t0 = time.perf_counter()
        try:
            types = self.type_head.predict(images) if self.type_head is not None else [None] * len(images)
            matches = self.matcher.match(images) if self.matcher is not None else [None] * len(images)
        except Exception as e:  # noqa: BLE001 - detection's result must go out without identification
            log.warning("identification of %d flagged images failed: %s: %s", len(images), type(e).__name__, e)
            if self.metrics is not None:
                self.metrics.identification_errors.inc()
            return [None] * len(images)
        out: list[Identification | None] = []
        for t, m in zip(types, matches, strict=True):
            type_result = None
            if t is not None:
                type_result = TypeResult(
                    type=t.type,
                    probability=round(t.probability, 4),
                    confidence=t.confidence,
                    look_alike=t.look_alike,
                    top=[TypeScore(type=c, probability=round(p, 4)) for c, p in t.top],
                    model=f"{self.type_head.card.name}@{self.type_head.card.version}",
                )
                if self.metrics is not None:
                    self.metrics.identified.labels(confidence=t.confidence, look_alike=str(t.look_alike).lower()).inc()
            known = None if m is None or self.matcher is None else self.matcher.known(m)
            if self.metrics is not None and m is not None:
                self._count_matches(m, bool(known))
            out.append(Identification(type=type_result, matches=list(m or []), known_match=known))
        if self.metrics is not None:
            self.metrics.identification_duration.observe(time.perf_counter() - t0)
        return out
