"""Notebook 00: the task suite and the model's zero/few-shot scores."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import pandas as pd
from tqdm.auto import tqdm

from nrnlib import store
from nrnlib.evaluate import PRIMARY_METRIC, chance_level, evaluate, few_shot_examples
from nrnlib.profiles import Profile
from nrnlib.tasks import get_task, list_tasks

# the code whose change invalidates cached scores (nrnlib.store.code_digest)
SCORE_CODE = ("evaluate", "encoding", "losses", "experiments.suite")


def task_suite_table() -> pd.DataFrame:
    """One row per built-in task: category, role, sizes, label words and one example prompt."""
    rows = []
    for name in list_tasks():
        task = get_task(name)
        example = task.split("test")[0]
        rows.append({
            "task": name, "category": task.category, "role": task.role, "n_train": len(task.train),
            "n_test": len(task.test), "labels": ", ".join(task.labels) or "-",
            "example input": task.user_message(example), "target": task.target(example), "source": task.source,
        })
    return pd.DataFrame(rows)


def score_task(model, task, profile: Profile, shots: int, seed: int = 0) -> dict:
    """``evaluate`` one task under ``profile`` (cached): a flat dict of metrics plus bookkeeping."""
    examples = list(task.test[: profile.n_eval])
    demonstrations = few_shot_examples(task, shots, seed)

    def compute() -> dict:
        start = time.perf_counter()
        score = evaluate(model, task, n=profile.n_eval, shots=shots, seed=seed,
                         batch_size=profile.batch_size, progress=False)
        counts = Counter(score.predictions)
        share = max(counts.values()) / score.n if task.category == "classification" else None
        return {**score.metrics, "n": score.n, "wall_s": time.perf_counter() - start,
                "most_common_prediction": counts.most_common(1)[0][0] if share else None,
                "most_common_share": share, "sample_predictions": score.predictions[:5],
                "per_example": score.per_example}

    return store.cached("suite_scores", compute, settings={"shots": shots, "seed": seed, "n": len(examples)},
                        code=SCORE_CODE, model=model, tasks={task.name: task.digest(examples, demonstrations)})


def zero_and_few_shot_table(model, profile: Profile, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Every task's metrics at 0 shots and ``profile.shots`` shots, beside its chance level; the
    ``per_example`` column holds each metric's per-example values (``evaluate.TaskScore.per_example``)."""
    names = list(tasks) if tasks is not None else list_tasks()
    settings = [0] + ([profile.shots] if profile.shots else [])
    rows = []
    for name in tqdm(names, desc="tasks"):
        task = get_task(name)
        for shots in settings:
            result = score_task(model, task, profile, shots)
            rows.append({
                "task": name, "category": task.category, "role": task.role,
                "setting": "zero-shot" if shots == 0 else f"{shots}-shot",
                "primary_metric": PRIMARY_METRIC[task.category],
                "primary": result[PRIMARY_METRIC[task.category]], "chance": chance_level(task, profile.n_eval),
                **{k: v for k, v in result.items() if k not in ("sample_predictions",)},
            })
    return pd.DataFrame(rows)


# the foundation's rule, fixed before the run: calibrated accuracy - chance > MARGIN on >= 2/3 of the tasks
