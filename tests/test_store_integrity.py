"""The knowledge store's chain of checks: a shard belongs to one store and one index.

Shards copied (with their records) from a store of another teacher, another seed (other
recorded augmentations) or another data order, a record that claims this store over bytes from
elsewhere, two shards of one store swapped, and records of an older crossdistill that name no
store: ``cache`` rewrites every one of them (the repaired store equals one written cleanly, byte
for byte), and reading or training from the store refuses them, naming the shard.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import DIGITS, tree_hashes
from crossdistill.config import Recipe, validate_recipe
from crossdistill.data.sources.digits import _load_all
from crossdistill.errors import StoreError
from crossdistill.models.zoo.cnn import SmallCNN
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.store import KnowledgeStore
from crossdistill.store.manifest import FINGERPRINT_PARTS
from crossdistill.store.shards import map_shard

# 160 training examples in shards of 32: five full shards of equal size, so a shard copied from
# another store or index always passes the size check and only the chain can catch it.
TRAIN, TEST, SHARD = 160, 40, 32
# The one fingerprint part in which each foreign store differs from the clean one.
FOREIGN = {"teacher": "teacher_weights", "seed": "augmentation", "order": "data"}


def save_digits(path: Path, order: np.ndarray) -> None:
    """The first 200 digits as an ``.npz`` for the ``arrays`` source, training rows in ``order``."""
    images, labels = _load_all()
    rows = np.concatenate([order, np.arange(TRAIN, TRAIN + TEST)])
    split = np.array(["train"] * TRAIN + ["test"] * TEST)
    np.savez(path, x=images[rows], y=labels[rows], split=split)


def save_teacher(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    save_file(SmallCNN(in_channels=1, num_classes=10, width=8).state_dict(), path)


class World:
    """A clean store and three foreign ones, written once; every test repairs a copy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        save_teacher(root / "teacher.safetensors", 0)
        save_teacher(root / "other_teacher.safetensors", 1)
        # the same file path in both: the stores differ only by the order of its rows
        save_digits(root / "digits.npz", np.random.default_rng(0).permutation(TRAIN))
        cache_recipe(self.recipe(root / "order"), progress=False)
        save_digits(root / "digits.npz", np.arange(TRAIN))
        cache_recipe(self.recipe(root / "clean"), progress=False)
        weights = str(root / "other_teacher.safetensors")
        cache_recipe(self.recipe(root / "teacher", **{"teacher.weights": weights}), False)
        cache_recipe(self.recipe(root / "seed", seed=1), progress=False)

    def recipe(self, store: Path, **changes: Any) -> Recipe:
        """Digits KD through the ``arrays`` source: K = 2 recorded crops per example, a fixed
        teacher file (so the seed changes only the augmentations), one epoch."""
        raw: dict[str, Any] = yaml.safe_load((DIGITS / "kd.yaml").read_text())
        raw["teacher"].update(weights=str(self.root / "teacher.safetensors"))
        raw["teacher"]["params"]["width"] = 8
        raw["data"] = {
            "source": "arrays",
            "params": {"path": str(self.root / "digits.npz"), "targets": "y", "split_key": "split"},
            "batch_size": 32,
            "eval_split": "test",
            "augment": {"name": "crop_flip", "params": {"padding": 1}},
            "augment_slots": 2,
        }
        raw["train"].update(epochs=1, progress=False, device="cpu")
        raw["output"] = {"dir": str(store.parent / "runs")}
        raw["store"] = {"path": str(store), "shard_size": SHARD}
        for dotted, value in changes.items():
            node = raw
            *head, last = dotted.split(".")
            for part in head:
                node = node[part]
            node[last] = value
        return validate_recipe(raw)

    def copy(self, tmp_path: Path) -> Recipe:
        """A copy of the clean store under ``tmp_path``, and the recipe that wrote it."""
        shutil.copytree(self.root / "clean", tmp_path / "store")
        return self.recipe(tmp_path / "store")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("stores"))


def shard(store: Path, j: int, suffix: str = ".safetensors") -> Path:
    return store / "shards" / f"shard-{j:05d}{suffix}"


def bring(source: Path, target: Path, j: int, record: bool = True) -> None:
    """Shard ``j`` of the store ``source`` (and its record) copied over ``target``'s."""
    for suffix in (".safetensors", ".json") if record else (".safetensors",):
        shutil.copyfile(shard(source, j, suffix), shard(target, j, suffix))


