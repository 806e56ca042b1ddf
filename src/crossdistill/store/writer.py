"""Writing a knowledge store: the teacher run once over every example and recorded augmentation.

Writing is resumable and deterministic. Shard ``j`` holds examples ``j*S .. (j+1)*S-1`` with all
K slots, computed in the same batches every time, so a shard rewritten after a crash has the same
bytes as one written without it. A shard is written atomically and then its record (the store's
fingerprint, its index and SHA-256) next to it. A rerun keeps an existing shard only when its
record belongs to this plan and this index and its bytes and arrays match the record and the
plan; every other shard (half-written, damaged, copied from another store) is written again.
Under torchrun rank ``r`` writes shards ``r, r + W, ...``; rank 0 writes ``manifest.json`` after
all are done.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from crossdistill._util.device import to_device
from crossdistill._util.files import remove_orphans
from crossdistill._util.hashing import sha256_file as sha256
from crossdistill._util.progress import ProgressBar
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.wrappers import Teacher
from crossdistill.errors import ConfigError, StoreError
from crossdistill.store.codec import KeyCodec
from crossdistill.store.manifest import (
    MANIFEST,
    NO_RECORD,
    PLAN,
    SHARDS,
    Manifest,
    RuntimeRecord,
    ShardInfo,
    ShardRecord,
    read_manifest,
    read_record,
    shard_file,
)
from crossdistill.store.shards import map_shard, write_json, write_shard

log = logging.getLogger(__name__)


def write_store(
    path: str | Path,
    teacher: Teacher,
    dataset: Any,
    keys: Mapping[str, KeyCodec],
    fingerprint: Mapping[str, str],
    *,
    shard_size: int = 4096,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    runtime: RuntimeRecord | None = None,
) -> Manifest | None:
    """Write (or finish, or verify) the store at ``path``; returns its manifest once complete.

    ``dataset`` provides ``len``, ``slots`` (K, or None for one), ``slot_params(i, k)`` and
    ``example(i, params)`` (see :class:`~crossdistill.data.DistillDataset`); the teacher reads
    each example's ``"teacher"`` view. Returns ``None`` on a rank that does not finalise.
    ``runtime``: the inference runtime ``teacher`` runs in, in place of the recipe's PyTorch
    teacher, and its measured parity (recorded in the manifest).
    """
    path = Path(path)
    slots = _slots(dataset)
    device = next(iter(teacher.parameters()), torch.empty(0)).device
    manifest_path = path / MANIFEST
    probe = _teacher_batch(teacher, dataset, range(min(2, len(dataset))), 0, device)
    plan = Manifest(
        fingerprint=dict(fingerprint),
        num_examples=len(dataset),
        slots=slots,
        aug_params=len(dataset.slot_params(0, 0)),
        shard_size=shard_size,
        keys={k: codec.check(k, tuple(_require(probe, k).shape[1:])) for k, codec in keys.items()},
        runtime=runtime,
    )
    plan = _resumed(path, plan)
    synced = (
        world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    )
    (path / SHARDS).mkdir(parents=True, exist_ok=True)  # nothing is created before this point
    if rank == 0:
        _claim(path, plan)
        # a writer killed mid-shard left its temporary behind; no rank of this job writes yet
        for orphan in remove_orphans(path) + remove_orphans(path / SHARDS):
            log.info("%s: removed %s, left by a writer that was killed", path, orphan.name)
        # rewriting or verifying a finished store: it stops looking complete until it is again
        manifest_path.unlink(missing_ok=True)
    if synced:
        torch.distributed.barrier()
    if rank != 0:
        _claim(path, plan)  # rank 0 has written the plan: check that this rank agrees
    digest = plan.plan_digest()
    mine = [j for j in range(plan.num_shards) if j % world_size == rank]
    total = sum(stop - start for start, stop in map(plan.shard_range, mine)) * slots
    with ProgressBar(progress, f"teacher -> {path}", total, unit="ex") as bar:
        for j in mine:
            start, stop = plan.shard_range(j)
            kept, why = _verify_shard(path, plan, digest, j)
            if kept is not None:
                bar.advance((stop - start) * slots)
                continue
            file = path / shard_file(j)
            if why is not None:
                log.warning("%s: rewriting %s: %s", path, file.name, why)
            # the old record goes first: a crash before the new one leaves no claim on the bytes
            file.with_suffix(".json").unlink(missing_ok=True)
            write_shard(
                file, _compute_shard(teacher, dataset, plan, start, stop, batch_size, device, bar)
            )
            record = ShardRecord(
                file=shard_file(j),
                start=start,
                stop=stop,
                sha256=sha256(file),
                bytes=file.stat().st_size,
                index=j,
                fingerprint=plan.fingerprint,
                plan=digest,
            )
            write_json(file.with_suffix(".json"), record.model_dump())
    if synced:
        torch.distributed.barrier()
    if rank != 0:
        return None
    return _finalise(path, plan)


def _slots(dataset: Any) -> int:
    slots = getattr(dataset, "slots", None)
    augmentation = getattr(dataset, "augmentation", None)
    if slots is None and augmentation is not None and augmentation.num_params > 0:
        raise ConfigError(
            "the training data is augmented afresh every epoch, which a store cannot hold",
            hint="set `data.augment_slots: K` to record K augmentations per example (the "
            "store keeps the teacher's outputs for each; training picks one per epoch)",
        )
    return slots or 1


def _require(knowledge: Knowledge, key: str) -> torch.Tensor:
    knowledge.require((key,), "the knowledge store")
    return knowledge[key]


def _resumed(path: Path, plan: Manifest) -> Manifest:
    """``plan`` with the runtime record of the store being finished at ``path`` when that was
    started by the same graph (its parity was measured then; measured again, the last digit may
    differ with the machine's threads), so that a rerun keeps the plan."""
    if plan.runtime is None or not (path / PLAN).is_file():
        return plan
    old = read_manifest(path / PLAN, "store plan").runtime
    if old is None or old.graph_sha256 != plan.runtime.graph_sha256:
        return plan
    return plan.model_copy(update={"runtime": old})


def _codec_settings(codec: KeyCodec | None) -> str:
    """A key's storage settings as a recipe would spell them (``shape`` left out)."""
    if codec is None:
        return "not stored"
    fields = codec.model_dump(exclude={"shape"}, exclude_none=True)
    return "{" + ", ".join(f"{name}: {value}" for name, value in fields.items()) + "}"


def _codec_difference(old: Manifest, plan: Manifest) -> str:
    """``: key 'x' is stored as {...} there, {...} here`` for the keys whose storage differs."""
    differ = [
        f"key {key!r} is stored as {_codec_settings(old.keys.get(key))} there, "
        f"{_codec_settings(plan.keys.get(key))} here"
        for key in sorted(set(old.keys) | set(plan.keys))
        if old.keys.get(key) != plan.keys.get(key)
    ]
    return ": " + "; ".join(differ) if differ else ""


def _claim(path: Path, plan: Manifest) -> None:
    """Record the plan, or check that a store already at ``path`` follows the same plan."""
    existing = path / PLAN
    if existing.exists():
        old = read_manifest(existing, "store plan")
        if old.model_dump() != plan.model_dump():
            old.check_fingerprint(plan.fingerprint, path)
            if old.runtime != plan.runtime:
                runtimes = [m.runtime.name if m.runtime else "torch" for m in (old, plan)]
                raise StoreError(
                    f"{path} holds a store started with the teacher in {runtimes[0]}, not "
                    f"{runtimes[1]}",
                    hint=f"finish it with `--runtime {runtimes[0]}`, or delete it first",
                )
            raise StoreError(
                f"{path} holds a store with other keys, slots or shard size than this recipe's"
                + _codec_difference(old, plan),
                hint="delete it, or set another `store.path`",
            )
        return
    if any((path / SHARDS).iterdir()):
        raise StoreError(
            f"{path} holds shards but no {PLAN}: it is not a store this version wrote",
            hint="delete it, or set another `store.path`",
        )
    write_json(existing, plan.model_dump())


def _verify_shard(
    path: Path, plan: Manifest, digest: str, j: int
) -> tuple[ShardInfo | None, str | None]:
    """Shard ``j``'s manifest entry when the shard on disk is this plan's shard ``j`` (its
    record names this plan and index, its bytes match the record's SHA-256, its arrays have the
    plan's shapes); otherwise None and why (None too when neither file is there yet)."""
    file = path / shard_file(j)
    record = read_record(file.with_suffix(".json"))
    if not file.is_file():
        return None, None if record == NO_RECORD else "its file is missing"
    if isinstance(record, str):
        return None, record
    why = plan.record_mismatch(j, record, digest)
    if why is not None:
        return None, why
    if record.bytes != file.stat().st_size or record.sha256 != sha256(file):
        return None, "its bytes differ from its record's SHA-256"
    try:
        shapes = {name: a.shape for name, a in map_shard(file).items()}
    except StoreError as exc:
        return None, str(exc)
    if shapes != plan.shard_shapes(j):
        return None, f"its arrays {shapes} are not the plan's {plan.shard_shapes(j)}"
    return record.entry(), None


@torch.no_grad()
def _teacher_batch(
    teacher: Teacher, dataset: Any, indices: Sequence[int], slot: int, device: torch.device
) -> Knowledge:
    examples = [dataset.example(i, dataset.slot_params(i, slot)) for i in indices]
    views = default_collate(examples)["views"]["teacher"]
    return teacher(to_device(views, device))


def _compute_shard(
    teacher: Teacher,
    dataset: Any,
    plan: Manifest,
    start: int,
    stop: int,
    batch_size: int,
    device: torch.device,
    bar: ProgressBar,
) -> dict[str, np.ndarray]:
    n = stop - start
    out: dict[str, np.ndarray] = {
        "aug": np.stack(
            [[dataset.slot_params(i, k) for k in range(plan.slots)] for i in range(start, stop)]
        ).reshape(n, plan.slots, plan.aug_params),
    }
    order = list(range(start, stop))
    size = getattr(dataset, "example_size", None)
    if size is not None:  # batch texts of similar length together: less padding, same result
        order.sort(key=size)
    for k in range(plan.slots):
        for b in range(0, n, batch_size):
            rows = order[b : b + batch_size]
            knowledge = _teacher_batch(teacher, dataset, rows, k, device)
            at = np.asarray(rows) - start
            for key, codec in plan.keys.items():
                for name, value in codec.encode(key, _require(knowledge, key)).items():
                    if name not in out:
                        out[name] = np.empty((n, plan.slots, *value.shape[1:]), value.dtype)
                    out[name][at, k] = value
            bar.advance(len(rows))
    return out


def _finalise(path: Path, plan: Manifest) -> Manifest | None:
    """Write ``manifest.json`` when every shard is there; otherwise say what is missing."""
    digest = plan.plan_digest()
    shards = [_verify_shard(path, plan, digest, j)[0] for j in range(plan.num_shards)]
    missing = [j for j, info in enumerate(shards) if info is None]
    if missing:
        print(
            f"{path}: {plan.num_shards - len(missing)} of {plan.num_shards} shards written; "
            "the store is complete once every rank has finished"
        )
        return None
    manifest = plan.model_copy(update={"shards": shards})
    write_json(path / MANIFEST, manifest.model_dump())
    return manifest
