"""Notebook 02 (Paper A Table 1): a task's metric with no neurons off, with its own task neurons off,
with matched random neurons off (same count in every layer, several seeds), and with another task's
neurons off (the specificity matrix); curves over the fraction k.

Metrics are teacher-forced (no decoding), so every condition costs one forward pass over the same
test examples: classification ``accuracy``, ``calibrated_accuracy`` and ``label_logprob``;
generation ``answer_logprob`` and ``token_accuracy``. The sensitive metric is the log-prob
(``LOGPROB_METRIC``); ``drop = baseline − condition`` (positive = the deactivation hurts).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence

import pandas as pd
from tqdm.auto import tqdm

from nrnlib import store
from nrnlib.ablation import deactivate
from nrnlib.evaluate import evaluate
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import NeuronSet
from nrnlib.tasks import get_task

LOGPROB_METRIC = {"classification": "label_logprob", "generation": "answer_logprob"}
TEACHER_FORCED_METRIC = {"classification": "accuracy", "generation": "token_accuracy"}
# the code whose change invalidates cached conditions (nrnlib.store.code_digest)
CONDITION_CODE = ("evaluate", "encoding", "losses", "ablation", "experiments.deactivation")


def _mask_digest(neurons: NeuronSet | None) -> str:
    return "none" if neurons is None else f"{neurons.digest()}-{list(neurons.shape)}"


def score_condition(
    model, task, neurons: NeuronSet | None, n: int, mode: str = "activation", include_inputs: bool = False,
    batch_size: int = 16, fingerprint: str | None = None,
) -> dict:
    """Teacher-forced metrics of ``task`` (first ``n`` test examples) with ``neurons`` deactivated
    (``None``: the intact model). Cached per (model weights, examples, mask, mode)."""
    examples = list(task.test[:n])

    def compute() -> dict:
        start = time.perf_counter()
        off = deactivate(model, neurons, mode, include_inputs) if neurons is not None else contextlib.nullcontext()
        with off:
            score = evaluate(model, task, n=n, decode=False, batch_size=batch_size, progress=False)
        return {**score.metrics, "n": score.n, "wall_s": time.perf_counter() - start}

    return store.cached("deactivation", compute, settings={"neurons": _mask_digest(neurons), "mode": mode,
                        "include_inputs": include_inputs, "n": len(examples)}, code=CONDITION_CODE, model=model,
                        fingerprint=fingerprint, tasks={task.name: task.digest(examples)})


def _row(task, condition: str, whose: str, selection: str, k: float, metrics: dict, base: dict, **extra) -> dict:
    lp, acc = LOGPROB_METRIC[task.category], TEACHER_FORCED_METRIC[task.category]
    return {"task": task.name, "category": task.category, "role": task.role, "condition": condition,
            "whose": whose, "selection": selection, "k": k, "logprob": metrics[lp], "accuracy": metrics[acc],
            "calibrated_accuracy": metrics.get("calibrated_accuracy"),
            "logprob_drop": base[lp] - metrics[lp], "accuracy_drop": base[acc] - metrics[acc], **extra}


def deactivation_table(
    model, sets: Mapping[str, Mapping[str, NeuronSet]], n: int, random_seeds: Sequence[int] = (0, 1, 2),
    modes: Sequence[str] = ("activation", "parameter"), batch_size: int = 16, k: float = 0.10,
) -> pd.DataFrame:
    """Table 1. ``sets[selection][task]`` are the task-neuron sets (e.g. selections "plain" and
    "specific"). Per task: the intact model; its own set in every deactivation mode ("parameter"
    zeroes the down-projection row, "parameter+inputs" also the gate/up columns); and matched random
    sets (``NeuronSet.random_like``) with each seed, in activation mode."""
    fp = model_fingerprint(model)
    tasks = list(next(iter(sets.values())))
    rows = []
    for name in tqdm(tasks, desc="Table 1"):
        task = get_task(name)
        base = score_condition(model, task, None, n, batch_size=batch_size, fingerprint=fp)
        rows.append(_row(task, "none", "-", "-", 0.0, base, base, mode="-", seed=None))
        for selection, by_task in sets.items():
            own = by_task[name]
            for mode in modes:
                for inputs in ((False, True) if mode == "parameter" else (False,)):
                    m = score_condition(model, task, own, n, mode, inputs, batch_size, fp)
                    rows.append(_row(task, "task", name, selection, k, m, base,
                                     mode=mode + ("+inputs" if inputs else ""), seed=None))
            for seed in random_seeds:
                m = score_condition(model, task, own.random_like(seed), n, batch_size=batch_size, fingerprint=fp)
                rows.append(_row(task, "random", f"random({name})", selection, k, m, base, mode="activation",
                                 seed=seed))
    return pd.DataFrame(rows)


def specificity_matrix(
    model, sets: Mapping[str, NeuronSet], n: int, selection: str = "", batch_size: int = 16
) -> pd.DataFrame:
    """Rows = whose neurons are deactivated, columns = which task is scored: long table with the
    log-prob drop of every pair (activation mode); the diagonal is each task's own set."""
    fp = model_fingerprint(model)
    rows = []
    for name in tqdm(list(sets), desc=f"specificity matrix ({selection})"):
        task = get_task(name)
        base = score_condition(model, task, None, n, batch_size=batch_size, fingerprint=fp)
        for whose, neurons in sets.items():
            m = score_condition(model, task, neurons, n, batch_size=batch_size, fingerprint=fp)
            rows.append(_row(task, "task" if whose == name else "other", whose, selection, float("nan"), m, base))
    return pd.DataFrame(rows)


