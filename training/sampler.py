"""The head's batches: epoch-shuffled, as a pure function of (seed, step), so a resumed run needs no state."""

from __future__ import annotations

import numpy as np


class BatchSampler:
    """Epoch-shuffled batches as a pure function of (seed, step): resumable without any saved state.

    Batches walk through a stream of per-epoch permutations of ``indices`` (each epoch's permutation is
    seeded by (seed, epoch)); each row gets a view drawn from (seed, step).
    """

    def __init__(self, indices: np.ndarray, batch_size: int, num_views: int, seed: int) -> None:
        if indices.size == 0:
            raise ValueError("no training rows")
        self.indices = np.asarray(indices, np.int64)
        self.batch_size = batch_size
        self.num_views = num_views
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def _epoch(self, e: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != e:
            self._perm = (e, np.random.default_rng([self.seed, e]).permutation(self.indices))
        return self._perm[1]

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """``(row indices [B], view per row [B])`` of batch ``step``."""
        n, b = self.indices.size, self.batch_size
        pos, out = step * b, []
        while len(out) < b:
            e, o = divmod(pos, n)
            take = min(b - len(out), n - o)
            out.extend(self._epoch(e)[o : o + take].tolist())
            pos += take
        views = np.random.default_rng([self.seed, step, 1]).integers(0, self.num_views, b)
        return np.asarray(out, np.int64), views
