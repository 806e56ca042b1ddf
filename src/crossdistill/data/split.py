"""The Split: one split of a data set, and the one interface every kind of data implements.

A split holds ``N`` examples as named **fields** (columns: a tensor ``(N, ...)``, a list of
strings, :class:`~crossdistill.data.clips.Clips`, a list of lists, any sequence with ``len`` and
``[i]``), optional **targets**, class names, **sides** (which field, or fields, each view — the
teacher, the student, a peer — reads), optional **groups** (e.g. a speaker per example, for
grouped splitting), per-example **meta** columns for evaluation, and a :meth:`Split.fingerprint`
of its own contents, which is what a knowledge store is tied to.

Bringing your own data is building a Split (or returning one from a data source function)::

    Split({"all": x, "cheap": x[:, :3]}, name="sensors/train", targets=y,
          class_names=["walk", "run"], sides={"teacher": "all", "student": "cheap"})

The kinds below are Splits with the fields and sides of common data: arrays (one tensor both
sides read), texts, pairs (one example in two modalities), ranking lists (a query and its
candidates), and any map-style dataset of ``(input, target)`` pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from crossdistill._util.hashing import update_with
from crossdistill.errors import DataError

Side = str | tuple[str, ...]


class Split:
    """``N`` examples as named fields, and what each side reads (see the module docstring).

    ``default_side`` is what a view not named in ``sides`` reads (default: the only field, when
    there is one). A side that is a tuple of fields gives that view a dict ``{field: value}``.
    """

    def __init__(
        self,
        fields: Mapping[str, Any],
        *,
        name: str,
        targets: Any = None,
        class_names: Sequence[str] = (),
        sides: Mapping[str, Side] | None = None,
        default_side: Side | None = None,
        groups: Sequence[Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.fields = dict(fields)
        self.name = name
        self.targets = targets
        self.class_names = list(class_names)
        self.sides = {view: _side(side) for view, side in (sides or {}).items()}
        if default_side is None and len(self.fields) == 1:
            default_side = next(iter(self.fields))
        self.default_side = None if default_side is None else _side(default_side)
        self.groups = groups
        self.meta = dict(meta or {})
        # the data source and params that made it, when it came from one (recorded by runs)
        self.origin: dict[str, Any] | None = None
        self._check()

    def _check(self) -> None:
        if not self.fields:
            raise DataError(f"split {self.name!r} has no fields")
        lengths = {f"in field {k!r}": len(v) for k, v in self.fields.items()}
        lengths.update({f"in meta {k!r}": len(v) for k, v in self.meta.items()})
        if self.targets is not None:
            lengths["targets"] = len(self.targets)
        if self.groups is not None:
            lengths["groups"] = len(self.groups)
        if len(set(lengths.values())) > 1:
            counts = ", ".join(f"{n} {what}" for what, n in lengths.items())
            raise DataError(
                f"split {self.name!r}: every column needs one entry per example, got {counts}"
            )
        wanted = [*self.sides.values(), *([self.default_side] if self.default_side else [])]
        for side in wanted:
            missing = [f for f in _fields(side) if f not in self.fields]
            if missing:
                raise DataError(
                    f"split {self.name!r}: a side reads {missing}, which it does not have",
                    hint=f"its fields: {sorted(self.fields)}",
                )

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def side(self, view: str) -> Side:
        """What ``view`` reads: a field's name, or a tuple of names (the view is then a dict)."""
        side = self.sides.get(view, self.default_side)
        if side is None:
            raise DataError(
                f"split {self.name!r} does not say what the {view!r} side reads",
                hint=f"give it sides={{{view!r}: FIELD}}; its fields: {sorted(self.fields)}",
            )
        return side

    def size(self, i: int, view: str = "teacher") -> int:
        """Characters of text ``view`` reads in example ``i`` (0 for tensors): a store batches
        texts of similar length together."""
        return sum(_text_length(self.fields[f][i]) for f in _fields(self.side(view)))

    def with_views(self, views: Mapping[str, Any]) -> Split:
        """A split over the same examples whose ``views`` read what they say: a field's name,
        a list of names (a dict view), or ``{"field": name, "channels": [i, ...]}`` (those
        entries of the field's first axis: the channels a cheaper device has). Other views
        keep their sides. A field or channel the data lacks is an error naming it."""
        fields, sides = dict(self.fields), dict(self.sides)
        for view, wanted in views.items():
            if isinstance(wanted, Mapping) or hasattr(wanted, "channels"):
                field = wanted["field"] if isinstance(wanted, Mapping) else wanted.field
                channels = wanted["channels"] if isinstance(wanted, Mapping) else wanted.channels
                name = f"{field}[{','.join(str(c) for c in channels)}]"
                fields[name] = self._channels(field, list(channels), view)
                sides[view] = name
            else:
                sides[view] = _side(wanted)
        for view, side in sides.items():
            missing = [f for f in _fields(side) if f not in fields]
            if missing:
                raise DataError(
                    f"split {self.name!r}: view {view!r} reads {missing}, which it does not have",
                    hint=f"its fields: {sorted(self.fields)}",
                )
        return Split(
            fields,
            name=self.name,
            targets=self.targets,
            class_names=self.class_names,
            sides=sides,
            default_side=self.default_side,
            groups=self.groups,
            meta=self.meta,
        )

    def _channels(self, field: str, channels: list[int], view: str) -> torch.Tensor:
        column = self.fields.get(field)
        if not isinstance(column, torch.Tensor) or column.dim() < 2:
            raise DataError(
                f"split {self.name!r}: view {view!r} selects channels of field {field!r}, "
                f"which is {'missing' if column is None else 'not a tensor of examples'}",
                hint=f"channels are entries of a tensor field's first axis; its fields: "
                f"{sorted(self.fields)}",
            )
        width = column.shape[1]
        bad = [c for c in channels if not 0 <= c < width]
        if bad:
            raise DataError(
                f"split {self.name!r}: view {view!r} selects channels {bad} of field "
                f"{field!r}, which has {width}"
            )
        return column[:, channels].clone()

    def fingerprint(self) -> str:
        """A SHA-256 of the split's contents: every field (by name) and the targets."""
        h = hashlib.sha256()
        for key in sorted(self.fields):
            h.update(f"\x00field {key}\x00".encode())
            update_with(h, self.fields[key], f"split {self.name!r} field {key!r}")
        if self.targets is not None:
            h.update(b"\x00targets\x00")
            update_with(h, self.targets, f"split {self.name!r} targets")
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        fields = ", ".join(self.fields)
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, fields=[{fields}])"


