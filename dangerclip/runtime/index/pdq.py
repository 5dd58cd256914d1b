"""PDQ hashes of images (``pdqhash``, Meta's reference implementation) and their Hamming distances."""

from __future__ import annotations

import numpy as np
from PIL import Image

PDQ_BITS = 256
PDQ_BYTES = PDQ_BITS // 8
DEFAULT_THRESHOLD = 31
"""Hamming distance at or under which two PDQ hashes are the same picture (HMA's and ThreatExchange's default)."""
MIN_QUALITY = 50
"""PDQ's own advice: hashes of quality below 50 (flat, featureless images) match too easily to be trusted."""


def pdq_hash(img: Image.Image) -> tuple[bytes, int]:
    """The 256-bit PDQ hash of an image (32 bytes, PDQ's bit order) and its quality (0..100)."""
    import pdqhash

    bits, quality = pdqhash.compute(np.asarray(img.convert("RGB")))
    return np.packbits(np.asarray(bits, np.uint8)).tobytes(), int(quality)


def to_hex(h: bytes) -> str:
    """PDQ's exchange form: 64 hex digits."""
    return h.hex()


def from_hex(text: str) -> bytes:
    """64 hex digits → 32 bytes.

    Raises:
        ValueError: not a 256-bit hex hash.
    """
    text = text.strip().lower()
    if len(text) != 2 * PDQ_BYTES:
        raise ValueError(f"a PDQ hash is {2 * PDQ_BYTES} hex digits, got {len(text)}: {text[:70]!r}")
    return bytes.fromhex(text)


def hamming(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())