def repairs(world: World, recipe: Recipe, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Run ``cache``; check the store is now byte for byte the clean one; its warnings."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crossdistill.store.writer"):
        cache_recipe(recipe, progress=False)
    assert tree_hashes(recipe.store.path) == tree_hashes(world.root / "clean")
    KnowledgeStore(recipe.store.path).knowledge(TRAIN - 1, 1)  # and it reads
    return [r.getMessage() for r in caplog.records]


def refused(recipe: Recipe, phrase: str) -> None:
    """Opening the store and training from it both fail, naming ``phrase``; no run is left."""
    with pytest.raises(StoreError, match=phrase) as info:
        KnowledgeStore(recipe.store.path)
    assert "crossdistill cache RECIPE" in (info.value.hint or "")
    with pytest.raises(StoreError, match=phrase):
        run_recipe(recipe)
    assert not recipe.run_dir.exists()


def test_each_foreign_store_differs_in_one_part_and_not_in_size(world: World) -> None:
    """What the other tests rely on: a foreign shard differs from the clean one only by the
    fingerprint part its store was made to differ in, and has the very same size."""
    clean = KnowledgeStore(world.root / "clean").manifest
    for kind, part in FOREIGN.items():
        other = KnowledgeStore(world.root / kind).manifest
        assert {p for p in clean.fingerprint if clean.fingerprint[p] != other.fingerprint[p]} == {
            part
        }
        assert [s.bytes for s in other.shards] == [s.bytes for s in clean.shards]
        assert [s.sha256 for s in other.shards] != [s.sha256 for s in clean.shards]


@pytest.mark.parametrize("kind", FOREIGN)
def test_reading_refuses_shards_of_another_store(world: World, tmp_path: Path, kind: str) -> None:
    recipe = world.copy(tmp_path)
    for j in (1, 3):
        bring(world.root / kind, recipe.store.path, j)
    part = FINGERPRINT_PARTS[FOREIGN[kind]].split(" (")[0]
    refused(recipe, rf"shard-00001\.safetensors is not this store's shard 1: .*{part}")


@pytest.mark.parametrize("manifest", ["kept", "deleted"])
@pytest.mark.parametrize("kind", FOREIGN)
def test_cache_rewrites_shards_of_another_store(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, manifest: str
) -> None:
    """The audit's experiment: shards of another store copied in, ``manifest.json`` deleted,
    ``cache`` rerun. Before, the foreign shards were adopted and a fresh manifest written."""
    recipe = world.copy(tmp_path)
    for j in (1, 3):
        bring(world.root / kind, recipe.store.path, j)
    if manifest == "deleted":
        (recipe.store.path / "manifest.json").unlink()
        with pytest.raises(StoreError, match="incomplete"):
            run_recipe(recipe)
    lines = repairs(world, recipe, caplog)
    assert len(lines) == 2
    part = FINGERPRINT_PARTS[FOREIGN[kind]].split(" (")[0]
    for line, j in zip(lines, (1, 3), strict=True):
        assert f"rewriting shard-{j:05d}.safetensors: it was written for another store" in line
        assert part in line


@pytest.mark.parametrize("manifest", ["kept", "deleted"])
def test_record_claiming_this_store_over_foreign_bytes(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, manifest: str
) -> None:
    """The clean record (right fingerprint, index and SHA-256) over another teacher's bytes of
    the same size: the bytes do not match the SHA-256."""
    recipe = world.copy(tmp_path)
    bring(world.root / "teacher", recipe.store.path, 2, record=False)
    if manifest == "kept":
        store = KnowledgeStore(recipe.store.path)  # the size is right: opening is cheap
        store.knowledge(0, 0)
        with pytest.raises(StoreError, match=r"shard-00002\.safetensors is corrupted"):
            store.knowledge(2 * SHARD, 0)
        with pytest.raises(StoreError, match=r"shard-00002\.safetensors is corrupted"):
            run_recipe(recipe)
        shutil.rmtree(recipe.run_dir, ignore_errors=True)
    else:
        (recipe.store.path / "manifest.json").unlink()
    (line,) = repairs(world, recipe, caplog)
    assert "rewriting shard-00002.safetensors: its bytes differ from its record's SHA-256" in line