def _side(side: Side | list[str]) -> Side:
    return side if isinstance(side, str) else tuple(side)


def _fields(side: Side) -> tuple[str, ...]:
    return (side,) if isinstance(side, str) else side


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(_text_length(v) for v in value)
    return 0


def _int64_targets(targets: torch.Tensor | None, name: str) -> None:
    if targets is None:
        return
    if not isinstance(targets, torch.Tensor) or targets.dim() != 1:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets)
        raise DataError(f"split {name!r}: targets must have shape (N,), got {shape}")
    if targets.dtype != torch.int64:
        raise DataError(f"split {name!r}: targets must be int64 class indices, got {targets.dtype}")


# ----------------------------------------------------------------------------- the kinds


class ArraySplit(Split):
    """One tensor ``inputs`` (``(N, C, H, W)`` uint8 images, or float arrays) every side reads,
    with ``(N,)`` class targets."""

    def __init__(
        self, inputs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], name: str
    ) -> None:
        if targets.dim() != 1:
            raise DataError(
                f"data split {name!r}: targets must have shape (N,), got {tuple(targets.shape)}"
            )
        super().__init__({"input": inputs}, name=name, targets=targets, class_names=class_names)

    @property
    def inputs(self) -> torch.Tensor:
        return self.fields["input"]


class TextSplit(Split):
    """Sentences every side reads (each model tokenizes its own view), optional class targets."""

    def __init__(
        self,
        texts: list[str],
        targets: torch.Tensor | None,
        class_names: Sequence[str],
        name: str,
        groups: Sequence[Any] | None = None,
    ) -> None:
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError(f"text split {name!r}: texts must be a list of str")
        _int64_targets(targets, name)
        super().__init__(
            {"text": texts}, name=name, targets=targets, class_names=class_names, groups=groups
        )

    @property
    def texts(self) -> list[str]:
        return self.fields["text"]


class PairSplit(Split):
    """The same example in several modalities (``"text"``, ``"speech"``, ``"image"``); each side
    reads its own. By default the teacher reads the text and the student the other modality;
    ``sides`` says otherwise (a tuple gives a view a dict of modalities: a two-tower student)."""

    def __init__(
        self,
        modalities: Mapping[str, Any],
        targets: torch.Tensor | None,
        class_names: Sequence[str],
        name: str,
        sides: Mapping[str, Side] | None = None,
        meta: Mapping[str, Any] | None = None,
        groups: Sequence[Any] | None = None,
    ) -> None:
        texts = modalities.get("text")
        if texts is not None and not all(isinstance(t, str) for t in texts):
            raise DataError(f"paired split {name!r}: texts must be str")
        other = [m for m in modalities if m != "text"]
        defaults: dict[str, Side] = {}
        if texts is not None:
            defaults = {"teacher": "text", "student": other[0] if other else "text"}
        super().__init__(
            modalities,
            name=name,
            targets=targets,
            class_names=class_names,
            sides={**defaults, **(sides or {})},
            default_side="text" if texts is not None else None,
            groups=groups,
            meta=meta,
        )

    @property
    def modalities(self) -> dict[str, Any]:
        return self.fields

    @property
    def texts(self) -> list[str]:
        """The text of every example (what a text teacher reads)."""
        return self.fields["text"]


