"""Known-content matching: an on-disk index of reference images (a firearm catalogue, known banned images).

PDQ perceptual hashes (Meta's, the cross-platform standard of ThreatExchange and Hasher-Matcher-Actioner) find
"this exact image again" across re-encodes, resizes and small edits; hash banks in HMA's exchange format load and
export (``bank``). The store (``store``) keeps each generation of the index in its own folder and switches a
pointer file atomically, so a worker reloads a rebuilt index between batches without restarting and never reads
a half-written one. faiss holds the hashes (exact Hamming search, ``IndexBinaryFlat``). The command is
``dangerclip index`` (``cli``). Serving half: numpy, Pillow, pdqhash and faiss-cpu; never torch.
"""

import logging

from dangerclip.runtime.index.store import Entry, IndexReader, IndexWriter, Match

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its INFO lines list every CPU build it tries

__all__ = ["Entry", "IndexReader", "IndexWriter", "Match"]
