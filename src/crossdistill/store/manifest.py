"""The manifest of a knowledge store and the fingerprint that ties it to one teacher and data.

A store directory holds::

    plan.json             what is being written (fingerprint, keys, sizes), from the first run
    shards/shard-00000.safetensors + shard-00000.json (its SHA-256, written after the shard)
    manifest.json         the plan plus every shard's SHA-256: written last, only when complete

A store without ``manifest.json`` is incomplete and is never read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from crossdistill._util.validation import format_validation_error
from crossdistill.errors import StoreError
from crossdistill.store.codec import KeyCodec

MANIFEST = "manifest.json"
PLAN = "plan.json"
SHARDS = "shards"

# What each part of a fingerprint covers, for the message when one differs.
FINGERPRINT_PARTS = {
    "teacher_weights": "teacher weights",
    "teacher": "teacher model, outputs, taps or input pipeline",
    "data": "training data (source, split, limit or contents)",
    "augmentation": "augmentation, augment_slots or seed",
}


class ShardInfo(BaseModel):
    """One shard: examples ``start..stop-1``, every slot of each."""

    model_config = ConfigDict(extra="forbid")

    file: str
    start: NonNegativeInt
    stop: NonNegativeInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: NonNegativeInt


class Manifest(BaseModel):
    """What a store holds and how to check it; ``shards`` is empty in a plan."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["crossdistill.core.knowledge-store"] = "crossdistill.core.knowledge-store"
    version: Literal[1] = 1
    fingerprint: dict[str, str]
    num_examples: PositiveInt
    slots: PositiveInt
    aug_params: NonNegativeInt
    shard_size: PositiveInt
    keys: dict[str, KeyCodec]
    shards: list[ShardInfo] = Field(default_factory=list)

    @property
    def num_shards(self) -> int:
        return -(-self.num_examples // self.shard_size)

    def shard_range(self, j: int) -> tuple[int, int]:
        return j * self.shard_size, min((j + 1) * self.shard_size, self.num_examples)

    def plan(self) -> Manifest:
        return self.model_copy(update={"shards": []})

    def check_fingerprint(
        self, fingerprint: Mapping[str, str], where: Path, only: bool = False
    ) -> None:
        """Refuse a store written for another teacher, data set or preprocessing. ``only``:
        compare just the parts ``fingerprint`` has (training from a store without its
        teacher at hand checks the data and augmentation)."""
        parts = set(fingerprint) if only else set(fingerprint) | set(self.fingerprint)
        differ = [
            FINGERPRINT_PARTS.get(part, part)
            for part in sorted(parts)
            if fingerprint.get(part) != self.fingerprint.get(part)
        ]
        if differ:
            raise StoreError(
                f"knowledge store {where} was written for another recipe: its "
                f"{'; '.join(differ)} differ from this recipe's",
                hint="write a store for this recipe with `crossdistill cache RECIPE` (to "
                "another `store.path`, or delete the old store first)",
            )


def read_manifest(path: Path, what: str = "manifest") -> Manifest:
    """Parse and validate a manifest or plan file; every problem is a :class:`StoreError`."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(
            f"the {what} {path} cannot be read: {exc}",
            hint="the store is damaged: run `crossdistill cache RECIPE` again to rewrite it",
        ) from None
    try:
        return Manifest.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise StoreError(
            f"the {what} {path} is not a knowledge-store manifest:\n"
            f"{format_validation_error(exc, model=Manifest)}",
            hint="the store is damaged: run `crossdistill cache RECIPE` again to rewrite it",
        ) from None
