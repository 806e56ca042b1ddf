"""Attention knowledge: taps on attention probabilities and values (zoo ViT, Hugging Face BERT),
clear errors where a model exposes none, and a ViT → ViT MiniLM-style distillation."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from crossdistill import Student, Teacher, distill
from crossdistill.core.knowledge import Knowledge
from crossdistill.core.taps import Tap
from crossdistill.errors import ShapeError, TapError
from crossdistill.losses import build_loss
from crossdistill.models.hf import attention_taps, check_attention_exposed, expose_attention
from crossdistill.models.zoo.vit import ViT

QUIET = {"progress": False, "device": "cpu"}


def tiny_vit(dim: int, seed: int, depth: int = 2) -> ViT:
    torch.manual_seed(seed)
    return ViT(image_size=8, patch_size=2, dim=dim, depth=depth, heads=2, mlp_ratio=2.0)


def assert_distributions(a: torch.Tensor) -> None:
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Zoo ViT
# --------------------------------------------------------------------------------------------


def test_vit_attention_and_value_taps():
    taps = [
        Tap("a3", "blocks.3.attn.probs", kind="attention"),
        Tap("v3", "blocks.3.attn.values"),
    ]
    model = Student(tiny_vit(16, 0, depth=4), taps=taps)
    knowledge = model(torch.randn(5, 1, 8, 8))
    a, v = knowledge["attention/a3"], knowledge["features/v3"]
    assert a.shape == (5, 2, 17, 17) and v.shape == (5, 17, 16)  # 1 + (8/2)² tokens
    assert_distributions(a.detach())
    assert a.requires_grad  # the student's capture carries the graph


# --------------------------------------------------------------------------------------------
# Hugging Face BERT
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return pytest.importorskip("transformers")


def tiny_bert(transformers, attn: str = "eager", seed: int = 0) -> nn.Module:
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        attn_implementation=attn,  # BertModel(config, attn_implementation=...) is refused in 5.x
    )
    torch.manual_seed(seed)
    return transformers.BertModel(config).eval()


class KeywordInputs(nn.Module):
    """Calls a transformers model with a dict of keyword inputs (ids and padding mask)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.hf(**batch)


def ids(batch: int = 3, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(1))


def test_bert_self_attention_returns_probabilities_in_eager_mode(transformers):
    """``encoder.layer.<i>.attention.self`` returns ``(context, probs)`` without
    output_attentions; ``select: 1`` taps the probabilities, and ``….self.value`` (a Linear)
    the values ``V`` they weigh: ``probs @ V`` per head is the context."""
    bert = tiny_bert(transformers)
    path = "encoder.layer.1.attention.self"
    taps = [
        Tap("a1", path, select=1, kind="attention"),
        Tap("ctx1", path, select=0),
        Tap("v1", f"{path}.value"),
    ]
    k = Teacher(bert, outputs={"embedding": "pooler_output"}, taps=taps)(ids())
    a, v, ctx = k["attention/a1"], k["features/v1"], k["features/ctx1"]
    assert a.shape == (3, 4, 7, 7) and v.shape == (3, 7, 32)
    assert_distributions(a)
    heads = v.reshape(3, 7, 4, 8).transpose(1, 2)
    torch.testing.assert_close((a @ heads).transpose(1, 2).reshape(3, 7, 32), ctx)


def test_bert_module_taps_equal_model_provided_attentions(transformers):
    bert = expose_attention(tiny_bert(transformers), output_attentions=True)
    by_module = attention_taps(bert, [0, 1], name="m{i}", source="module")
    by_outputs = attention_taps(bert, [0, 1], name="o{i}", source="outputs")
    assert by_outputs[1] == Tap("o1", "", select="attentions.1", kind="attention")
    k = Teacher(bert, outputs={"embedding": "pooler_output"}, taps=by_module + by_outputs)(ids())
    for i in (0, 1):
        torch.testing.assert_close(k[f"attention/m{i}"], k[f"attention/o{i}"], rtol=0, atol=0)


def test_bert_padding_keys_get_exact_zeros_and_the_losses_stay_finite(transformers):
    bert = tiny_bert(transformers)
    model = KeywordInputs(bert)
    path = "hf.encoder.layer.{i}.attention.self"
    taps = attention_taps(model, [1], name="a{i}", values="v{i}", path=path)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    k = Teacher(model, outputs={"embedding": "pooler_output"}, taps=taps)(
        {"input_ids": ids(), "attention_mask": mask}
    )
    a = k["attention/a1"]
    assert (a[0, :, :, 5:] == 0).all() and (a[1:] > 0).all()
    assert_distributions(a)
    p = a.clone().requires_grad_(True)
    loss = build_loss("attention_kl", {"student": "attention/a1", "teacher": "attention/a1"})
    value = loss(Knowledge({"attention/a1": p}), k, None)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(p.grad).all()
    assert k["features/v1"].shape == (3, 7, 32)


