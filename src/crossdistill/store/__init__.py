"""The knowledge store: teacher outputs computed once, for every recorded augmentation.

``write_store`` runs the teacher over a dataset (K recorded augmentations per example) into
checksummed safetensors shards; ``KnowledgeStore`` reads them memory-mapped; ``StoreDataset``
serves training examples whose teacher Knowledge comes from the store. The recipe-level entry
points are ``crossdistill cache RECIPE`` and ``crossdistill.pipeline.cache_recipe``.
"""

from __future__ import annotations

from crossdistill.store.codec import KeyCodec
from crossdistill.store.dataset import StoreDataset
from crossdistill.store.manifest import Manifest
from crossdistill.store.reader import KnowledgeStore
from crossdistill.store.writer import write_store

__all__ = [
    "KeyCodec",
    "KnowledgeStore",
    "Manifest",
    "StoreDataset",
    "write_store",
]
