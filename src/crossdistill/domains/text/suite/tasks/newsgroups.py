"""Mini-newsgroups: 200 Usenet posts from alt.atheism and sci.space (a sample of 20 Newsgroups,
Lang, 1995), read from gensim's ``mini_newsgroup`` with a restricted unpickler."""

from __future__ import annotations

from typing import Any

from crossdistill.domains.text.suite.base import TEXT_TASKS, TextTask, cv_accuracy
from crossdistill.domains.text.suite.data import load_mini_newsgroup


def strip_headers(post: str) -> str:
    """The body of a post: the text after its header block (up to the first blank line).

    The headers name the newsgroup ("Newsgroups: sci.space"), which would give the label away.
    """
    _head, sep, body = post.replace("\r\n", "\n").partition("\n\n")
    return body.strip() if sep else post.strip()


@TEXT_TASKS.register("newsgroups")
class Newsgroups(TextTask):
    """5-fold logistic-regression accuracy on 2 classes from the posts' bodies (headers
    removed; each post embedded whole, so cut at the model's token window). 200 posts:
    ``quick`` uses them all."""

    name = "newsgroups"
    headline = "accuracy"

    def run(self, encoder: Any, quick: bool = False) -> dict[str, Any]:
        posts, labels, names = load_mini_newsgroup()
        bodies = [strip_headers(p) for p in posts]
        result = cv_accuracy(encoder.encode(bodies), labels)
        return {**result, "examples": len(bodies), "classes": len(names)}
