"""Show the model: what it actually answers, and where one neuron fires (the lessons' "look at the
model" cells, issue 14).

- :func:`answers_table`: the first ``n`` test examples of a task with the gold answer and the model's
  answer (classification: the highest-scoring label; generation: the greedy answer), and with
  ``neurons`` the answer again with those neurons deactivated (``ablation.deactivate``).
- :func:`answers_by_shots`: the same rows with one answer column per number of demonstrations
  (notebook 00: what the model says zero-shot and few-shot).
- :func:`answers_after_training`: the same examples' answers before and after training each of
  several protocol arms (``protocol.run_arm`` with :class:`AnswerMeasure`: the arm trains exactly as
  in Table 2, same arm, lr and seed, so on CPU it reaches the same weights; the model is put back);
  :func:`table2_answers` does it for one task's Table 2 arms.
- :func:`top_activations`: for one MLP neuron (``blocks.{layer}.mlp.hook_post``), the ``top`` token
  positions of a task's examples where its activation is largest, with the token and its context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from nrnlib import encoding
from nrnlib.ablation import deactivate
from nrnlib.evaluate import evaluate, select_examples
from nrnlib.experiments.neuron_finetuning import Table2, neuron_arms
from nrnlib.neurons import NeuronSet
from nrnlib.protocol import Arm, Protocol, run_arm
from nrnlib.tasks import as_task

ANSWER_CODE = ("experiments.answers", "evaluate", "encoding")


def _examples_frame(task, n: int) -> pd.DataFrame:
    """``input`` and ``gold`` of the task's first ``n`` test examples (the rows of every answers table)."""
    examples = select_examples(task, "test", n)
    return pd.DataFrame({"input": [ex["input"] for ex in examples], "gold": [task.target(ex) for ex in examples]})


def answers_table(model, task, n: int = 5, *, neurons: NeuronSet | None = None, shots: int = 0,
                  batch_size: int = 16) -> pd.DataFrame:
    """One row per example: ``input``, ``gold``, ``answer`` (and ``answer, neurons off`` with
    ``neurons``), from ``evaluate``'s predictions on the same examples."""
    task = as_task(task)
    table = _examples_frame(task, n)
    table["answer"] = evaluate(model, task, n=n, shots=shots, batch_size=batch_size, progress=False).predictions
    if neurons is not None:
        with deactivate(model, neurons):
            off = evaluate(model, task, n=n, shots=shots, batch_size=batch_size, progress=False)
        table[f"answer, {neurons.count:,} neurons off"] = off.predictions
    return table


def answers_by_shots(model, task, shots: Sequence[int] = (0, 2), n: int = 5, *, batch_size: int = 16,
                     seed: int = 0) -> pd.DataFrame:
    """One row per example: ``input``, ``gold`` and ``answer, {s}-shot`` for each ``s`` in ``shots``
    (``evaluate``'s predictions with ``s`` demonstrations drawn from the train split at ``seed``)."""
    task = as_task(task)
    if not shots or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shots):
        raise ValueError(f"answers_by_shots: shots must be non-negative integers, got {list(shots)}")
    table = _examples_frame(task, n)
    for s in dict.fromkeys(shots):
        table[f"answer, {s}-shot"] = evaluate(model, task, n=n, shots=s, seed=seed, batch_size=batch_size,
                                               progress=False).predictions
    return table


@dataclass(frozen=True)
class AnswerMeasure:
    """``measure(model)``: the model's answers to the task's first ``n`` test examples (evaluate's
    predictions: the best label, or the greedy answer), a protocol measure for ``run_arm``."""

    task: Any  # nrnlib.tasks.Task
    n: int

    def settings(self) -> dict[str, Any]:
        return {"measure": "answers", "n": self.n, "test": self.task.digest(select_examples(self.task, "test", self.n))}

    def __call__(self, model) -> dict[str, Any]:
        return {"answers": evaluate(model, self.task, n=self.n, progress=False).predictions}


def answers_after_training(model, task, arms: Mapping[str, tuple[Arm, float]], protocol: Protocol, *,
                           seed: int = 0, n: int = 5) -> pd.DataFrame:
    """One row per test example: ``input``, ``gold``, ``untrained`` (the model as it is) and one column
    per ``arms`` label, the answer after training that arm (``(Arm, lr)``) to convergence at ``seed``
    (``run_arm``, cached; the model is put back after each)."""
    task = as_task(task)
    measure = AnswerMeasure(task, n)
    table = _examples_frame(task, n)
    table["untrained"] = measure(model)["answers"]
    for label, (arm, lr) in arms.items():
        run = run_arm(model, [task], arm, protocol, lr=lr, seed=seed, measure=measure,
                      measure_settings=measure.settings(), measure_code=ANSWER_CODE)
        table[label] = run["measure"]["answers"]
    return table


def table2_answers(model, sets_by_cell: Mapping[str, Mapping[str, NeuronSet]], table: Table2, task,
                   protocol: Protocol, *, seed: int, control: str = "total", n: int = 5) -> pd.DataFrame:
    """:func:`answers_after_training` for one task's Table 2 arms at ``seed``: the first cell's own set
    ("task neurons"), its random draw for ``control`` ("random neurons") and, when Table 2 trained
    them, "all parameters", each at the lr Table 2 chose (the same training as the table's rows)."""
    task = as_task(task)
    cell = next(iter(sets_by_cell))
    chosen = table.lr[task.name]
    named = {"task": "task neurons", "random": "random neurons"}
    arms = {named[kind]: (arm, chosen["neurons"]["lr"])
            for kind, _, _, arm in neuron_arms(task.name, {cell: sets_by_cell[cell]}, [control], seed)}
    if "all" in chosen:
        arms["all parameters"] = (Arm(f"all:{task.name}", "all"), chosen["all"]["lr"])
    return answers_after_training(model, task, arms, protocol, seed=seed, n=n)


def top_activations(model, task, layer: int, neuron: int, *, n_examples: int = 32, top: int = 5,
                    split: str = "train", context: int = 4, batch_size: int = 8) -> pd.DataFrame:
    """The ``top`` (example, position) pairs of the first ``n_examples`` of ``split`` where neuron
    ``neuron`` of layer ``layer`` is most active, over every real (non-padding) token: ``activation``,
    the ``token`` there and the ``context`` tokens before it, and the example's input."""
    task = as_task(task)
    if not 0 <= layer < model.cfg.n_layers or not 0 <= neuron < model.cfg.d_mlp:
        raise ValueError(f"top_activations: layer must lie in [0, {model.cfg.n_layers}) and neuron in "
                         f"[0, {model.cfg.d_mlp}), got layer {layer}, neuron {neuron}")
    examples = list(task.split(split))[:n_examples]
    rows = []
    kept: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post",
                                                  lambda act, hook: kept.update(a=act[..., neuron].detach()))]):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = encoding.encode_examples(model, task, chunk).to(next(iter(model.parameters())).device)
            model(batch.input_ids)
            for b, ex in enumerate(chunk):
                length = int(batch.attention_mask[b].sum())
                ids = batch.input_ids[b, :length].tolist()
                for pos, value in enumerate(kept["a"][b, :length].float().cpu().tolist()):
                    rows.append({"activation": value, "input": ex["input"], "position": pos,
                                 "token": model.tokenizer.decode([ids[pos]]),
                                 "context": model.tokenizer.decode(ids[max(0, pos - context):pos + 1])})
    table = pd.DataFrame(rows).sort_values("activation", ascending=False, kind="stable")
    return table.head(top).reset_index(drop=True)
