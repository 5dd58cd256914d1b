"""The process a training or pseudo-mask command runs in: torch device, threads, seeds, stop signals, workers.

torch is imported inside the functions that need it, so that commands which never touch a model
(``dangerclip synth``) do not load it.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")


def resolve_device(name: str, *, auto_mps: bool = False) -> torch.device:
    """The torch device a ``--device`` value names; an accelerator that is absent falls back to the CPU.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        auto_mps: whether ``auto`` may pick Apple's GPU when there is no CUDA. Inference (the pseudo-mask
            models) runs there; head training and pre-training are only measured on CUDA and CPU.

    Returns:
        ``auto``: CUDA when present (else MPS when allowed and present), else the CPU. A named accelerator
        that is not there: the CPU, with a warning.
    """
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else ("mps" if auto_mps and has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; using the CPU", name)
        name = "cpu"
    if name == "mps" and not has_mps:
        log.warning("device mps requested but not available; using the CPU")
        name = "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (0: leave torch's choice), then give the caller its own count back.

    The thread count is process-wide, so a library call that changes it must restore it for the notebook or
    test session that called it.
    """
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def stop_on_signal() -> Iterator[dict[str, bool]]:
    """SIGTERM/SIGINT set ``flag["stop"]`` instead of killing the process, so a loop can end cleanly.

    Outside the main thread signals cannot be caught; they are then left alone.
    """
    flag = {"stop": False}

    def handler(signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping after this step (a checkpoint will be written)", signum)
        flag["stop"] = True

    old = {}
    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                old[s] = signal.signal(s, handler)
            except ValueError:
                pass
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def map_in_processes(fn: Callable[[J], R], jobs: Sequence[J], workers: int) -> list[R]:
    """``[fn(job) for job in jobs]``, in up to ``workers`` spawned processes (here when ``workers <= 1``).

    ``fn`` must be a module-level function; results keep the order of ``jobs``. A script that calls this
    with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard (spawned processes import it).
    """
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            return pool.map(fn, jobs)
    return [fn(j) for j in jobs]