def k_curve_table(
    model, sets_by_k: Mapping[float, Mapping[str, Mapping[str, NeuronSet]]], n: int, random_seed: int = 0,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Drops as a function of k: ``sets_by_k[k][selection][task]``; own set and one matched random set
    per (k, selection, task), activation mode."""
    fp = model_fingerprint(model)
    rows = []
    for k, sets in tqdm(sorted(sets_by_k.items()), desc="k curve"):
        for selection, by_task in sets.items():
            for name, own in by_task.items():
                task = get_task(name)
                base = score_condition(model, task, None, n, batch_size=batch_size, fingerprint=fp)
                m = score_condition(model, task, own, n, batch_size=batch_size, fingerprint=fp)
                rows.append(_row(task, "task", name, selection, k, m, base))
                r = score_condition(model, task, own.random_like(random_seed), n, batch_size=batch_size,
                                    fingerprint=fp)
                rows.append(_row(task, "random", f"random({name})", selection, k, r, base))
    return pd.DataFrame(rows)


def claims_table(table: pd.DataFrame, factor: float = 3.0) -> pd.DataFrame:
    """Per task and selection (activation mode): own-set drop, mean and spread of the random drops,
    and whether "deactivating task neurons hurts at least ``factor``x more than random neurons" holds
    (own drop > 0 and own drop >= factor * max(mean random drop, 0)), by log-prob and by accuracy."""
    rows = []
    act = table[(table["mode"] == "activation") & table.condition.isin(["task", "random"])]
    for (name, selection), part in act.groupby(["task", "selection"], sort=False):
        own = part[part.condition == "task"].iloc[0]
        rnd = part[part.condition == "random"]
        row = {"task": name, "category": own.category, "role": own.role, "selection": selection}
        for metric in ("logprob", "accuracy"):
            drop, r_mean = own[f"{metric}_drop"], rnd[f"{metric}_drop"].mean()
            row |= {f"{metric}_drop_task": drop, f"{metric}_drop_random": r_mean,
                    f"{metric}_drop_random_std": rnd[f"{metric}_drop"].std(ddof=1) if len(rnd) > 1 else float("nan"),
                    f"{metric}_holds": bool(drop > 0 and drop >= factor * max(r_mean, 0.0))}
        rows.append(row)
    return pd.DataFrame(rows)


def diagonal_dominance(drops: pd.DataFrame) -> pd.DataFrame:
    """From a whose x task matrix of drops: per task, its own set's drop, the largest drop caused by
    another task's set, and whether its own set is the most harmful."""
    rows = []
    for task in drops.columns:
        others = drops[task].drop(index=task)
        rows.append({"task": task, "own_drop": float(drops.loc[task, task]),
                     "max_other_drop": float(others.max()), "most_harmful_other": others.idxmax(),
                     "own_is_max": bool(drops.loc[task, task] >= others.max())})
    return pd.DataFrame(rows)