def test_record_of_another_store_edited_to_claim_this_one(world: World, tmp_path: Path) -> None:
    """A foreign record whose fingerprint and plan were edited to this store's (its SHA-256
    still that of its own bytes) does not match the manifest's SHA-256."""
    recipe = world.copy(tmp_path)
    store = recipe.store.path
    bring(world.root / "seed", store, 4)
    ours = json.loads(shard(world.root / "clean", 4, ".json").read_text())
    record = json.loads(shard(store, 4, ".json").read_text())
    record.update(fingerprint=ours["fingerprint"], plan=ours["plan"])
    shard(store, 4, ".json").write_text(json.dumps(record))
    refused(recipe, r"shard-00004\.safetensors is not this store's shard 4: its record's SHA-256")


@pytest.mark.parametrize("manifest", ["kept", "deleted"])
def test_shards_swapped_within_one_store(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, manifest: str
) -> None:
    recipe = world.copy(tmp_path)
    store = recipe.store.path
    for suffix in (".safetensors", ".json"):
        a, b = shard(store, 1, suffix), shard(store, 2, suffix)
        a.rename(store / "swap")
        b.rename(a)
        (store / "swap").rename(b)
    if manifest == "kept":
        refused(recipe, r"shard-00001\.safetensors is not this store's shard 1: it is shard 2")
    else:
        (store / "manifest.json").unlink()
    lines = repairs(world, recipe, caplog)
    assert [line.split(": ", 1)[1] for line in lines] == [
        "rewriting shard-00001.safetensors: it is shard 2 of its store, not shard 1",
        "rewriting shard-00002.safetensors: it is shard 1 of its store, not shard 2",
    ]


def test_records_of_an_older_version_are_not_trusted(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store written before records named their store: its records prove nothing, so every
    shard is refused by the reader and rewritten by ``cache``."""
    recipe = world.copy(tmp_path)
    for record in (recipe.store.path / "shards").glob("*.json"):
        old = json.loads(record.read_text())
        for field in ("fingerprint", "index", "plan"):
            del old[field]
        record.write_text(json.dumps(old))
    refused(recipe, r"shard-00000\.safetensors is not this store's shard 0: .*names no store")
    lines = repairs(world, recipe, caplog)
    assert len(lines) == TRAIN // SHARD
    assert all("(an older crossdistill wrote it)" in line for line in lines)


def test_a_shard_without_its_record_is_rewritten(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Shard bytes with no record (a crash between the two writes, or bytes copied alone)."""
    recipe = world.copy(tmp_path)
    bring(world.root / "order", recipe.store.path, 0, record=False)
    shard(recipe.store.path, 0, ".json").unlink()
    refused(recipe, r"shard-00000\.safetensors is not this store's shard 0: it has no record")
    (line,) = repairs(world, recipe, caplog)
    assert "rewriting shard-00000.safetensors: it has no record" in line


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_whole_store_of_another_recipe_is_refused(
    world: World, tmp_path: Path, kind: str
) -> None:
    """Manifest and all: the manifest's fingerprint is not this recipe's."""
    recipe = world.recipe(tmp_path / "store")
    shutil.copytree(world.root / kind, recipe.store.path)
    before = tree_hashes(recipe.store.path)
    with pytest.raises(StoreError, match="written for another recipe"):
        run_recipe(recipe)
    assert not recipe.run_dir.exists()
    with pytest.raises(StoreError, match="written for another recipe"):
        cache_recipe(recipe, progress=False)  # and cache does not overwrite it
    assert tree_hashes(recipe.store.path) == before


def test_a_manifest_naming_a_file_outside_the_store_is_refused(
    world: World, tmp_path: Path
) -> None:
    recipe = world.copy(tmp_path)
    path = recipe.store.path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][1]["file"] = "../../elsewhere.safetensors"
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"shard 1 is listed as \.\./\.\./elsewhere"):
        KnowledgeStore(recipe.store.path)


@pytest.mark.parametrize("header", [b"[1, 2]", b'{"x": {"dtype": "BF16"}}', b'{"x": 3}'])
def test_a_malformed_shard_header_is_a_store_error(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "shard.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    with pytest.raises(StoreError, match="malformed header"):
        map_shard(path)
