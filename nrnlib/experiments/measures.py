"""What a trained model is scored on: the test measurement of every protocol arm of notebooks 03-06.

Kept apart from the experiments that train and tabulate (``neuron_finetuning``, ``generalization``,
``parameter_similarity``, ``ncft``) because ``MEASURE_CODE``, the digest of this module and of the
scoring code under it, enters every arm's cache key: editing how a table is built or how its arms
are shared over processes keeps every trained arm, editing how an arm is scored recomputes them.

Measured on the first ``n`` test examples of a task: the log-prob of the answer (classification:
the gold label's log-prob; generation: the reference answer's summed log-prob), and a decoded metric
(``DECODED_METRIC``: Batch-Calibrated accuracy for classification, ROUGE-L of the greedy answer for
generation), each kept per example (``PER_EXAMPLE``) for paired bootstrap CIs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nrnlib import store
from nrnlib.evaluate import evaluate

DECODED_METRIC = {"classification": "calibrated", "generation": "rougeL"}
# per-example values kept by the measurement: {key in our tables: key in evaluate's TaskScore.per_example}
PER_EXAMPLE = {"classification": {"logprob": "label_logprob", "accuracy": "correct",
                                  "calibrated": "calibrated_correct"},
               "generation": {"logprob": "answer_logprob", "rougeL": "rougeL", "exact_match": "exact_match"}}
MEASURE_CODE = ("evaluate", "encoding", "losses", "experiments.measures")  # the measurement's code digest


@dataclass(frozen=True)
class TestMeasure:
    """``measure(model)``: the task's first ``n`` test examples scored (teacher-forced log-probs, and
    greedy decoding for generation), with the per-example values of ``PER_EXAMPLE``."""

    task: Any  # nrnlib.tasks.Task
    n: int
    batch_size: int = 16

    def examples(self) -> list[dict]:
        return list(self.task.test[: self.n])

    def settings(self) -> dict[str, Any]:
        """What the measurement depends on (enters the arm's cache key): the exact test examples."""
        return {"measure": "test", "n": self.n, "test": self.task.digest(self.examples()),
                "decode": self.task.category == "generation"}

    def __call__(self, model) -> dict[str, Any]:
        start = time.perf_counter()
        score = evaluate(model, self.task, n=self.n, batch_size=self.batch_size,
                         decode=self.task.category == "generation", progress=False)
        per_example = {key: [float(v) for v in score.per_example[name]]
                       for key, name in PER_EXAMPLE[self.task.category].items()}
        return {"metrics": dict(score.metrics), "per_example": per_example, "n": score.n,
                "wall_s": time.perf_counter() - start}


@dataclass(frozen=True)
class TasksMeasure:
    """``measure(model)``: every test task scored by its ``TestMeasure``, ``{"tasks": {task: result}}``."""

    measures: tuple[TestMeasure, ...]

    def settings(self) -> dict[str, Any]:
        return {"measure": "tests", "tasks": {m.task.name: m.settings() for m in self.measures}}

    def __call__(self, model) -> dict[str, Any]:
        start = time.perf_counter()
        out = {m.task.name: m(model) for m in self.measures}
        return {"tasks": out, "wall_s": time.perf_counter() - start}


def measure_untrained(model, measure: TestMeasure, fingerprint: str | None = None) -> dict[str, Any]:
    """``measure`` on the model as it is (cached): every table's untrained reference."""
    return store.cached("untrained", lambda: measure(model), settings=measure.settings(), code=MEASURE_CODE,
                        model=model, fingerprint=fingerprint, tasks={measure.task.name: measure.task.digest(
                            measure.examples())})
