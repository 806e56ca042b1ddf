"""Reading a knowledge store: memory-mapped shards, records checked on open, checksums verified
lazily, per shard; rows read one at a time (random access) or gathered for a whole batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdistill._util.hashing import sha256_file as sha256
from crossdistill.errors import StoreError
from crossdistill.store.manifest import (
    MANIFEST,
    PLAN,
    Manifest,
    read_manifest,
    read_record,
    shard_file,
)
from crossdistill.store.shards import map_shard

REWRITE = (
    "run `crossdistill cache RECIPE` again: it rewrites every shard that is damaged or not this "
    "store's own, and keeps the rest"
)


class KnowledgeStore:
    """A complete store, opened for reading.

    Opening reads the manifest and each shard's record, and checks that every shard file
    exists with its recorded size (a truncated shard fails here) and that its record names this
    store, this index and the manifest's SHA-256 (a shard copied from another store or index
    fails here). A shard's bytes are checked against the manifest's SHA-256 the first time one
    of its rows is read (``verify=False`` skips it), so a corrupted byte is found before its
    rows are used, and the error names the shard. A shard is verified once per store object:
    copies made for DataLoader workers know which shards their parent has verified already.
    """

    @staticmethod
    def complete(path: str | Path) -> bool:
        """Whether the store at ``path`` is complete (its manifest is written last)."""
        return (Path(path) / MANIFEST).is_file()

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        self.verify = verify
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            if (self.path / PLAN).is_file():
                plan = read_manifest(self.path / PLAN, "store plan")
                done = len(list((self.path / "shards").glob("shard-*.json")))
                raise StoreError(
                    f"knowledge store {self.path} is incomplete ({done} of {plan.num_shards} "
                    "shards written)",
                    hint="run `crossdistill cache RECIPE` again: it continues where it stopped",
                )
            raise StoreError(
                f"there is no knowledge store at {self.path}",
                hint="write it first with `crossdistill cache RECIPE`",
            )
        self.manifest: Manifest = read_manifest(manifest_path)
        if len(self.manifest.shards) != self.manifest.num_shards:
            raise StoreError(
                f"{manifest_path} lists {len(self.manifest.shards)} shards, but "
                f"{self.manifest.num_examples} examples need {self.manifest.num_shards}",
                hint=REWRITE,
            )
        digest = self.manifest.plan_digest()
        for j, info in enumerate(self.manifest.shards):
            # the manifest names the files: any other name (another index, a path outside the
            # store) is a damaged manifest, never a file to open
            start, stop = self.manifest.shard_range(j)
            if (info.file, info.start, info.stop) != (shard_file(j), start, stop):
                raise StoreError(
                    f"{manifest_path}: shard {j} is listed as {info.file}, rows "
                    f"{info.start}..{info.stop - 1}; it is {shard_file(j)}, "
                    f"rows {start}..{stop - 1}",
                    hint=REWRITE,
                )
            file = self.path / info.file
            if not file.is_file():
                raise StoreError(f"knowledge store shard {file} is missing", hint=REWRITE)
            if file.stat().st_size != info.bytes:
                raise StoreError(
                    f"knowledge store shard {file} is truncated or altered: "
                    f"{file.stat().st_size} bytes, the manifest says {info.bytes}",
                    hint=REWRITE,
                )
            self._check_record(j, digest)
        self._maps: dict[int, dict[str, np.ndarray]] = {}
        self._verified: set[int] = set()

    def _check_record(self, j: int, digest: str) -> None:
        """Refuse shard ``j`` unless its record names this store, index and SHA-256."""
        info = self.manifest.shards[j]
        file = self.path / info.file
        record = read_record(file.with_suffix(".json"))
        if isinstance(record, str):
            why = record
        else:
            why = self.manifest.record_mismatch(j, record, digest)
            if why is None and (record.sha256, record.bytes) != (info.sha256, info.bytes):
                why = f"its record's SHA-256 differs from the one in {MANIFEST}"
        if why is not None:
            raise StoreError(
                f"knowledge store shard {file} is not this store's shard {j}: {why}", hint=REWRITE
            )

    @property
    def num_examples(self) -> int:
        return self.manifest.num_examples

    @property
    def slots(self) -> int:
        return self.manifest.slots

    @property
    def keys(self) -> list[str]:
        return list(self.manifest.keys)

    def nbytes(self) -> int:
        """Bytes of all shard files."""
        return sum(info.bytes for info in self.manifest.shards)

    def check(self, fingerprint: dict[str, str], only: bool = False) -> None:
        """Refuse (StoreError) if the store was written for another teacher, data or
        preprocessing than ``fingerprint`` describes (``only``: just the parts it has)."""
        self.manifest.check_fingerprint(fingerprint, self.path, only)

    def _shard(self, j: int) -> dict[str, np.ndarray]:
        arrays = self._maps.get(j)
        if arrays is None:
            info = self.manifest.shards[j]
            file = self.path / info.file
            if self.verify and j not in self._verified and sha256(file) != info.sha256:
                raise StoreError(
                    f"knowledge store shard {file} is corrupted: its SHA-256 differs from "
                    f"the one in {self.path / MANIFEST}",
                    hint=REWRITE,
                )
            self._verified.add(j)
            arrays = self._maps[j] = map_shard(file)
        return arrays

    def open_all(self) -> None:
        """Map (and verify) every shard now: DataLoader workers forked afterwards inherit the
        maps and hash nothing again."""
        for j in range(self.manifest.num_shards):
            self._shard(j)

    def _locate(self, i: int, k: int) -> tuple[dict[str, np.ndarray], int]:
        if not (0 <= i < self.num_examples and 0 <= k < self.slots):
            raise IndexError(
                f"example {i}, slot {k} is outside the store ({self.num_examples} examples, "
                f"{self.slots} slots)"
            )
        j = i // self.manifest.shard_size
        return self._shard(j), i - j * self.manifest.shard_size

    def aug(self, i: int, k: int) -> np.ndarray:
        """The recorded augmentation parameters of example ``i``, slot ``k`` (float64)."""
        arrays, row = self._locate(i, k)
        return np.array(arrays["aug"][row, k])

    def knowledge(self, i: int, k: int) -> dict[str, torch.Tensor]:
        """The teacher's Knowledge for example ``i`` seen through slot ``k`` (float32)."""
        arrays, row = self._locate(i, k)
        return {
            key: codec.decode(key, {name: arrays[name][row, k] for name in codec.arrays(key)})
            for key, codec in self.manifest.keys.items()
        }

    def rows(self, indices: Any, slots: Any) -> dict[str, np.ndarray]:
        """Every stored array (``aug`` and each key's) of examples ``indices`` seen through
        ``slots`` (one slot per index), gathered into arrays of ``len(indices)`` rows in the
        order asked: one read per array per shard touched, whatever the order or repeats."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        ks = np.asarray(slots, dtype=np.int64).reshape(-1)
        if idx.shape != ks.shape:
            raise ValueError(f"{len(idx)} examples but {len(ks)} slots")
        outside = (idx < 0) | (idx >= self.num_examples) | (ks < 0) | (ks >= self.slots)
        if outside.any():
            b = int(np.argmax(outside))
            self._locate(int(idx[b]), int(ks[b]))  # raises the IndexError that names it
        size = self.manifest.shard_size
        shard = idx // size
        out: dict[str, np.ndarray] = {}
        for j in np.unique(shard) if len(idx) else [0]:
            arrays = self._shard(int(j))
            at = np.flatnonzero(shard == j)
            row, k = idx[at] - int(j) * size, ks[at]
            for name, array in arrays.items():
                if name not in out:
                    out[name] = np.empty((len(idx), *array.shape[2:]), dtype=array.dtype)
                out[name][at] = array[row, k]
        return out

    def decode(self, rows: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """Each key's Knowledge (float32) of a batch from the arrays :meth:`rows` gathered,
        decoded in one pass: row ``b`` is bit for bit :meth:`knowledge` of example ``b``."""
        return {
            key: codec.decode(key, {name: rows[name] for name in codec.arrays(key)})
            for key, codec in self.manifest.keys.items()
        }

    def __getstate__(self) -> dict[str, Any]:
        # a copy (a DataLoader worker's under spawn) maps the shards itself after it starts:
        # never pickled arrays; it keeps the set of shards already verified
        return {**self.__dict__, "_maps": {}, "_verified": set(self._verified)}
