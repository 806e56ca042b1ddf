"""sentence-transformers: a text student as a folder that ``SentenceTransformer(path)`` loads.

The folder is an ordinary sentence-transformers model made of its built-in modules only, so it
loads offline without crossdistill and without remote code, and embeds like the student:

- ``static_embedding`` -> ``StaticEmbedding`` (the token table, ``tokenizer.json`` with the
  student's truncation) [+ ``Dense`` with identity activation, the student's projection];
- ``tiny_transformer`` -> ``Transformer`` (the ``BertModel`` by ``save_pretrained``, with an
  unused all-zero pooler; the tokenizer as a fast tokenizer with its special tokens and
  ``model_max_length``) + mean ``Pooling`` [+ ``Dense``];
- ``minilm`` / ``sentence_transformer`` (e.g. the tower of a dual encoder fine-tuned from
  MiniLM) -> its own modules, with their trained weights;

each followed by ``Normalize`` when the student normalises. Weights are safetensors files
(``model.safetensors`` of the first module, ``<i>_Dense/model.safetensors``); nothing is pickled.
With ``--half`` they are float16 (half the bytes; the model then embeds in float16).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.domains.text.static_embedding import StaticEmbedding
from crossdistill.domains.text.tiny_transformer import TinyTransformer
from crossdistill.errors import TEXT_EXTRA, CheckpointError, require
from crossdistill.export.base import EXPORTERS, TEXT, Exporter, ExportError, ExportInputs, Runner
from crossdistill.models.hub.minilm import SentenceEncoder
from crossdistill.registry import check_import

# the special tokens a fast tokenizer is told about, where the vocabulary has them
SPECIAL_TOKENS = {
    "unk_token": ("[UNK]", "<unk>"),
    "cls_token": ("[CLS]", "<s>"),
    "sep_token": ("[SEP]", "</s>"),
    "mask_token": ("[MASK]", "<mask>"),
}


def _sentence_transformers() -> Any:
    return require(
        "sentence_transformers",
        "the sentence-transformers export",
        f"pip install sentence-transformers  {TEXT_EXTRA}",
    )


def copy_tokenizer(tokenizer: Any) -> Any:
    """A copy of a ``tokenizers.Tokenizer``, so that changing its settings leaves the student's
    alone."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer.to_str())


def _tail(model: nn.Module) -> list[nn.Module]:
    """``Dense`` (identity activation) for a Linear projection, ``Normalize`` for a normalising
    student: the modules after pooling."""
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize

    modules: list[nn.Module] = []
    proj = getattr(model, "proj", None)
    if isinstance(proj, nn.Linear):
        modules.append(
            Dense(
                proj.in_features,
                proj.out_features,
                bias=proj.bias is not None,
                activation_function=nn.Identity(),
                init_weight=proj.weight.detach().cpu().clone(),
                init_bias=None if proj.bias is None else proj.bias.detach().cpu().clone(),
            )
        )
    if getattr(model, "normalize", False):
        modules.append(Normalize())
    return modules


def static_modules(model: nn.Module, stage: Path) -> list[nn.Module]:
    """``StaticEmbedding`` [+ Dense] [+ Normalize] for a ``static_embedding`` student."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    weights = model.embedding.weight.detach().cpu().clone()
    # the tokenizer keeps its truncation at max_length: StaticEmbedding truncates only that way
    embedding = StaticEmbedding(copy_tokenizer(model.tokenizer), embedding_weights=weights)
    return [embedding, *_tail(model)]


def fast_tokenizer(model: nn.Module) -> Any:
    """The student's tokenizer as a transformers fast tokenizer: padding and truncation left to
    the caller (sentence-transformers pads to the longest and truncates at ``max_seq_length``),
    special tokens named, ``model_max_length`` the student's ``max_length``."""
    from transformers import PreTrainedTokenizerFast

    tok = copy_tokenizer(model.tokenizer)
    tok.no_padding()
    tok.no_truncation()
    pad = tok.id_to_token(model.pad_id)
    specials = {"pad_token": pad}
    for role, candidates in SPECIAL_TOKENS.items():
        found = [t for t in candidates if tok.token_to_id(t) is not None]
        if found:
            specials[role] = found[0]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model.max_length, **specials
    )


def transformer_modules(model: nn.Module, stage: Path) -> list[nn.Module]:
    """``Transformer`` + mean ``Pooling`` [+ Dense] [+ Normalize] for a ``tiny_transformer``."""
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertModel

    # sentence-transformers loads a BertModel with its pooler, which the student has no use
    # for: save one set to zero (unused by mean pooling) so that loading finds every weight
    bert = BertModel(model.bert.config, add_pooling_layer=True)
    bert.load_state_dict(model.bert.state_dict(), strict=False)
    for param in bert.pooler.parameters():
        nn.init.zeros_(param)
    bert.save_pretrained(str(stage), safe_serialization=True)
    fast_tokenizer(model).save_pretrained(str(stage))
    encoder = Transformer(str(stage), max_seq_length=model.max_length)
    pooling = Pooling(model.bert.config.hidden_size, pooling_mode="mean")
    return [encoder, pooling, *_tail(model)]


