"""Small real models for tests that need one on disk: a random-weight retrieval embedder, exported the way
``dangerclip retrieval train`` exports one (torch at export time only)."""

from __future__ import annotations

from pathlib import Path


def export_embedder(path: Path, version: str = "1", match_distance: float | None = 0.5, seed: int = 0) -> Path:
    """A ``small`` MAC embedder with random weights at 48 px, its card named ``test-embedder@<version>``."""
    import torch

    from dangerclip.modeling.retrieval import EmbeddingNet, build_backbone
    from dangerclip.modeling.retrieval import export_embedder as export
    from dangerclip.runtime.embedder import EmbedderCard

    torch.manual_seed(seed)
    backbone, dim = build_backbone("small")
    card = EmbedderCard(name="test-embedder", version=version, dim=dim, image_size=48, match_distance=match_distance)
    return export(EmbeddingNet(backbone, dim).eval(), card, Path(path))