def test_sdpa_attention_is_refused_before_any_forward(transformers):
    bert = tiny_bert(transformers, "sdpa")
    with pytest.raises(TapError, match=r"exposes none.*'attn1' on 'encoder\.layer\.1") as info:
        attention_taps(bert, [1])
    assert "eager" in info.value.hint
    wrapped = KeywordInputs(bert)  # found inside a wrapper too
    with pytest.raises(TapError, match="exposes none"):
        check_attention_exposed(wrapped, [Tap("x", "hf.pooler", kind="attention")])
    expose_attention(bert)
    assert len(attention_taps(bert, [0, 1])) == 2


def test_hand_written_tap_on_sdpa_fails_at_the_preflight_forward_naming_the_tap(transformers):
    """Without the helper, sdpa's self-attention returns ``(context, None)``: the first forward
    (the Distiller's preflight check) raises a TapError naming the tap."""
    bert = tiny_bert(transformers, "sdpa")
    tap = Tap("a1", "encoder.layer.1.attention.self", select=1, kind="attention")
    teacher = Teacher(bert, outputs={"embedding": "pooler_output"}, taps=[tap])
    with pytest.raises(
        TapError, match=r"'a1' on 'encoder\.layer\.1\.attention\.self' captured None(.|\n)*eager"
    ):
        teacher(ids())


def test_outputs_source_needs_output_attentions(transformers):
    bert = tiny_bert(transformers)
    with pytest.raises(TapError, match=r"'attn0'.*output_attentions off"):
        attention_taps(bert, [0], source="outputs")
    with pytest.raises(TapError, match="layers \\[2\\] do not exist"):
        attention_taps(expose_attention(bert, output_attentions=True), [2], source="outputs")
    with pytest.raises(TapError, match="no module at path"):
        attention_taps(bert, [0], path="encoder.layers.{i}.attention.self")


def test_expose_attention_turns_attention_dropout_off_for_a_training_student(transformers):
    bert = tiny_bert(transformers).train()
    taps = attention_taps(bert, [0])
    student = Student(bert, outputs={"embedding": "pooler_output"}, taps=taps).train()
    dropped = student(ids())["attention/attn0"].detach()
    assert (dropped == 0).any() or (dropped.sum(-1) - 1).abs().max() > 1e-2  # p = 0.1 default
    expose_attention(bert)
    assert_distributions(student(ids())["attention/attn0"].detach())
    with pytest.raises(TapError, match="transformers model"):
        expose_attention(nn.Linear(2, 2))


# --------------------------------------------------------------------------------------------
# End to end: a ViT teacher and a narrower ViT student, MiniLM-style
# --------------------------------------------------------------------------------------------

TEACHER_TAPS = [
    Tap("t", "blocks.1.attn.probs", kind="attention"),
    Tap("tv", "blocks.1.attn.values"),
]
STUDENT_TAPS = [
    Tap("s", "blocks.1.attn.probs", kind="attention"),
    Tap("sv", "blocks.1.attn.values"),
]
LOSSES = [
    {"name": "attention_kl", "params": {"student": "attention/s", "teacher": "attention/t"}},
    {
        "name": "value_relation",
        "params": {"student": "features/sv", "teacher": "features/tv", "relation_heads": 2},
    },
]


def images(n: int = 16) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,)))


def attention_loss(teacher: Teacher, student: Student, x: torch.Tensor) -> float:
    loss = build_loss("attention_kl", LOSSES[0]["params"]).eval()
    with torch.no_grad():
        return loss(student.eval()(x), teacher(x), None).item()


def test_distill_vit_attention_and_value_relation_lowers_the_attention_loss():
    teacher = Teacher(tiny_vit(32, 0), taps=TEACHER_TAPS)
    student = Student(tiny_vit(16, 1), taps=STUDENT_TAPS)
    data = images()
    x = data.tensors[0]
    before = attention_loss(teacher, student, x)
    distill(
        teacher,
        student,
        data,
        losses=LOSSES,
        batch_size=8,
        epochs=15,
        optimizer={"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        **QUIET,
    )
    after = attention_loss(teacher, student, x)
    assert after < 0.5 * before, (before, after)


def test_distill_refuses_values_tapped_as_attention_before_training():
    """A Linear/values output tapped as attention is caught by the preflight check."""
    teacher = Teacher(tiny_vit(32, 0), taps=[Tap("t", "blocks.1.attn.values", kind="attention")])
    student = Student(tiny_vit(16, 1), taps=STUDENT_TAPS)
    with pytest.raises(ShapeError, match=r"rank 4.*'attention/t' \(2, 17, 32\)"):
        distill(teacher, student, images(2), losses=LOSSES[:1], batch_size=2, epochs=1, **QUIET)
