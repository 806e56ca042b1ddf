"""``crossdistill tokenizer SOURCE --out FILE``: a tokenizer for a student's own vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossdistill.cli._app import app, key_values


@app.command()
def tokenizer(
    source: Annotated[str, typer.Argument(help="a text data source, e.g. sentences")],
    out: Annotated[Path, typer.Option(help="the tokenizer.json to write")],
    kind: Annotated[str, typer.Option(help="unigram | bpe | wordpiece")] = "unigram",
    vocab_size: Annotated[int, typer.Option(help="tokens in the vocabulary")] = 16000,
    split: Annotated[str, typer.Option(help="the split whose texts it learns from")] = "train",
    lowercase: Annotated[bool, typer.Option(help="lower-case and strip accents first")] = True,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="data source parameter KEY=VALUE")
    ] = None,
) -> None:
    """Train a tokenizer on a text data source, for a student with its own vocabulary.

    The file is reproducible (the same corpus and options give the same bytes); a recipe's
    ``student.params.tokenizer`` then names it.
    """
    from crossdistill.domains.text.tokenizers import train_tokenizer_from_source

    params = key_values(param, "--param")
    path = train_tokenizer_from_source(
        source, split, params, out=out, kind=kind, vocab_size=vocab_size, lowercase=lowercase
    )
    typer.echo(str(path))
