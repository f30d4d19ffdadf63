"""Deterministic splitting helpers for the built-in tasks.

Every random choice goes through :func:`seeded_rng`, a ``random.Random`` seeded by a string (stable across
processes and Python versions), so a task's train/test split depends on its name and seed only.
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["MAX_TEST", "MAX_TRAIN", "dedupe", "seeded_rng", "split_balanced", "split_plain", "truncate_words"]

MAX_TRAIN = 1000  # cap on built-in train splits
MAX_TEST = 500  # cap on built-in test splits


def seeded_rng(*parts: Any) -> random.Random:
    """A random.Random seeded by a string (string seeds are stable across processes)."""
    return random.Random(":".join(["nrnlib", *map(str, parts)]))


def dedupe(records: Iterable[dict], drop_conflicts: bool = True) -> list[dict]:
    """Keep the first record per (case-folded) input; inputs seen with different targets are dropped."""
    first: dict[str, dict] = {}
    conflicts: set[str] = set()
    for rec in records:
        key = rec["input"].casefold()
        if key in first:
            if first[key]["target"].casefold() != rec["target"].casefold():
                conflicts.add(key)
        else:
            first[key] = rec
    return [r for k, r in first.items() if not (drop_conflicts and k in conflicts)]


def water_fill(sizes: Mapping[str, int], total: int) -> dict[str, int]:
    """Split ``total`` as evenly as possible over classes holding at most ``sizes[k]`` each."""
    alloc = {k: 0 for k in sizes}
    active = [k for k in sorted(sizes) if sizes[k] > 0]
    remaining = total
    while remaining > 0 and active:
        share = max(1, remaining // len(active))
        for k in list(active):
            add = min(share, sizes[k] - alloc[k], remaining)
            alloc[k] += add
            remaining -= add
            if alloc[k] >= sizes[k]:
                active.remove(k)
            if remaining == 0:
                break
    return alloc


def split_balanced(
    records: Sequence[dict], rng: random.Random, n_test: int, n_train: int, max_ratio: float | None = None
) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """Class-balanced disjoint split: test takes an even share per label (at most half of a label's
    examples), train an even share of the rest; with ``max_ratio`` no label gets more than that many
    times the smallest label's share. Both splits shuffled."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_label[rec["target"]].append(rec)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])

    def fill(sizes: dict[str, int], total: int) -> dict[str, int]:
        alloc = water_fill(sizes, total)
        if max_ratio is not None and alloc:
            cap = math.ceil(max_ratio * max(1, min(alloc.values())))
            alloc = {k: min(v, cap) for k, v in alloc.items()}
        return alloc

    t_alloc = fill({k: len(v) // 2 for k, v in by_label.items()}, n_test)
    test = [r for k in sorted(by_label) for r in by_label[k][: t_alloc[k]]]
    rest = {k: v[t_alloc[k] :] for k, v in by_label.items()}
    r_alloc = fill({k: len(v) for k, v in rest.items()}, n_train)
    train = [r for k in sorted(rest) for r in rest[k][: r_alloc[k]]]
    rng.shuffle(test)
    rng.shuffle(train)
    return tuple(train), tuple(test)


def split_plain(
    records: Sequence[dict], rng: random.Random, n_test: int, n_train: int, group: str = ""
) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """Disjoint split of shuffled records; records sharing ``rec[group]`` (default: the input) stay together."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        groups[rec.get(group, rec["input"]) if group else rec["input"]].append(rec)
    keys = sorted(groups)
    rng.shuffle(keys)
    test: list[dict] = []
    train: list[dict] = []
    for key in keys:
        if len(test) < n_test:
            test.extend(groups[key])
        elif len(train) < n_train:
            train.extend(groups[key])
    return tuple(strip_private(train[:n_train])), tuple(strip_private(test[:n_test]))


def strip_private(recs: Iterable[dict]) -> list[dict]:
    """The records without their private ``_``-prefixed keys (e.g. ``_group``)."""
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]


def truncate_words(text: str, max_words: int) -> str:
    """Whole sentences of ``text`` up to ``max_words`` words (the first sentence cut with '...')."""
    sentences = re.split(r"(?<=[.!?])\s+", " ".join(text.split()))
    out: list[str] = []
    n = 0
    for sent in sentences:
        k = len(sent.split())
        if n + k > max_words:
            if not out:
                out.append(" ".join(sent.split()[:max_words]) + " ...")
            break
        out.append(sent)
        n += k
    return " ".join(out)
