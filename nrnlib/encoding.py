"""Turn task examples into token batches: chat-formatted prompt, answer tokens, answer mask.

Prompt and answer are tokenized separately and concatenated, as the model sees them when it
generates: ``prompt_ids = tokenize(render(messages))``, ``answer_ids = tokenize(answer) [+ eos]``.
Batches are right-padded, so with causal attention no real token ever attends to a pad token and
positions are unchanged; ``target_mask[b, t]`` marks the answer tokens, each predicted from the
logits at ``t - 1``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from nrnlib.tasks.task import TaskError


class PromptTooLongError(ValueError):
    """An example whose prompt and answer do not fit in the model's context window."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, messages: Sequence[dict]) -> str:
    """The text up to where the answer starts: the chat template with the assistant turn opened,
    or, for a base model without one, ``user\\nAnswer: assistant\\n\\n ... user\\nAnswer:``."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    parts = []
    for message in messages:
        if message["role"] == "user":
            parts.append(f"{message['content']}\nAnswer:")
        elif message["role"] == "assistant":
            parts.append(f" {message['content']}\n\n")
    return "".join(parts)


def answer_text(tokenizer, target: str) -> str:
    """The answer as it follows the prompt: bare after a chat template, after a space otherwise."""
    return target if has_chat_template(tokenizer) else " " + target


def end_of_answer_id(tokenizer) -> int | None:
    """The token that ends an assistant turn (``<|im_end|>`` for ChatML), or the EOS token."""
    return tokenizer.eos_token_id


def tokenize(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tokenizer, task, example: dict, shots: Sequence[dict] = ()) -> list[int]:
    """Token ids of the rendered prompt (special tokens come from the template, none added)."""
    ids = tokenize(tokenizer, render_prompt(tokenizer, task.messages(example, shots)))
    if not has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def label_token_ids(tokenizer, labels: Sequence[str]) -> list[int]:
    """One token id per label word, as the word appears at the start of the answer.

    Raises :class:`~nrnlib.tasks.TaskError` (a ``ValueError``) naming every label word that is not
    exactly one token, with its pieces.
    """
    ids, bad = [], []
    for label in labels:
        pieces = tokenize(tokenizer, answer_text(tokenizer, label))
        if len(pieces) == 1:
            ids.append(pieces[0])
        else:
            bad.append(f"{label!r} -> {len(pieces)} tokens {tokenizer.convert_ids_to_tokens(pieces)}")
    if bad:
        raise TaskError("label words must be exactly one token for this tokenizer, but " + "; ".join(bad)
                        + ". Classification needs single-token label words: choose other words.")
    if len(set(ids)) != len(ids):
        raise TaskError(f"label words {list(labels)} do not map to distinct tokens; choose other words")
    return ids


# (id(tokenizer), task name, labels) -> (a reference to the tokenizer, its label ids)
_LABEL_IDS: dict[tuple[int, str, tuple[str, ...]], tuple[Callable[[], object], list[int]]] = {}


def task_label_ids(tokenizer, task) -> list[int]:
    """``label_token_ids`` of a classification task's labels (``[]`` for other tasks), raising
    ``TaskError`` naming the task and every multi-token label word. Memoized per (tokenizer, task name,
    labels): every encoding of a task's examples runs it, at the cost of a dict lookup after the first.
    """
    labels = tuple(getattr(task, "labels", ()) or ())
    if getattr(task, "category", None) != "classification" or not labels:
        return []
    key = (id(tokenizer), task.name, labels)
    hit = _LABEL_IDS.get(key)
    if hit is not None and hit[0]() is tokenizer:  # the same tokenizer, not a new one at a reused id
        return list(hit[1])
    try:
        ids = label_token_ids(tokenizer, labels)
    except TaskError as err:
        raise TaskError(f"task {task.name!r}: {err}") from None
    try:
        ref: Callable[[], object] = weakref.ref(tokenizer)
    except TypeError:  # not weak-referenceable: keep it alive with its entry
        ref = lambda: tokenizer  # noqa: E731
    _LABEL_IDS[key] = (ref, ids)
    return list(ids)


def answer_ids(tokenizer, task, example: dict) -> list[int]:
    """Answer tokens: the label token for classification; the target plus end-of-turn for generation."""
    ids = tokenize(tokenizer, answer_text(tokenizer, task.target(example)))
    if task.category == "generation" and end_of_answer_id(tokenizer) is not None:
        ids = ids + [end_of_answer_id(tokenizer)]
    return ids


@dataclass
class EncodedBatch:
    """A right-padded batch of prompt (+ answer) tokens."""

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Bool[Tensor, "batch seq"]
    target_mask: Bool[Tensor, "batch seq"]
    prompt_lengths: Int[Tensor, " batch"]

    def to(self, device: torch.device | str) -> EncodedBatch:
        return EncodedBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask,
                                                       self.target_mask, self.prompt_lengths)))

    @property
    def last_prompt_index(self) -> Int[Tensor, " batch"]:
        """Position of the last prompt token (where the first answer token is predicted)."""
        return self.prompt_lengths - 1

    @property
    def n_answer_tokens(self) -> int:
        return int(self.target_mask.sum())

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pad_batch(
    prompts: Sequence[list[int]], answers: Sequence[list[int]] | None, pad_id: int
) -> EncodedBatch:
    """Concatenate prompt and answer ids per example and right-pad them into one batch."""
    answers = answers if answers is not None else [[] for _ in prompts]
    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), length), dtype=torch.bool)
    target = torch.zeros((len(seqs), length), dtype=torch.bool)
    for i, (p, s) in enumerate(zip(prompts, seqs, strict=True)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = True
        target[i, len(p): len(s)] = True
    lengths = torch.tensor([len(p) for p in prompts])
    return EncodedBatch(input_ids, attention, target, lengths)


def context_length(model) -> int:
    return int(model.cfg.n_ctx)


def check_generation_fits(model, prompt_length: int, max_new_tokens: int, what: str = "greedy decoding") -> None:
    """Raise ``PromptTooLongError`` naming the lengths when a prompt of ``prompt_length`` tokens plus
    ``max_new_tokens`` generated ones exceeds the model's context."""
    limit = context_length(model)
    if prompt_length + max_new_tokens > limit:
        raise PromptTooLongError(
            f"{what} needs {prompt_length} prompt + {max_new_tokens} new tokens = {prompt_length + max_new_tokens} "
            f"positions, more than the model's context of {limit}; lower max_new_tokens (at most "
            f"{max(limit - prompt_length, 0)} here), shorten the input or use fewer shots."
        )