def sentence_encoder_modules(model: nn.Module, stage: Path) -> list[nn.Module]:
    """A ``minilm``/``sentence_transformer`` student (a SentenceTransformer inside): its own
    modules, as trained, with ``Normalize`` as the student applies it."""
    from sentence_transformers.base.modules.normalize import Normalize

    modules = [m for m in model.model.children() if not isinstance(m, Normalize)]
    return modules + ([Normalize()] if model.normalize else [])


def _builders() -> dict[type, Callable[[nn.Module, Path], list[nn.Module]]]:

    return {
        StaticEmbedding: static_modules,
        TinyTransformer: transformer_modules,
        SentenceEncoder: sentence_encoder_modules,
    }


@EXPORTERS.register("sentence-transformers")
class SentenceTransformersExporter(Exporter):
    filename = "modules.json"
    description = "a SentenceTransformer folder (built-in modules, safetensors) of a text student"
    inputs = (TEXT,)
    half = True

    def export(self, inputs: ExportInputs, folder: Path) -> dict[str, Any]:
        st = _sentence_transformers()
        if inputs.int8:
            raise ExportError(
                "the sentence-transformers export has no int8 variant",
                hint="export without --int8",
            )
        builders = _builders()
        build = builders.get(type(inputs.model))
        if build is None:
            raise ExportError(
                f"the sentence-transformers export supports the students "
                f"{sorted(b.__name__ for b in builders)}, not {type(inputs.model).__name__} "
                f"(model {inputs.meta['model']!r})",
                hint="use --format safetensors for other students",
            )
        stage = folder / ".stage"
        stage.mkdir()
        modules = build(inputs.model, stage)
        model = st.SentenceTransformer(
            modules=modules, device="cpu", model_card_data=card_data(inputs.card)
        )
        shutil.rmtree(stage)  # the modules hold their weights in memory now
        if inputs.half:
            model.half()  # float16 on disk; sentence-transformers loads and runs it as float16
        # README.md by sentence-transformers' own card (offline: local_files_only); export_run
        # appends crossdistill's sections. A card it fails to make is logged and skipped by it
        model.save(str(folder), create_model_card=True, safe_serialization=True)
        return {
            "weights_dtype": "float16" if inputs.half else "float32",
            "exporter": f"sentence_transformers {st.__version__} SentenceTransformer.save of "
            + " + ".join(type(m).__name__ for m in modules),
            "modules": [type(m).__name__ for m in modules],
            "pipeline_in_graph": True,
            "input": {
                "note": "raw UTF-8 strings; the model's first module tokenizes them",
                "tokenizer_file": "tokenizer.json",
            },
            "load": "sentence_transformers.SentenceTransformer(path, device='cpu', "
            "local_files_only=True).encode(texts)",
        }

    def usage(self, pre: dict[str, Any]) -> str:
        return "\n".join(
            [
                "from sentence_transformers import SentenceTransformer",
                "",
                "# this folder's path; local_files_only: never asks the Hub",
                'model = SentenceTransformer(".", device="cpu", local_files_only=True)',
                'embeddings = model.encode(["a first sentence", "and a second one"])',
                "print(embeddings.shape)",
            ]
        )

    def load(self, folder: Path, threads: int = 1) -> Runner:
        st = _sentence_transformers()
        _check_module_classes(folder)
        model = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)

        def run(texts: list[str]) -> list[np.ndarray]:
            previous = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                out = model.encode(list(texts), batch_size=64, convert_to_numpy=True)
            finally:
                torch.set_num_threads(previous)
            return [np.asarray(out, dtype=np.float32).reshape(len(texts), -1)]

        return run


def card_data(facts: dict[str, Any]) -> Any:
    """sentence-transformers' card data from :func:`crossdistill.export.card.card_data`'s
    facts: the model name, the training and evaluation data (its template needs ``columns`` and
    a ``loss``), tags; ``local_files_only`` so that making the card never asks the Hub. No
    language: a run does not record one."""
    from sentence_transformers import SentenceTransformerModelCardData

    def dataset(kind: str) -> list[dict[str, Any]]:
        info = facts.get(kind)
        if not info:
            return []
        entry = {"name": info["name"], "columns": ["text"], "loss": {"fullname": info["losses"]}}
        return [{**entry, "size": info["size"]} if info.get("size") else entry]

    data = SentenceTransformerModelCardData(
        model_name=facts.get("model_name"),
        train_datasets=dataset("train"),
        eval_datasets=dataset("eval"),
        local_files_only=True,
        generate_widget_examples=False,
    )
    data.add_tags(facts.get("tags", []))
    return data


def _check_module_classes(folder: Path) -> None:
    """Every class ``modules.json`` names is sentence-transformers' own, or allowed as
    :func:`crossdistill.registry.untrusted` says: sentence-transformers before 6.0 imports any
    class a local folder names."""
    path = folder / SentenceTransformersExporter.filename
    try:
        modules = json.loads(path.read_text())
        refs = [m["type"] for m in modules]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(
            f"{path} does not list the model's modules: {type(exc).__name__}: {exc}",
            hint="export the run again: `crossdistill export RUN_DIR --format "
            "sentence-transformers`",
        ) from None
    for i, ref in enumerate(refs):
        if not (isinstance(ref, str) and ref.startswith("sentence_transformers.")):
            check_import(str(ref), f"the module class {ref!r}", f"{path}[{i}].type")
