"""``dangerclip firearms``: the synthetic fine-grained firearm set (see ``training.firearms.dataset``)."""

from training.retrieval.cli import add_firearms_arguments as add_arguments
from training.retrieval.cli import run_firearms as run

__all__ = ["add_arguments", "run"]
