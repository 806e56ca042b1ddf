"""Top-k logits plus tail codes (``tail_bits``): the top-k stay exact, the tail keeps its order
and shape to the codes' resolution and holds exactly the stored remaining mass, the KD target at
T = 4 comes far closer to the dense one than plain top-k's, and stores, manifests and recipes
spell it so that a store of another setting is refused and plain top-k is unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import DIGITS
from crossdistill.config import validate_recipe
from crossdistill.core.wrappers import Teacher
from crossdistill.data.augment import RandomCropFlip
from crossdistill.data.dataset import DistillDataset
from crossdistill.data.split import ArraySplit
from crossdistill.errors import ConfigError, StoreError
from crossdistill.store import KeyCodec, KnowledgeStore, StoreDataset, write_store

CLASSES = 10
T = 4.0


def codec(k: int, bits: int | None, classes: int = CLASSES, dtype: str = "float32") -> KeyCodec:
    return KeyCodec(format="topk", k=k, dtype=dtype, tail_bits=bits).check("logits", (classes,))


def random_logits(rows: int = 512, classes: int = CLASSES, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, classes, generator=torch.Generator().manual_seed(0)) * scale


def round_trip(c: KeyCodec, x: torch.Tensor) -> torch.Tensor:
    return c.decode("logits", c.encode("logits", x))


def kl_at_t(x: torch.Tensor, decoded: torch.Tensor) -> float:
    """Mean KL(dense softmax at T || decoded at T), as the KD loss sees the target."""
    p = torch.softmax(x.double() / T, -1)
    q = torch.log_softmax(decoded.double() / T, -1)
    return float((p * (p.log() - q)).sum(-1).mean())


# ------------------------------------------------------------------------------- codec


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("classes,k", [(10, 3), (100, 10), (13, 1)])
def test_top_k_exact_tail_mass_exact_tail_order_kept(bits: int, classes: int, k: int) -> None:
    x = random_logits(256, classes, scale=6.0)  # spread: some fall beyond the range
    c = codec(k, bits, classes)
    arrays = c.encode("logits", x)
    assert arrays["logits.tail"].dtype == np.uint8
    assert arrays["logits.tail"].shape == (256, math.ceil((classes - k) * bits / 8))
    decoded = round_trip(c, x)
    truth = torch.log_softmax(x.double(), -1)
    top = x.topk(k, -1).indices
    # the top-k log-probabilities are the dense ones
    torch.testing.assert_close(decoded.gather(-1, top), truth.gather(-1, top).float())
    assert torch.allclose(decoded.double().exp().sum(-1), torch.ones(256, dtype=torch.float64))
    # the tail holds exactly the remaining mass
    tail = torch.ones_like(x, dtype=torch.bool).scatter(-1, top, False)
    got_rest = (decoded.double().exp() * tail).sum(-1)
    torch.testing.assert_close(got_rest, (truth.exp() * tail).sum(-1), rtol=1e-5, atol=1e-7)
    # tail order to the codes' resolution: within the range, two tail logits further apart
    # than one step keep their order, and each is decoded within half a step (so every
    # distance between two of them within one step)
    step = 16.0 / (2**bits - 1)
    kth = x.gather(-1, top[:, -1:])
    inside = tail & (kth - x <= 16.0 - step / 2)
    checked = 0
    for row in range(256):
        idx = inside[row].nonzero().flatten()
        if len(idx) < 2:
            continue
        a, b = x[row, idx], decoded[row, idx].double()
        gap_true = a[:, None] - a[None, :]
        gap_got = b[:, None] - b[None, :]
        assert (gap_got[gap_true > step] > 0).all()
        assert (gap_got - gap_true).abs().max() <= step + 1e-4
        checked += 1
    assert checked > 20
    # a tail logit further below the k-th than the range shares the last code: the lowest
    far = tail & (kth - x > 16.0 + step / 2)
    lowest = decoded.masked_fill(~tail, math.inf).min(-1, keepdim=True).values
    assert far.any() and torch.equal(decoded[far], lowest.expand_as(decoded)[far])


def test_codes_are_packed_big_endian_in_class_order() -> None:
    """The packed bytes re-derived by hand: codes of the classes outside the top-k, ascending
    class index, each ``round((k-th - logit) / step)`` clipped, bits most significant first."""
    x = torch.tensor([[0.0, -1.0, 5.0, -40.0, 4.0, -2.2, -3.0]])
    c = KeyCodec(format="topk", k=2, dtype="float32", tail_bits=3, tail_range=7.0)
    c = c.check("logits", (7,))
    arrays = c.encode("logits", x)
    # k-th value 4.0; step 1.0; tail classes 0, 1, 3, 5, 6 -> gaps 4, 5, 44 (clip 7), 6.2, 7
    bits = "".join(format(code, "03b") for code in (4, 5, 7, 6, 7))
    bits += "0" * (-len(bits) % 8)
    expected = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert arrays["logits.tail"].tolist() == [expected]
    decoded = c.decode("logits", arrays)[0]
    tail = decoded[[0, 1, 3, 5, 6]] - decoded[[0]]
    torch.testing.assert_close(tail, torch.tensor([0.0, -1.0, -3.0, -2.0, -3.0]))


@pytest.mark.parametrize("classes,k", [(10, 3), (1000, 10)])
def test_tail_codes_bring_the_kd_target_far_closer_than_plain_top_k(classes: int, k: int) -> None:
    x = random_logits(512, classes)
    plain = kl_at_t(x, round_trip(codec(k, None, classes, "float16"), x))
    kls = {b: kl_at_t(x, round_trip(codec(k, b, classes, "float16"), x)) for b in (2, 4, 8)}
    assert kls[4] < plain / 10, (plain, kls)
    assert kls[8] < kls[4] < kls[2] < plain, (plain, kls)


def test_one_row_decodes_as_in_a_batch() -> None:
    """The reader decodes an example alone or a batch at once: the same bits either way."""
    x = random_logits(40)
    c = codec(3, 4, dtype="float16")
    arrays = c.encode("logits", x)
    batch = c.decode("logits", arrays)
    rows = [c.decode("logits", {n: a[i] for n, a in arrays.items()}) for i in range(40)]
    assert torch.equal(torch.stack(rows), batch)
    # and (n, slots, ...) arrays, as a shard holds them
    slotted = {n: a.reshape(8, 5, *a.shape[1:]) for n, a in arrays.items()}
    assert torch.equal(c.decode("logits", slotted).reshape(40, CLASSES), batch)


def test_bytes_per_row() -> None:
    assert codec(3, None, dtype="float16").row_bytes() == 3 * 2 + 3 * 2 + 4
    assert codec(3, 4, dtype="float16").row_bytes() == 3 * 2 + 3 * 2 + 4 + 4  # 7 codes: 28 bits
    assert codec(10, 4, 1000, "float16").row_bytes() == 10 * 4 + 4 + 495
    assert KeyCodec(dtype="float16").check("logits", (1000,)).row_bytes() == 2000


def test_plain_top_k_is_spelled_as_before() -> None:
    """Stores and recipes without tail codes dump exactly the fields they always had, so
    their manifests' plan digests and recipes' fingerprints are unchanged."""
    assert KeyCodec(format="topk", k=3).model_dump() == {
        "format": "topk",
        "k": 3,
        "dtype": "float16",
        "shape": None,
    }
    recipe = digits_recipe({"format": "topk", "k": 3})
    assert recipe.model_dump(mode="json")["store"]["keys"] == {
        "logits": {"format": "topk", "k": 3, "dtype": None}
    }
    tail = digits_recipe({"format": "topk", "k": 3, "tail_bits": 4})
    assert tail.fingerprint() != recipe.fingerprint()
    assert KeyCodec(format="topk", k=3, tail_bits=4).tail_range == 16.0


# ------------------------------------------------------------------------------- recipes


def digits_recipe(logits: dict) -> object:
    raw = yaml.safe_load((DIGITS / "kd.yaml").read_text())
    raw["store"] = {"path": "runs/store", "keys": {"logits": logits}}
    return validate_recipe(raw)


@pytest.mark.parametrize(
    "logits,message",
    [
        ({"format": "topk", "k": 3, "tail_bits": 0}, "greater than or equal to 1"),
        ({"format": "topk", "k": 3, "tail_bits": 9}, "less than or equal to 8"),
        ({"format": "topk", "k": 3, "tail_bits": 4, "tail_range": 0}, "greater than 0"),
        ({"format": "topk", "k": 3, "tail_range": 8.0}, "tail_range needs tail_bits"),
        ({"format": "dense", "tail_bits": 4}, "need format: topk"),
    ],
)
def test_bad_tail_settings_are_refused_by_the_recipe(logits: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        digits_recipe(logits)
    assert "store.keys.logits" in str(info.value) and message in str(info.value)


def test_tail_codes_of_every_class_are_refused() -> None:
    with pytest.raises(ConfigError, match="keeps all 10"):
        codec(10, 4)


# ------------------------------------------------------------------------------- stores


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * 6


def tiny_data() -> DistillDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=g)
    split = ArraySplit(x, torch.arange(40) % CLASSES, [str(c) for c in range(CLASSES)], "tiny")
    return DistillDataset(split, augmentation=RandomCropFlip(padding=1), seed=1, slots=2)


def write(path: Path, teacher: Teacher, bits: int | None) -> None:
    keys = {"logits": KeyCodec(format="topk", k=3, dtype="float16", tail_bits=bits)}
    write_store(path, teacher, tiny_data(), keys, {"data": "tiny"}, shard_size=16, progress=False)


@pytest.fixture(scope="module")
def teacher() -> Teacher:
    torch.manual_seed(0)
    return Teacher(Linear(), outputs=["logits"]).eval()


def test_a_store_with_tail_codes_reads_back(tmp_path: Path, teacher: Teacher) -> None:
    write(tmp_path / "s", teacher, 4)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["keys"]["logits"] == {
        "format": "topk",
        "k": 3,
        "dtype": "float16",
        "shape": [CLASSES],
        "tail_bits": 4,
        "tail_range": 16.0,
    }
    store = KnowledgeStore(tmp_path / "s")
    c = store.manifest.keys["logits"]
    data = tiny_data()
    for i in (0, 17, 39):
        for k in (0, 1):
            example = data.example(i, data.slot_params(i, k))
            with torch.no_grad():
                logits = teacher(example["views"]["teacher"][None])["logits"]
            expected = c.decode("logits", c.encode("logits", logits))[0]
            # (the writer runs the teacher on batches: its last bits may differ from one row's)
            torch.testing.assert_close(store.knowledge(i, k)["logits"], expected)
    # a batch read at once is the examples read one by one
    dataset = StoreDataset(tiny_data(), store)
    dataset.set_epoch(2)
    batch = dataset.__getitems__([5, 33, 5, 16])
    one = torch.stack([dataset[i]["knowledge"]["logits"] for i in (5, 33, 5, 16)])
    assert torch.equal(batch.batch["knowledge"]["logits"], one)


@pytest.mark.parametrize("first,second", [(4, 2), (None, 4), (4, None)])
def test_a_store_of_another_tail_setting_is_refused_naming_both(
    tmp_path: Path, teacher: Teacher, first: int | None, second: int | None
) -> None:
    write(tmp_path / "s", teacher, first)
    with pytest.raises(StoreError) as info:
        write(tmp_path / "s", teacher, second)

    def spelled(bits: int | None) -> str:
        tail = f", tail_bits: {bits}, tail_range: 16.0" if bits else ""
        return "{format: topk, k: 3, dtype: float16" + tail + "}"

    expected = f"key 'logits' is stored as {spelled(first)} there, {spelled(second)} here"
    assert expected in str(info.value)
    assert "delete it" in info.value.hint
