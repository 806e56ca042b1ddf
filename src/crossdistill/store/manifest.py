"""The manifest of a knowledge store and the fingerprint that ties it to one teacher and data.

A store directory holds::

    plan.json             what is being written (fingerprint, keys, sizes), from the first run
    shards/shard-00000.safetensors + shard-00000.json (its record, written after the shard)
    manifest.json         the plan plus every shard's SHA-256: written last, only when complete

A store without ``manifest.json`` is incomplete and is never read.

The chain of checks: a shard's record names the store it belongs to (the plan's fingerprint and
a digest of the whole plan), its index, its rows and its bytes' SHA-256. The writer keeps an
existing shard only when its record matches the plan and its bytes match its record; the reader
only when its record and its bytes match the manifest. A shard copied from another store (another
teacher, data, order or augmentation), from another index or from an older crossdistill, whose
record names no store, is rewritten by ``cache`` and refused by the reader.
"""

from __future__ import annotations

import hashlib
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
NO_RECORD = "it has no record"

# What each part of a fingerprint covers, for the message when one differs.
FINGERPRINT_PARTS = {
    "teacher_weights": "teacher weights",
    "teacher": "teacher model, outputs, taps or input pipeline",
    "data": "training data (source, split, limit or contents)",
    "augmentation": "augmentation, augment_slots or seed",
}


def _differing(a: Mapping[str, str], b: Mapping[str, str], parts: set[str]) -> list[str]:
    """What the ``parts`` in which two fingerprints differ cover, for a message."""
    differ = [part for part in sorted(parts) if a.get(part) != b.get(part)]
    return [FINGERPRINT_PARTS.get(part, part) for part in differ]


class ShardInfo(BaseModel):
    """One shard: examples ``start..stop-1``, every slot of each."""

    model_config = ConfigDict(extra="forbid")

    file: str
    start: NonNegativeInt
    stop: NonNegativeInt
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: NonNegativeInt


class ShardRecord(ShardInfo):
    """The record written next to a shard: its manifest entry plus which store it belongs to
    (``fingerprint`` and ``plan``, the digest of the whole plan) and where (``index``)."""

    index: NonNegativeInt
    fingerprint: dict[str, str]
    plan: str = Field(pattern=r"^[0-9a-f]{64}$")

    def entry(self) -> ShardInfo:
        """The shard's entry in the manifest."""
        return ShardInfo(**self.model_dump(include=set(ShardInfo.model_fields)))


def shard_file(j: int) -> str:
    """Shard ``j``'s file, relative to the store directory."""
    return f"{SHARDS}/shard-{j:05d}.safetensors"


class RuntimeRecord(BaseModel):
    """The inference runtime that wrote a store in place of the recipe's PyTorch teacher
    (``crossdistill cache --runtime onnx``), and how closely it agreed with that teacher.

    ``parity``: the largest absolute difference from the PyTorch teacher per Knowledge key, on
    ``examples`` real examples of the data, each within ``tolerance``. A recipe whose teacher
    is the PyTorch model reads the store only when every stored key's parity is recorded and
    within its tolerance.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    graph_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    detail: str = ""
    examples: NonNegativeInt = 0
    parity: dict[str, float] | None = None
    tolerance: dict[str, float] | None = None

    def refusal(self, keys: list[str]) -> str | None:
        """Why a recipe's PyTorch teacher cannot stand behind this store, or None."""
        parity, tolerance = self.parity or {}, self.tolerance or {}
        missing = [k for k in keys if k not in parity or k not in tolerance]
        if missing:
            return f"no parity with the PyTorch teacher is recorded for {missing}"
        over = [k for k in keys if not parity[k] <= tolerance[k]]  # NaN is over too
        if over:
            return "its parity with the PyTorch teacher is beyond tolerance for " + ", ".join(
                f"{k} ({parity[k]:.3g} > {tolerance[k]:.3g})" for k in over
            )
        return None


