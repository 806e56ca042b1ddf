"""Paired data, the speech_text source, the speech student, tower_infonce and the cross-modal
evaluation (the audio front end and TTS have their own tests: test_audio.py, test_tts.py)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from crossdistill.core.knowledge import Knowledge
from crossdistill.data.clips import Clips
from crossdistill.data.dataset import DistillDataset, example_loader, make_dataset
from crossdistill.data.split import PairSplit
from crossdistill.domains.speech.speech_encoder import SpeechEncoder
from crossdistill.errors import ConfigError, DataError
from crossdistill.evaluate.paired import (
    best_ranks,
    chance,
    cross_retrieval,
    paired_suite,
    rank_metrics,
    zero_shot,
)
from crossdistill.losses.registry import build_loss

WORDNET = Path("/usr/share/wordnet/index.noun")
needs_tts = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="speech synthesis needs: sudo apt-get install -y espeak-ng flite",
)
needs_wordnet = pytest.mark.skipif(
    not WORDNET.exists(), reason="WordNet is missing: sudo apt-get install -y wordnet-base"
)


# ------------------------------------------------------------------------------ paired data


def _clips() -> Clips:
    return Clips.from_list([np.full(3, 0.5), np.full(8, -0.25), np.zeros(0)], 16000, 5)


def test_clips_pad_short_and_cut_the_middle_of_long() -> None:
    clips = _clips()
    assert len(clips) == 3 and [clips.length(i) for i in range(3)] == [3, 8, 0]
    torch.testing.assert_close(clips[0], torch.tensor([0.5, 0.5, 0.5, 0.0, 0.0]))
    torch.testing.assert_close(clips[1], torch.full((5,), -0.25))
    assert clips[2].abs().sum() == 0  # an empty clip is silence, not an error
    with pytest.raises(IndexError):
        clips[3]


def test_clips_save_load_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    clips = _clips()
    clips.save(tmp_path / "c.npz")
    again = Clips.load(tmp_path / "c.npz")
    assert again.max_samples == 5 and again.sample_rate == 16000
    for i in range(3):
        torch.testing.assert_close(again[i], clips[i])
    (tmp_path / "bad.npz").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read audio clips"):
        Clips.load(tmp_path / "bad.npz")


def test_clips_reject_bad_offsets() -> None:
    with pytest.raises(DataError, match="offsets"):
        Clips(np.zeros(4, np.int16), np.array([0, 3]), 16000, 4)


def _split(**kw) -> PairSplit:
    images = torch.arange(3 * 4, dtype=torch.uint8).view(3, 1, 2, 2)
    return PairSplit(
        modalities={"text": ["a", "b", "c"], "image": images},
        targets=torch.tensor([0, 1, 0]),
        class_names=["x", "y"],
        name="toy/train",
        **kw,
    )


def test_pair_dataset_gives_each_side_its_modality() -> None:
    data = make_dataset(_split())
    assert isinstance(data, DistillDataset)
    example = data[1]
    assert example["views"]["teacher"] == "b"
    torch.testing.assert_close(example["views"]["student"], torch.arange(4, 8).view(1, 2, 2) / 255)
    assert example["target"].item() == 1
    batch = next(iter(example_loader(data, 2, shuffle=False, seed=0)))
    assert batch["views"]["teacher"] == ["a", "b"] and batch["views"]["student"].shape == (
        2,
        1,
        2,
        2,
    )


def test_a_view_may_take_several_modalities() -> None:
    data = make_dataset(_split(sides={"student": ("text", "image")}))
    batch = default_collate([data[0], data[2]])
    assert batch["views"]["student"]["text"] == ["a", "c"]
    assert batch["views"]["student"]["image"].shape == (2, 1, 2, 2)


def test_pair_split_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="one entry per example"):
        PairSplit({"text": ["a"], "image": torch.zeros(2, 1)}, None, [], "toy")
    # without text, nothing says which side reads what: the split must be told
    untold = PairSplit({"image": torch.zeros(2, 1), "depth": torch.zeros(2, 1)}, None, [], "toy")
    with pytest.raises(DataError, match="does not say what the 'teacher' side reads"):
        make_dataset(untold)
    told = PairSplit(untold.fields, None, [], "toy", sides={"teacher": "depth", "student": "image"})
    assert set(make_dataset(told)[0]["views"]) == {"teacher", "student"}
    with pytest.raises(DataError, match=r"a side reads \['speech'\], which it does not have"):
        _split(sides={"student": "speech"})


# ------------------------------------------------------------------------ speech_text source


@pytest.fixture(scope="module")
def speech_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


def _load(split: str, root: Path, **kw):
    from crossdistill.data.sources import load_source

    params = {"root": str(root), "max_texts": 40, "progress": False, "eval_texts": 8}
    return load_source("speech_text", split, **(params | kw))


@needs_tts
@needs_wordnet
def test_speech_text_holds_out_texts_and_voices(speech_root: Path) -> None:
    train, test, voices = (_load(s, speech_root) for s in ("train", "test", "test_voices"))
    assert train.name == "speech_text/train" and len(train) > len(test) > 0
    # texts: the test words are never trained on; test_voices re-speaks training words
    assert not set(train.texts) & set(test.texts)
    assert set(voices.texts) <= set(train.texts)
    # voices: the held-out voices are never heard in training
    assert not set(train.meta["voice"]) & set(test.meta["voice"])
    assert set(voices.meta["voice"]) <= set(test.meta["voice"])
    # every clip is real 16 kHz audio of its word, and text_id numbers the distinct texts
    clips = test.modalities["speech"]
    assert clips.sample_rate == 16000 and all(clips.length(i) > 1600 for i in range(len(clips)))
    ids = test.meta["text_id"]
    assert all(
        test.texts[i] == test.texts[j]
        for i in range(len(ids))
        for j in range(len(ids))
        if ids[i] == ids[j]
    )
    assert sorted(set(ids)) == list(range(len(set(test.texts))))
    assert train.class_names[0] == "animal" and int(train.targets.max()) < len(train.class_names)


@needs_tts
@needs_wordnet
def test_speech_text_is_deterministic_and_resumes(speech_root: Path) -> None:
    first = _load("test", speech_root)
    manifest = (speech_root / "manifest.jsonl").read_text()
    again = _load("test", speech_root)  # nothing is generated twice
    assert (speech_root / "manifest.jsonl").read_text() == manifest
    assert again.texts == first.texts
    torch.testing.assert_close(again.modalities["speech"][0], first.modalities["speech"][0])


@needs_tts
@needs_wordnet
def test_a_damaged_clip_pack_is_rebuilt_from_the_wavs(speech_root: Path) -> None:
    first = _load("test", speech_root)
    for pack in (speech_root / "packed").glob("*.npz"):
        pack.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="rebuilding"):
        again = _load("test", speech_root)
    torch.testing.assert_close(again.modalities["speech"][3], first.modalities["speech"][3])


@needs_tts
@needs_wordnet
def test_speech_text_two_tower_view_and_bad_params(speech_root: Path) -> None:
    split = _load("test", speech_root, student=["text", "speech"])
    view = make_dataset(split)[0]["views"]["student"]
    assert set(view) == {"text", "speech"} and view["speech"].shape == (24000,)
    with pytest.raises(ConfigError, match="held_out_voices"):
        _load("test", speech_root, held_out_voices=0)
    with pytest.raises(DataError, match="no split"):
        _load("valid", speech_root)


@needs_wordnet
def test_speech_text_without_tts_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install -y espeak-ng flite"):
        _load("test", tmp_path)


@needs_wordnet
def test_spoken_words_are_common_nouns_of_the_nine_classes() -> None:
    from crossdistill.domains.speech.speech_text import CLASSES, spoken_words

    words = dict(spoken_words())
    assert len(words) > 2000
    assert words["dog"] == "noun.animal" and words["apple"] == "noun.food"
    assert set(words.values()) == set(CLASSES)
    assert all(w.isalpha() and w.islower() for w in words)


# -------------------------------------------------------------------------- speech student


def _wave(seconds: float, total: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(int(total * 16000))
    n = int(seconds * 16000)
    t = torch.arange(n) / 16000
    x[:n] = 0.3 * torch.sin(2 * math.pi * 300 * t) + 0.05 * torch.randn(n, generator=g)
    return x


def test_speech_encoder_shape_size_and_padding_invariance() -> None:
    torch.manual_seed(0)
    model = SpeechEncoder().eval()
    assert sum(p.numel() for p in model.parameters()) <= 2_000_000
    short = _wave(0.6, 1.5).unsqueeze(0)
    longer = _wave(0.6, 2.0).unsqueeze(0)  # the same clip with more silence after it
    with torch.no_grad():
        a, b = model(short), model(longer)
    assert a.shape == (1, 384)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_speech_encoder_trains_and_spec_augments_only_in_training() -> None:
    torch.manual_seed(0)
    model = SpeechEncoder(attention_layers=1, channels=(32, 64), out_dim=16)
    x = torch.stack([_wave(0.5, 1.0, seed) for seed in range(4)])
    loss = model(x).square().mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # no masking in eval


def test_speech_encoder_rejects_other_inputs() -> None:
    with pytest.raises(DataError, match=r"\(B, T\) waveforms"):
        SpeechEncoder()(torch.zeros(2, 1, 100))
    with pytest.raises(ConfigError, match="attention heads"):
        SpeechEncoder(channels=(30,), heads=4)


def test_speech_text_towers_embed_both_sides() -> None:
    from crossdistill.domains.speech.speech_text_towers import SpeechTextTowers

    towers = SpeechTextTowers(
        speech_params={"channels": (32,), "attention_layers": 0, "out_dim": 24},
        text_params={"dim": 8, "out_dim": 24},
    )
    out = towers({"speech": torch.stack([_wave(0.3, 0.5)] * 2), "text": ["a dog", "time"]})
    assert out["embedding"].shape == out["text_embedding"].shape == (2, 24)
    with pytest.raises(DataError, match="student: \\[text, speech\\]"):
        towers(torch.zeros(2, 800))


# ---------------------------------------------------------------------------- tower_infonce


def test_tower_infonce_is_clip_between_the_students_two_towers() -> None:
    torch.manual_seed(0)
    a = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    loss = build_loss("tower_infonce", {"learnable_temperature": False, "temperature": 0.1})
    assert loss.needs().teacher == () and loss.needs().student == ("embedding", "text_embedding")
    value = loss(Knowledge({"embedding": a, "text_embedding": b}), Knowledge(), None)
    # NumPy: CLIP's symmetric cross-entropy over cosine / tau
    an = a.detach().numpy() / np.linalg.norm(a.detach().numpy(), axis=1, keepdims=True)
    bn = b.detach().numpy() / np.linalg.norm(b.detach().numpy(), axis=1, keepdims=True)
    z = an @ bn.T / 0.1

    def xent(m: np.ndarray) -> float:
        m = m - m.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(m).sum(axis=1)) - np.diag(m)))

    assert value.item() == pytest.approx((xent(z) + xent(z.T)) / 2, rel=1e-10)
    value.backward()
    assert a.grad is not None and b.grad is not None and b.grad.abs().sum() > 0

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return loss(Knowledge({"embedding": x, "text_embedding": y}), Knowledge(), None)

    assert torch.autograd.gradcheck(fn, (a.detach().requires_grad_(), b.detach().requires_grad_()))


def test_tower_infonce_learns_its_temperature_by_default() -> None:
    loss = build_loss("tower_infonce")
    assert loss.log_temperature is not None
    assert float(loss.temperature.detach()) == pytest.approx(0.07)


# ----------------------------------------------------------------------- cross-modal metrics


def test_best_ranks_worked_example() -> None:
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.1, 0.2, 0.3]])
    relevant = np.array([[False, False, True], [True, False, True], [True, True, True]])
    # query 0: its one relevant (0.5) is beaten by 0.9 -> rank 2; query 1: best relevant 0.2,
    # beaten by 0.3 -> rank 2; query 2: all relevant -> rank 1
    assert best_ranks(scores, relevant).tolist() == [2, 2, 1]
    metrics = rank_metrics(np.array([1, 2, 20]))
    assert metrics == {
        "r_at_1": 1 / 3,
        "r_at_5": 2 / 3,
        "r_at_10": 2 / 3,
        "mrr": (1 + 0.5 + 0.05) / 3,
    }
    with pytest.raises(DataError, match="relevant"):
        best_ranks(scores, np.zeros_like(relevant))


def test_cross_retrieval_both_directions_and_chance() -> None:
    texts = np.eye(4)
    speech = np.array([[1, 0.1, 0, 0], [0.9, 0, 0.2, 0], [0, 0, 1, 0], [0, 1, 0, 0.5]])
    text_id = np.array([0, 1, 2, 3])  # clip 1 is nearer text 0 than its own text 1
    to_text = cross_retrieval(speech, texts, text_id, np.arange(4))
    assert to_text["r_at_1"] == 0.5 and to_text["r_at_5"] == 1.0
    many = chance(np.repeat(np.arange(50), 2), 50, seeds=3)
    assert many["r_at_1"] == pytest.approx(1 / 50, abs=0.03)
    assert many["r_at_10"] == pytest.approx(10 / 50, abs=0.06)


def test_paired_suite_zero_shot_and_agreement() -> None:
    classes = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[1.0, 0.1], [0.2, 1.0], [1.0, -0.1]])
    student = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # the last one is wrong
    text_id = np.array([0, 1, 2])
    result = paired_suite(
        student, texts, texts, text_id, np.array([0, 1, 0]), classes, classes, texts[text_id]
    )
    assert result["zero_shot_acc"] == pytest.approx(2 / 3)
    assert result["teacher_zero_shot_acc"] == 1.0 and result[
        "zero_shot_agreement"
    ] == pytest.approx(2 / 3)
    assert zero_shot(student, classes).tolist() == [0, 1, 1]
    expected = np.mean(
        [
            F.cosine_similarity(torch.tensor(s), torch.tensor(t), dim=0).item()
            for s, t in zip(student, texts, strict=True)
        ]
    )
    assert result["teacher_cosine"] == pytest.approx(expected)


# ------------------------------------------------------------------ a run, evaluated end to end


@pytest.fixture(scope="module")
def speech_run(speech_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crossdistill import load_recipe, run_recipe

    recipe = (
        Path(__file__).resolve().parent.parent / "recipes" / "speech_from_text" / "infonce.yaml"
    )
    out = tmp_path_factory.mktemp("runs")
    overrides = [
        f"output.dir={out}",
        f"data.params.root={speech_root}",
        "data.params.max_texts=40",
        "data.params.eval_texts=8",
        "train.epochs=1",
        "train.progress=false",
        "store=null",
    ]
    return run_recipe(load_recipe(recipe, overrides)).run_dir


@needs_tts
@needs_wordnet
def test_eval_speech_text_on_a_run(speech_run: Path, cli, tmp_path: Path) -> None:
    import json

    from crossdistill.domains.speech.suite import run_paired_suite

    result = run_paired_suite(speech_run, "test")
    assert result["set"] == "speech_text/test" and result["modality"] == "speech"
    for direction in ("to_text", "from_text", "chance"):
        metrics = result[direction]
        assert 0 <= metrics["r_at_1"] <= metrics["r_at_5"] <= metrics["r_at_10"] <= 1
        assert 0 < metrics["mrr"] <= 1
    assert 0 <= result["zero_shot_acc"] <= 1 and result["zero_shot_chance"] == pytest.approx(1 / 9)
    assert -1 <= result["teacher_cosine"] <= 1 and result["params"] > 0
    out = tmp_path / "eval.json"
    done = cli(
        [
            "eval",
            "--suite",
            "speech-text",
            str(speech_run),
            "--split",
            "test_voices",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(out.read_text())
    assert written["set"] == "speech_text/test_voices" and "to_text" in written
    misplaced = cli(
        ["eval", "--suite", "speech-text", str(speech_run), "--reranker", "x"], cwd=tmp_path
    )
    assert misplaced.returncode == 2 and "--reranker does not apply" in misplaced.stderr


@needs_tts
@needs_wordnet
def test_the_speech_student_exports_alone_to_onnx_from_raw_waveforms(speech_run: Path) -> None:
    pytest.importorskip("onnxruntime", reason="pip install crossdistill[onnx]")
    import json

    from crossdistill.export import export_run

    folder = export_run(speech_run, "onnx")
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["max_abs_diff_all"] < 1e-3  # the log-mel front end is in the graph
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert pre["input"]["shape"] == [None, 24000]  # 1.5 s of 16 kHz audio
    assert pre["input"]["value_range"] == [-1.0, 1.0]
