"""model2vec: a static-embedding student as a folder that ``model2vec.StaticModel.from_pretrained``
loads, without crossdistill.

A model2vec model (Tulkens & van Dongen, 2024, "Model2Vec: fast state-of-the-art static
embeddings") is a token table and a mean, as a ``static_embedding`` student is; the student's
projection after the mean is folded into the table: the mean's weights sum to one, so
``mean_i(e_i) W^T + b = mean_i(e_i W^T + b)`` and the exported table is ``E W^T + b``
(vocabulary x out_dim rows, computed in float64, stored float32, or float16 with ``--half``).
The folder is written by model2vec's own ``StaticModel(...).save_pretrained``: ``config.json``
(``normalize`` as the student normalises, ``max_length`` its truncation), ``model.safetensors``
(the table as ``embeddings``), ``tokenizer.json`` (the student's tokenizer), ``modules.json`` and
model2vec's ``README.md`` model card (without the MIT licence model2vec's card claims by default),
to which crossdistill's sections are appended. Nothing is
pickled and nothing names code.

Where model2vec 0.10 embeds differently from the student by design (``parity.json`` measures
the rest on real sentences, as for the sentence-transformers export):

- model2vec drops ``[UNK]`` tokens from a text; the student counts them like any token;
- a text with no tokens left embeds as zeros in model2vec, as the projection's bias in the
  student (identical when the student has no projection);
- model2vec first cuts a text to ``max_length`` x (the vocabulary's median token length)
  characters, then truncates at ``max_length`` tokens; only a text whose first that-many
  characters hold fewer than ``max_length`` tokens differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from crossdistill.domains.text.format_sentence_transformers import copy_tokenizer
from crossdistill.domains.text.static_embedding import StaticEmbedding
from crossdistill.errors import TEXT_EXTRA, require
from crossdistill.export.base import EXPORTERS, TEXT, Exporter, ExportError, ExportInputs, Runner

NAME = "model2vec"


def _model2vec() -> Any:
    return require("model2vec", "the model2vec export", f"pip install model2vec  {TEXT_EXTRA}")


@torch.no_grad()
def static_table(model: StaticEmbedding) -> np.ndarray:
    """The student's token table with its projection folded in: ``E W^T + b`` (float32)."""
    table = model.embedding.weight.detach().cpu().double()
    proj = model.proj
    if isinstance(proj, nn.Linear):
        table = table @ proj.weight.detach().cpu().double().T
        if proj.bias is not None:
            table = table + proj.bias.detach().cpu().double()
    elif not isinstance(proj, nn.Identity):
        raise ExportError(
            f"the model2vec export folds a Linear projection into the table; this student's "
            f"projection is a {type(proj).__name__}",
            hint="use --format sentence-transformers or --format safetensors",
        )
    return table.float().numpy()


def _drop_license(card: Path) -> None:
    """Take model2vec's default ``license: mit`` out of its card's metadata: a student's
    licence follows its teacher's and its data's, which the run does not record."""
    from huggingface_hub import ModelCard  # model2vec's own card library, installed with it

    if card.is_file():
        model_card = ModelCard.load(card)
        model_card.data.license = None
        model_card.save(card)


def _other_formats() -> str:
    """The formats besides this one that take a text student, as ``--format`` options."""
    names = [n for n in EXPORTERS.names() if n != NAME and TEXT in EXPORTERS.get(n).inputs]
    return " or ".join(f"--format {n}" for n in names)


@EXPORTERS.register(NAME)
class Model2VecExporter(Exporter):
    filename = "model.safetensors"
    description = "a model2vec StaticModel folder of a static_embedding student (table + mean)"
    inputs = (TEXT,)
    half = True

    def export(self, inputs: ExportInputs, folder: Path) -> dict[str, Any]:
        m2v = _model2vec()
        model = inputs.model
        if not isinstance(model, StaticEmbedding):
            raise ExportError(
                f"the model2vec format holds static-embedding students only (model "
                f"'static_embedding': a token table and a mean), not {type(model).__name__} "
                f"(model {inputs.meta.get('model')!r})",
                hint=f"use {_other_formats()}",
            )
        if inputs.int8:
            raise ExportError(
                "the model2vec export has no int8 variant: model2vec's int8 table drops its "
                "scale, which changes the embeddings of a student that does not normalise",
                hint="export without --int8 (--half stores the table as float16)",
            )
        table = static_table(model)
        if inputs.half:
            table = table.astype(np.float16)
        normalize = bool(getattr(model, "normalize", False))
        config = {
            "model_type": "model2vec",
            "architectures": ["StaticModel"],
            "tokenizer_name": model.tokenizer_name,
            "hidden_dim": int(table.shape[1]),
            "pooling": "mean",
            "normalize": normalize,
            "max_length": model.max_length,
        }
        static = m2v.StaticModel(
            vectors=table,
            tokenizer=copy_tokenizer(model.tokenizer),
            config=config,
            normalize=normalize,
            max_length=model.max_length,
        )
        # model2vec's card titles the model and shows it in its loading code: the recipe's name
        # (card facts say "<name>: a student distilled ..."), not the temporary folder's
        name = str(inputs.card.get("model_name") or "student").split(":", 1)[0]
        static.save_pretrained(folder, model_name=name)
        _drop_license(folder / "README.md")
        return {
            "weights_dtype": "float16" if inputs.half else "float32",
            "exporter": f"model2vec {m2v.__version__} StaticModel.save_pretrained",
            "projection_folded": isinstance(model.proj, nn.Linear),
            "normalize": normalize,
            "pipeline_in_graph": True,
            "input": {
                "note": "raw UTF-8 strings; model2vec tokenizes them with tokenizer.json",
                "tokenizer_file": "tokenizer.json",
            },
            "differences": "model2vec drops [UNK] tokens and embeds a text with no tokens as "
            "zeros; it cuts a text to max_length x median token length characters before "
            "truncating at max_length tokens",
            "load": "model2vec.StaticModel.from_pretrained(path).encode(texts)",
        }

    def usage(self, pre: dict[str, Any]) -> str:
        return "\n".join(
            [
                "from model2vec import StaticModel",
                "",
                "# this folder's path; a local folder never asks the Hub",
                'model = StaticModel.from_pretrained(".")',
                'embeddings = model.encode(["a first sentence", "and a second one"])',
                "print(embeddings.shape)",
            ]
        )

    def load(self, folder: Path, threads: int = 1) -> Runner:
        # model2vec runs in numpy and the tokenizers' own thread pool: ``threads`` does not
        # apply (set RAYON_NUM_THREADS before the process starts to bound the tokenizer)
        model = _model2vec().StaticModel.from_pretrained(str(folder))

        def run(texts: list[str]) -> list[np.ndarray]:
            out = model.encode(list(texts), batch_size=1024, use_multiprocessing=False)
            return [np.asarray(out, dtype=np.float32).reshape(len(texts), -1)]

        return run
