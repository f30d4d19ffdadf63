"""Notebook 03 (Paper A Table 2): fine-tune only a task's neurons, only matched random neurons, or all
parameters, with the same loop, data order, steps and learning rate, and score the task's test split.

Each arm runs inside ``model_state.restored_after``, so one loaded model serves every arm and seed, and
each result is cached on disk (an interrupted run resumes at the next arm).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from nrnlib import store
from nrnlib.evaluate import evaluate
from nrnlib.experiments.deactivation import LOGPROB_METRIC, TEACHER_FORCED_METRIC
from nrnlib.finetune import finetune
from nrnlib.model_state import model_fingerprint, restored_after
from nrnlib.neurons import NeuronSet
from nrnlib.profiles import Profile
from nrnlib.tasks import get_task

ARMS = ("none", "task", "random", "all")
# the code whose change invalidates cached arms (nrnlib.store.code_digest)
ARM_CODE = ("finetune", "evaluate", "encoding", "losses", "experiments.neuron_finetuning")


def finetune_arm(
    model, task, neurons: NeuronSet | None, profile: Profile, seed: int, lr: float, arm: str,
    fingerprint: str | None = None,
) -> dict:
    """Fine-tune on ``task`` (all parameters when ``neurons`` is None; nothing for arm "none"), score
    its first ``profile.n_eval_conditions`` test examples (teacher-forced), restore the model."""
    steps = 0 if arm == "none" else profile.finetune_steps
    trained = "all" if neurons is None else neurons.digest()
    test = list(task.test[: profile.n_eval_conditions])
    train = list(task.train[: profile.n_train])

    def compute() -> dict:
        with restored_after(model):
            log = None
            if steps:
                log = finetune(model, [task], neurons=neurons, steps=steps, lr=lr, seed=seed,
                               batch_size=profile.finetune_batch_size, n_train=profile.n_train, progress=False)
            score = evaluate(model, task, n=profile.n_eval_conditions, decode=False, progress=False)
        return {**score.metrics, "n": score.n, "steps": steps,
                "trainable_entries": log.n_trainable_entries if log else 0,
                "first_loss": log.first_loss if log else None, "last_loss": log.last_loss if log else None,
                "mean_loss_last_5": sum(log.losses[-5:]) / len(log.losses[-5:]) if log else None,
                "train_wall_s": log.wall_s if log else 0.0}

    return store.cached(
        "finetune_arm", compute,
        settings={"trained": trained, "arm": arm, "seed": seed, "lr": lr, "steps": steps,
                  "batch_size": profile.finetune_batch_size, "n_train": len(train), "n_test": len(test)},
        code=ARM_CODE, model=model, fingerprint=fingerprint,
        tasks={task.name: task.digest(train + test)},
    )


def _jobs(sets: Mapping[str, Mapping[str, NeuronSet]], arms: Sequence[str], seeds: Sequence[int]) -> list[tuple]:
    """(seed, task, arm, selection) in seed-major order, so a partial run holds whole seeds: "none"
    once per task (seed 0), "all" once per task and seed, "task"/"random" per selection too."""
    tasks = list(next(iter(sets.values())))
    jobs = []
    for i, seed in enumerate(seeds):
        for name in tasks:
            for arm in arms:
                if arm == "none" and i == 0 or arm == "all":
                    jobs.append((seed if arm == "all" else 0, name, arm, "-"))
                elif arm in ("task", "random"):
                    jobs.extend((seed, name, arm, selection) for selection in sets)
    return jobs


def neuron_finetuning_table(
    model, sets: Mapping[str, Mapping[str, NeuronSet]], profile: Profile, lr: float = 1e-4, arms: Sequence[str] = ARMS,
) -> pd.DataFrame:
    """Table 2. ``sets[selection][task]`` are the task-neuron sets (e.g. "plain" and "specific"). For
    every task, seed of the profile and arm: the task's test metrics after training. Arms "task" and
    "random" run per selection ("random" trains ``sets[selection][task].random_like(seed)``: the same
    count in every layer); "none" and "all" do not depend on the selection (``selection`` "-")."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    if not sets or not all(sets.values()):
        raise ValueError("sets must map each selection to a non-empty {task: NeuronSet}")
    fp = model_fingerprint(model)
    rows = []
    for seed, name, arm, selection in tqdm(_jobs(sets, arms, profile.seeds), desc="Table 2"):
        task = get_task(name)
        neurons = sets[selection][name] if arm in ("task", "random") else None
        if arm == "random":
            neurons = neurons.random_like(seed)
        r = finetune_arm(model, task, neurons, profile, seed, lr, arm, fp)
        rows.append({"task": name, "category": task.category, "arm": arm, "selection": selection,
                     "label": arm if selection == "-" else f"{arm} ({selection})", "seed": seed,
                     "logprob": r[LOGPROB_METRIC[task.category]], "accuracy": r[TEACHER_FORCED_METRIC[task.category]],
                     **{k: v for k, v in r.items() if k not in ("n",)}})
    return pd.DataFrame(rows)


def _paired_by_seed(part: pd.DataFrame, metric: str) -> dict:
    """Task minus random arm, paired by seed (both arms see the same batches for a seed): the mean
    difference and on how many of the shared seeds the task arm is higher."""
    by_seed = part[part.arm.isin(["task", "random"])].pivot_table(index="seed", columns="arm", values=metric)
    diff = (by_seed["task"] - by_seed["random"]).dropna()
    return {f"{metric}_task_minus_random": float(diff.mean()), f"{metric}_task_wins_seeds": int((diff > 0).sum()),
            "n_paired_seeds": len(diff)}


def finetuning_claims(table: pd.DataFrame) -> pd.DataFrame:
    """Per task and selection: mean ± std over seeds of every arm ("none" and "all" are shared by the
    selections), and whether "task-neuron fine-tuning beats random-neuron fine-tuning" holds (higher
    mean log-prob; higher mean accuracy), with the seed-paired difference and wins (``_paired_by_seed``)."""
    table = table.assign(selection=table["selection"] if "selection" in table else "plain")
    selections = [s for s in table.selection.unique() if s != "-"]
    rows = []
    for name in table.task.unique():
        of_task = table[table.task == name]
        for selection in selections:
            part = of_task[of_task.selection.isin([selection, "-"])]
            row = {"task": name, "category": of_task.category.iloc[0], "selection": selection}
            for arm, runs in part.groupby("arm", sort=False):
                for metric in ("logprob", "accuracy"):
                    row[f"{metric}_{arm}"] = runs[metric].mean()
                    row[f"{metric}_{arm}_std"] = runs[metric].std()
            for metric in ("logprob", "accuracy"):
                if f"{metric}_task" in row and f"{metric}_random" in row:
                    row[f"{metric}_task_beats_random"] = bool(row[f"{metric}_task"] > row[f"{metric}_random"])
                    row.update(_paired_by_seed(part, metric))
            rows.append(row)
    return pd.DataFrame(rows)
