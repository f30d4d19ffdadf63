"""One scored condition: a task's teacher-forced test metrics with a neuron set deactivated (or the
intact model), cached with its per-example values. The unit of work of notebook 02 (Table 1), kept
in its own module so that the cache key's code digest covers exactly this scoring code: editing the
tables built on it (``experiments.deactivation``) keeps every computed condition.

Metrics are teacher-forced (no decoding), so every condition costs one forward pass over the same
test examples: classification ``accuracy``, ``calibrated_accuracy`` and ``label_logprob``;
generation ``answer_logprob`` and ``token_accuracy``.
"""

from __future__ import annotations

import contextlib
import time

from nrnlib import store
from nrnlib.ablation import deactivate
from nrnlib.evaluate import evaluate
from nrnlib.neurons import NeuronSet

LOGPROB_METRIC = {"classification": "label_logprob", "generation": "answer_logprob"}
TEACHER_FORCED_METRIC = {"classification": "accuracy", "generation": "token_accuracy"}
# per-example values kept for CIs: the log-prob, and 0/1 correctness where the task has labels
PER_EXAMPLE = {"classification": {"logprob": "label_logprob", "accuracy": "correct"},
               "generation": {"logprob": "answer_logprob"}}
# the code whose change invalidates cached conditions (nrnlib.store.code_digest)
CONDITION_CODE = ("evaluate", "encoding", "losses", "ablation", "experiments.conditions")


def _mask_digest(neurons: NeuronSet | None) -> str:
    return "none" if neurons is None else f"{neurons.digest()}-{list(neurons.shape)}"


def score_condition(
    model, task, neurons: NeuronSet | None, n: int, mode: str = "activation", include_inputs: bool = False,
    batch_size: int = 16, fingerprint: str | None = None,
) -> dict:
    """Teacher-forced metrics of ``task`` (first ``n`` test examples) with ``neurons`` deactivated
    (``None``: the intact model), with ``per_example`` values (``PER_EXAMPLE``). Cached per (model
    weights, examples, mask, mode)."""
    examples = list(task.test[:n])

    def compute() -> dict:
        start = time.perf_counter()
        off = deactivate(model, neurons, mode, include_inputs) if neurons is not None else contextlib.nullcontext()
        with off:
            score = evaluate(model, task, n=n, decode=False, batch_size=batch_size, progress=False)
        per_example = {key: score.per_example[name] for key, name in PER_EXAMPLE[task.category].items()}
        return {**score.metrics, "n": score.n, "per_example": per_example, "wall_s": time.perf_counter() - start}

    return store.cached("deactivation", compute, settings={"neurons": _mask_digest(neurons), "mode": mode,
                        "include_inputs": include_inputs, "n": len(examples)}, code=CONDITION_CODE, model=model,
                        fingerprint=fingerprint, tasks={task.name: task.digest(examples)})
