"""Experience replay, the classic continual-learning baseline of notebook 06 (Chaudhry et al. 2019,
"On tiny episodic memories in continual learning").

A fixed **memory** holds the first ``per_task`` training examples of every earlier task (taken after
the protocol's dev split, so dev and test examples are never stored). Each training step of the
current task concatenates its batch ``B_t`` with ``memory_batch`` examples ``M_t`` drawn from the
memory (a seeded permutation per pass, cycled) and takes one step on the mean answer loss of the
joint batch, ``L(B_t ∪ M_t)``: every parameter is trained, as in sequential full fine-tuning, and
the only difference from it is the replayed examples. With an empty memory (the first task) the
step is exactly a sequential fine-tuning step.

:func:`replay_training` is a ``protocol.train_to_convergence`` trainer factory; early stopping
still watches the current task's dev loss only, as for every other method.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from nrnlib import encoding
from nrnlib.checks import check_int
from nrnlib.finetune import Trainer, _encode_items, _order, training

Item = tuple[list[int], list[int]]  # (prompt ids, answer ids)


def split_batch(batch: encoding.EncodedBatch) -> list[Item]:
    """The (prompt ids, answer ids) of each row of a right-padded batch: the inverse of
    ``encoding.pad_batch``."""
    out = []
    for ids, attention, n_prompt in zip(batch.input_ids, batch.attention_mask, batch.prompt_lengths, strict=True):
        row = ids[attention].tolist()
        out.append((row[: int(n_prompt)], row[int(n_prompt):]))
    return out


def memory_items(model, tasks, per_task: int, n_train_of) -> list[Item]:
    """The memory: the first ``per_task`` training examples of each task in ``tasks``, encoded;
    ``n_train_of(task)`` gives a task's training examples (those left after the dev split)."""
    per_task = check_int(per_task, "per_task", minimum=1, where="memory_items")
    return _encode_items(model, [(t, ex) for t in tasks for ex in list(n_train_of(t))[:per_task]])


class ReplayTrainer:
    """A ``finetune.Trainer`` whose every step also trains on ``memory_batch`` replayed examples."""

    def __init__(self, inner: Trainer, memory: Sequence[Item], memory_batch: int, seed: int, pad_id: int) -> None:
        self.inner, self.memory, self.memory_batch, self.pad_id = inner, list(memory), memory_batch, pad_id
        self.n_trainable_entries = inner.n_trainable_entries
        self._order = _order(len(self.memory), seed) if self.memory else None

    def step(self, batch: encoding.EncodedBatch, total: int | None = None) -> float:
        """One step on ``B_t ∪ M_t`` (module docstring); returns its loss."""
        if self._order is None:
            return self.inner.step(batch, total)
        items = split_batch(batch) + [self.memory[next(self._order)] for _ in range(self.memory_batch)]
        joint = encoding.pad_batch([p for p, _ in items], [a for _, a in items], self.pad_id)
        return self.inner.step(joint.to(batch.input_ids.device), total)

    def state(self):  # noqa: ANN201 - the inner trainer's state
        return self.inner.state()

    def load_state(self, state) -> None:  # noqa: ANN001
        self.inner.load_state(state)


def replay_training(memory: Sequence[Item], memory_batch: int, seed: int = 0):  # noqa: ANN201 - a factory
    """A trainer factory (``factory(model, lr=..., weight_decay=...)``) for full fine-tuning with
    replay of ``memory`` (from :func:`memory_items`), ``memory_batch`` examples per step."""
    memory_batch = check_int(memory_batch, "memory_batch", minimum=1, where="replay_training")

    @contextlib.contextmanager
    def factory(model, lr: float, weight_decay: float) -> Iterator[ReplayTrainer]:
        with training(model, None, lr=lr, weight_decay=weight_decay, where="replay") as inner:
            yield ReplayTrainer(inner, memory, memory_batch, seed, encoding.pad_id(model.tokenizer))

    return factory