class RankingSplit(Split):
    """Queries, each with ``C`` candidate texts, the positive first. Every side reads
    ``{"query": str, "candidates": (str, ...)}`` (a batch's default collate transposes the
    candidates into ``C`` columns of ``B`` texts); the target is always 0 (a ranking split is a
    C-way classification whose answer is the first candidate)."""

    def __init__(self, queries: list[str], candidates: list[list[str]], name: str) -> None:
        if len(queries) != len(candidates):
            raise DataError(
                f"ranking split {name!r} has {len(queries)} queries but "
                f"{len(candidates)} candidate lists"
            )
        if not all(isinstance(q, str) for q in queries):
            raise DataError(f"ranking split {name!r}: queries must be str")
        widths = {len(c) for c in candidates}
        if len(widths) > 1:
            raise DataError(
                f"ranking split {name!r}: queries have {sorted(widths)} candidates; every "
                "query needs the same number",
                hint="keep as many negatives per query as the query with the fewest has",
            )
        if widths and min(widths) < 2:
            raise DataError(
                f"ranking split {name!r}: each query needs a positive and at least one negative"
            )
        for i, row in enumerate(candidates):
            if not all(isinstance(c, str) for c in row):
                raise DataError(f"ranking split {name!r}: candidates of query {i} must be str")
        width = len(candidates[0]) if candidates else 0
        super().__init__(
            {"query": queries, "candidates": candidates},
            name=name,
            targets=torch.zeros(len(queries), dtype=torch.int64),
            class_names=[f"candidate{j}" for j in range(width)],
            default_side=("query", "candidates"),
        )

    @property
    def queries(self) -> list[str]:
        return self.fields["query"]

    @property
    def candidates(self) -> list[list[str]]:
        return self.fields["candidates"]

    @property
    def num_candidates(self) -> int:
        return self.num_classes


class DatasetSplit(Split):
    """A map-style dataset read lazily, item by item. Its items are ``(input, target)`` pairs
    (a ``TensorDataset``: every side reads the input) or dicts of fields and an optional
    ``"target"`` (``{"teacher": x_all, "student": x_wrist, "target": y}``: a view reads the
    field of its own name, or what ``sides`` says)."""

    def __init__(
        self, data: Any, name: str | None = None, sides: Mapping[str, Side] | None = None
    ) -> None:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise DataError(
                f"training data {type(data).__name__} has no length",
                hint="pass a map-style dataset (with __len__ and __getitem__), e.g. TensorDataset",
            )
        name = name or type(data).__name__
        first = data[0] if len(data) else None
        if isinstance(first, Mapping):
            keys = [k for k in first if k != "target"]
            fields: dict[str, Any] = {k: _ItemColumn(data, k, name) for k in keys}
            targets = _ItemColumn(data, "target", name) if "target" in first else None
            sides = {**{k: k for k in keys}, **(sides or {})}
        else:
            fields, targets = {"input": _ItemColumn(data, 0, name)}, _ItemColumn(data, 1, name)
        super().__init__(fields, name=name, targets=targets, sides=sides)


class _ItemColumn:
    """One entry of each item of a dataset: element ``key`` of an ``(input, target)`` pair, or
    the value under ``key`` of a dict item."""

    def __init__(self, data: Any, key: int | str, name: str) -> None:
        self.data, self.key, self.name = data, key, name

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        item = self.data[i]
        if isinstance(self.key, str):
            if not isinstance(item, Mapping) or self.key not in item:
                raise DataError(
                    f"example {i} of {self.name} has no {self.key!r}",
                    hint="every item must be a dict with the same keys as the first",
                )
            value = item[self.key]
        else:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DataError(
                    f"example {i} of {self.name} is not an (input, target) pair",
                    hint="each item must be a 2-tuple (x, y), as TensorDataset(x, y) returns, "
                    "or a dict {'teacher': x, 'student': x, 'target': y}",
                )
            value = item[self.key]
        return value if isinstance(value, str) else torch.as_tensor(value)