class Manifest(BaseModel):
    """What a store holds and how to check it; ``shards`` is empty in a plan. ``runtime``:
    the inference runtime that wrote it in place of the PyTorch teacher (None: the teacher
    itself)."""

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
    runtime: RuntimeRecord | None = None

    @property
    def num_shards(self) -> int:
        return -(-self.num_examples // self.shard_size)

    def shard_range(self, j: int) -> tuple[int, int]:
        return j * self.shard_size, min((j + 1) * self.shard_size, self.num_examples)

    def plan(self) -> Manifest:
        return self.model_copy(update={"shards": []})

    def plan_digest(self) -> str:
        """A SHA-256 of the plan: fingerprint, keys and their codecs, slots and sizes."""
        # a store written by the teacher itself has the digest it had before runtimes existed
        skip = {"runtime"} if self.runtime is None else set()
        blob = json.dumps(self.plan().model_dump(mode="json", exclude=skip), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def shard_shapes(self, j: int) -> dict[str, tuple[int, ...]]:
        """The arrays shard ``j`` holds and their shapes (rows, slots, ...)."""
        start, stop = self.shard_range(j)
        rows = (stop - start, self.slots)
        shapes = {"aug": (*rows, self.aug_params)}
        for key, codec in self.keys.items():
            shapes.update({name: (*rows, *s) for name, s in codec.row_shapes(key).items()})
        return shapes

    def record_mismatch(self, j: int, record: ShardRecord, digest: str | None = None) -> str | None:
        """Why ``record`` is not the record of shard ``j`` of this store, or None when it is.
        ``digest``: this plan's :meth:`plan_digest`, when the caller has it already."""
        if record.fingerprint != self.fingerprint:
            parts = set(record.fingerprint) | set(self.fingerprint)
            differ = _differing(record.fingerprint, self.fingerprint, parts)
            return f"it was written for another store: its {'; '.join(differ)} differ"
        if record.plan != (digest or self.plan_digest()):
            return "it belongs to a store with other keys, codecs, slots or shard size"
        if record.index != j or record.file != shard_file(j):
            return f"it is shard {record.index} of its store, not shard {j}"
        if (record.start, record.stop) != self.shard_range(j):
            start, stop = self.shard_range(j)
            return f"it holds rows {record.start}..{record.stop - 1}, not {start}..{stop - 1}"
        return None

    def check_fingerprint(
        self, fingerprint: Mapping[str, str], where: Path, only: bool = False
    ) -> None:
        """Refuse a store written for another teacher, data set or preprocessing. ``only``:
        compare just the parts ``fingerprint`` has (training from a store without its
        teacher at hand checks the data and augmentation)."""
        parts = set(fingerprint) if only else set(fingerprint) | set(self.fingerprint)
        differ = _differing(fingerprint, self.fingerprint, parts)
        if differ:
            raise StoreError(
                f"knowledge store {where} was written for another recipe: its "
                f"{'; '.join(differ)} differ from this recipe's",
                hint="write a store for this recipe with `crossdistill cache RECIPE` (to "
                "another `store.path`, or delete the old store first)",
            )
        why = self.runtime.refusal(list(self.keys)) if self.runtime is not None else None
        if why is not None:
            assert self.runtime is not None
            raise StoreError(
                f"knowledge store {where} was written by {self.runtime.name} in place of the "
                f"recipe's teacher, and {why}",
                hint="write it again with `crossdistill cache RECIPE --runtime "
                f"{self.runtime.name}` (which measures parity) or with the PyTorch teacher "
                "(`--runtime torch`), after deleting it",
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


def read_record(path: Path) -> ShardRecord | str:
    """The shard record at ``path``, or why it cannot be used (absent, unreadable, or written
    by an older crossdistill and naming no store)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return NO_RECORD
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"its record {path.name} cannot be read ({exc})"
    if isinstance(raw, dict) and "fingerprint" not in raw:
        return f"its record {path.name} names no store (an older crossdistill wrote it)"
    try:
        return ShardRecord.model_validate(raw)
    except pydantic.ValidationError as exc:
        return f"its record {path.name} is not a shard record ({exc.error_count()} errors)"
