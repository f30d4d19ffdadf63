"""The :class:`Task` type: an instruction template with disjoint train/test examples.

Two-line user path::

    task = Task.from_records("my_task", [{"input": ..., "target": ...}, ...], "classification",
                             labels=("yes", "no"),
                             instruction="Question: {input}\\n\\nAnswer with one word: yes or no.")

Bad records are refused with a :class:`TaskError` that names the row and the fix: missing values
(``None``, NaN, ``pandas.NA``) and non-finite numbers (they would become the text "nan" or "inf"),
and, in a classification task, one input listed under two different labels.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import random
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CATEGORIES", "ROLES", "Task", "TaskError", "check_label_tokens"]

CATEGORIES = ("classification", "generation")
ROLES = ("train", "heldout", "custom")


class TaskError(ValueError):
    """A task cannot be built or used as asked; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------
# record normalization
# --------------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    """``None``, NaN (float, numpy) and pandas' ``NA`` / ``NaT``: the usual spellings of a missing cell."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(value != value)  # NaN != NaN


def _as_text(value: Any, what: str) -> str:
    """``value`` as text: strings as they are, finite real numbers (Python or numpy) through ``str``."""
    if isinstance(value, str):
        return value
    if _is_missing(value):
        raise TaskError(f"{what} is a missing value ({value!r}), which would become the text {str(value)!r}; "
                        "drop or fill the rows with missing inputs or targets first (e.g. DataFrame.dropna())")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TaskError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise TaskError(f"{what} is the non-finite number {value!r}, which would become the text {str(value)!r}; "
                        "drop that row or give the value as text")
    return str(value)


def _normalize(
    examples: Iterable[Any], where: str, input_key: str = "input", target_key: str = "target"
) -> tuple[dict, ...]:
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


def _refuse_conflicting_labels(where: str, examples: Iterable[dict]) -> None:
    """Raise when one input carries two different targets (a classification input has one label)."""
    first: dict[str, str] = {}
    for ex in examples:
        label = first.setdefault(ex["input"], ex["target"])
        if label != ex["target"]:
            raise TaskError(
                f"{where}: the input {ex['input']!r} is listed under two different labels, {label!r} and "
                f"{ex['target']!r}; a classification input needs exactly one label: fix or drop one of the rows"
            )


def _json_default(value: Any) -> Any:
    """JSON form of the values ``json`` does not know: numpy scalars, tuples and sets, else ``repr``."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return repr(value)


# --------------------------------------------------------------------------------------------------
# the Task type
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A task: an instruction template with ``{input}``, and disjoint train/test examples.

    Examples are dicts with at least ``"input"`` and ``"target"`` (strings, or finite numbers turned into
    strings; missing values and NaN are refused). Classification tasks list their ``labels``
    (single-token answer words; see :func:`check_label_tokens`), every target is one of them, and an input
    may not appear under two different labels (anywhere in train or test). Examples of ``test`` whose input
    also occurs in ``train`` are dropped on construction.

    ``train`` and ``test`` may be given as any sequences of example mappings (e.g. lists of dicts); they are
    stored as tuples of dicts.
    """

    name: str
    category: str
    instruction: str
    train: Sequence[Mapping] = field(repr=False)
    test: Sequence[Mapping] = field(repr=False)
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
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise TaskError(f"{where}: max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        train = _normalize(self.train, f"{where} train")
        test = _normalize(self.test, f"{where} test")
        if not train or not test:
            empty = "train" if not train else "test"
            raise TaskError(f"{where}: the {empty} split is empty; a task needs at least one train and one "
                            "test example (give more records or change test_fraction)")
        if self.category == "classification":
            _refuse_conflicting_labels(where, train + test)
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

    # ---- identity --------------------------------------------------------------------------------

    def digest(self, examples: Sequence[Mapping] | None = None, demonstrations: Sequence[Mapping] = ()) -> str:
        """A 16-hex-character sha256 of what a result computed on this task depends on: name, category,
        instruction, labels, role, max_new_tokens, the exact ``examples`` given, in order (default: all
        train then test examples) and the ``demonstrations`` (few-shot turns).

        This is the task part of every cache key in ``nrnlib.store``: changing the instruction, a label,
        an example or a demonstration changes it. Source, licence and description do not enter it.
        """
        exs = self.train + self.test if examples is None else examples
        parts = {}
        for what, seq in (("examples", exs), ("demonstrations", demonstrations)):
            if isinstance(seq, (str, bytes, Mapping)) or not isinstance(seq, Iterable):
                raise TaskError(f"task {self.name!r}: digest {what} must be a sequence of example dicts, "
                                f"got {type(seq).__name__}")
            seq = list(seq)
            bad = next((i for i, ex in enumerate(seq) if not isinstance(ex, Mapping)), None)
            if bad is not None:
                raise TaskError(f"task {self.name!r}: digest {what}[{bad}] is a {type(seq[bad]).__name__}, "
                                "expected an example dict")
            parts[what] = [dict(ex) for ex in seq]
        payload = {
            "name": self.name, "category": self.category, "instruction": self.instruction,
            "labels": list(self.labels), "role": self.role, "max_new_tokens": self.max_new_tokens, **parts,
        }
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

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
        examples in test); repeated inputs always land in the same split. Exact repeats (same input and
        same target) are dropped, keeping the first. A classification input listed under two different
        labels is refused, as are missing values (None, NaN, pandas NA) and non-finite numbers. A
        generation input may have several targets (several references). ``kw`` are further :class:`Task`
        fields (role, source, licence, description, max_new_tokens).
        """
        if isinstance(records, (str, bytes)) or not isinstance(records, Iterable):
            raise TaskError(f"task {name!r}: records must be a list of dicts, got {type(records).__name__}")
        recs = _normalize(records, f"task {name!r}", input_key, target_key)
        if not recs:
            raise TaskError(f"task {name!r}: no records given; pass a non-empty list of "
                            f"{{{input_key!r}: ..., {target_key!r}: ...}} dicts")
        if not 0.0 < test_fraction < 1.0:
            raise TaskError(f"task {name!r}: test_fraction must be in (0, 1), got {test_fraction!r}")
        if category == "classification":
            _refuse_conflicting_labels(f"task {name!r}", recs)
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

    The encoding layer runs the same check (memoized) whenever it encodes a classification task's
    examples for a model, so ``attribute``, ``finetune``, ``evaluate`` and ``last_token_states`` all refuse
    multi-token label words.
    """
    from nrnlib.encoding import task_label_ids  # encoding imports this module: import at call time

    return task_label_ids(tokenizer, task)