def pad_id(tokenizer) -> int:
    """The padding token: the tokenizer's own, else EOS, else 0 (never attended to: right padding)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)


def example_ids(
    model, task, example: dict, with_answer: bool = True, shots: Sequence[dict] = ()
) -> tuple[list[int], list[int]]:
    """Prompt ids and answer ids (empty without ``with_answer``) of one example, checked to fit the
    model's context; raises ``PromptTooLongError`` otherwise. A classification task's label words are
    checked to be single tokens first (``task_label_ids``, memoized)."""
    tok = model.tokenizer
    task_label_ids(tok, task)
    prompt = prompt_ids(tok, task, example, shots)
    answer = answer_ids(tok, task, example) if with_answer else []
    limit = context_length(model)
    if len(prompt) + len(answer) > limit:
        raise PromptTooLongError(
            f"An example of task {task.name!r} is {len(prompt) + len(answer)} tokens, more than the model's "
            f"context of {limit}; shorten its input or use fewer shots."
        )
    return prompt, answer


def encode_examples(
    model, task, examples: Sequence[dict], with_answers: bool = True, shots: Sequence[dict] = ()
) -> EncodedBatch:
    """Encode ``examples`` of ``task`` for ``model`` (prompt + answer when ``with_answers``)."""
    if len(examples) == 0:
        raise ValueError(f"No examples to encode for task {task.name!r}")
    pairs = [example_ids(model, task, ex, with_answers, shots) for ex in examples]
    return pad_batch([p for p, _ in pairs], [a for _, a in pairs], pad_id(model.tokenizer))


def batches(
    model, task, examples: Sequence[dict], batch_size: int, with_answers: bool = True,
    shots: Sequence[dict] = (),
) -> Iterator[EncodedBatch]:
    """``encode_examples`` over consecutive chunks of ``batch_size`` examples, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(examples) == 0:
        raise ValueError(f"No examples to encode for task {task.name!r}")
    for start in range(0, len(examples), batch_size):
        yield encode_examples(model, task, examples[start: start + batch_size], with_answers, shots)
