"""Group-aware splitting: which split (``train``, ``val``, ``test``) each example belongs to.

Examples of one group — a user, a subject, a speaker, a recording — must never be in two splits,
or a model is tested on the people it was trained on. :func:`assign_by_hash` puts each *group*
(or, without groups, each example's own key) in a split by a stable hash of its id, like the
``text_file`` source does for sentences: the split depends only on the id, never on the order or
the number of examples, so adding data never moves an example from test to train.
:func:`assign_by_column` takes the split the data itself names (a split column) and refuses a
group found in two splits. Both return an :class:`Assignment`, which counts the groups per split.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from crossdistill.errors import ConfigError, DataError

BUCKETS = 10_000
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
SHOWN = 3  # groups named in an error before "and N more"


def group_key(key: Hashable) -> str | bytes:
    """``key`` as the text (or bytes) that is hashed: NumPy scalars as the Python values they
    hold, so a group id read from a ``.npz`` and from a CSV hash alike."""
    if isinstance(key, np.generic):
        key = key.item()
    return key if isinstance(key, (str, bytes)) else str(key)


def hash_bucket(key: Hashable) -> int:
    """The bucket (0..9999) of a group id or an example key: ``blake2b`` (8 bytes) of its UTF-8
    text, modulo 10000 — the same bucket the ``text_file`` source gives a sentence."""
    key = group_key(key)
    data = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclass(frozen=True)
class Assignment:
    """Each example's split, and how many distinct groups each split holds.

    ``split_of`` is the split name of every example; ``names`` the splits there are (a split may
    be empty); ``group_counts`` the distinct groups per split: no group straddles two splits
    exactly when they add up to ``num_groups``. ``how`` says how the split was made (for
    messages).
    """

    split_of: np.ndarray
    names: tuple[str, ...]
    group_counts: dict[str, int]
    num_groups: int
    how: str

    def indices(self, split: str) -> np.ndarray:
        """The examples (ascending int64 indices) of ``split``; empty if it has none."""
        return np.flatnonzero(self.split_of == split).astype(np.int64)

    @property
    def counts(self) -> dict[str, int]:
        """Examples per split."""
        found = Counter(self.split_of.tolist())
        return {name: found.get(name, 0) for name in self.names}


def check_fractions(test_fraction: float, val_fraction: float, where: str) -> None:
    """A ConfigError unless both fractions are in [0, 1) and leave some data for training."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{where}: {name} must be in [0, 1), got {value!r}")
    if test_fraction + val_fraction >= 1.0:
        raise ConfigError(
            f"{where}: test_fraction + val_fraction must be below 1 (some data trains), got "
            f"{test_fraction} + {val_fraction}"
        )


def assign_by_hash(
    keys: Sequence[Hashable],
    test_fraction: float,
    val_fraction: float = 0.0,
    where: str = "data",
) -> Assignment:
    """Each example's split from a stable hash of its key (its group id, or its own key when
    there are no groups): a key whose :func:`hash_bucket` is below ``test_fraction * 10000`` is
    in ``test``, the next ``val_fraction * 10000`` buckets are ``val``, the rest ``train``.
    Every example of one key lands in one split. The splits are ``train, test``, and ``val``
    too when ``val_fraction > 0``. Fractions are shares of groups, not of examples."""
    check_fractions(test_fraction, val_fraction, where)
    test_cut = round(test_fraction * BUCKETS)
    val_cut = test_cut + round(val_fraction * BUCKETS)
    canonical = [group_key(k) for k in keys]
    split_for: dict[str | bytes, str] = {}
    for key in dict.fromkeys(canonical):  # each distinct key hashed once
        bucket = hash_bucket(key)
        split_for[key] = "test" if bucket < test_cut else "val" if bucket < val_cut else "train"
    names = ("train", "val", "test") if val_fraction > 0 else ("train", "test")
    per_split = Counter(split_for.values())
    shares = f"test_fraction={test_fraction}" + (
        f", val_fraction={val_fraction}" if val_fraction > 0 else ""
    )
    return Assignment(
        split_of=np.array([split_for[k] for k in canonical], dtype="<U5"),
        names=names,
        group_counts={name: per_split.get(name, 0) for name in names},
        num_groups=len(split_for),
        how=f"{len(split_for)} groups split by hash ({shares})",
    )


def assign_by_column(
    splits: Sequence[str],
    groups: Sequence[Hashable] | None = None,
    where: str = "data",
) -> Assignment:
    """Each example's split as ``splits`` names it (a split column). With ``groups``, a group
    found in two splits is a DataError naming it; without, each example is its own group.
    The splits are the names found, ``train``/``val``/``test`` first."""
    names_of = [str(s.item() if isinstance(s, np.generic) else s).strip() for s in splits]
    empty = [i for i, s in enumerate(names_of) if not s]
    if empty:
        raise DataError(f"{where}: example {empty[0]} has an empty split name")
    found = set(names_of)
    names = tuple(n for n in SPLIT_NAMES if n in found) + tuple(sorted(found - set(SPLIT_NAMES)))
    if groups is None:
        per_split = Counter(names_of)
        num_groups = len(names_of)
    else:
        if len(groups) != len(names_of):
            raise DataError(
                f"{where}: {len(names_of)} split names but {len(groups)} group ids",
                hint="give every example one split name and one group id",
            )
        seen: dict[str | bytes, set[str]] = {}
        for key, name in zip(groups, names_of, strict=True):
            seen.setdefault(group_key(key), set()).add(name)
        straddling = [(k, sorted(s)) for k, s in seen.items() if len(s) > 1]
        if straddling:
            shown = ", ".join(f"{k!r} in {'/'.join(s)}" for k, s in straddling[:SHOWN])
            more = f" and {len(straddling) - SHOWN} more" if len(straddling) > SHOWN else ""
            raise DataError(
                f"{where}: {len(straddling)} groups are in two splits: {shown}{more}",
                hint="give all examples of a group the same split, or leave the split column "
                "out to split by a hash of the group",
            )
        per_split = Counter(next(iter(s)) for s in seen.values())
        num_groups = len(seen)
    return Assignment(
        split_of=np.array(names_of, dtype=str),
        names=names,
        group_counts={name: per_split.get(name, 0) for name in names},
        num_groups=num_groups,
        how=f"{num_groups} groups split as the data names them",
    )


def select(assignment: Assignment, split: str, where: str) -> np.ndarray:
    """The indices of ``split``: a DataError when the data has no such split or it is empty."""
    if split not in assignment.names:
        raise DataError(
            f"{where} has no split {split!r}",
            hint=f"valid splits: {', '.join(assignment.names)}"
            + ("; set val_fraction to hold out a validation split" if split == "val" else ""),
        )
    index = assignment.indices(split)
    if not len(index):
        raise DataError(
            f"{where}: split {split!r} is empty ({assignment.how})",
            hint="with few groups, a fraction may round to none of them: raise it, or name the "
            "splits in the data",
        )
    return index
