"""Notebook 02 (Paper A Table 1): a task's metric with no neurons off, with its own task neurons off,
with random neurons off (several seeds), and with another task's neurons off (the specificity
matrix); curves over the fraction k. Each condition is one ``conditions.score_condition`` (cached).

The sensitive metric is the log-prob (``LOGPROB_METRIC``); ``drop = baseline − condition``
(positive = the deactivation hurts).

**The grid** Paper A leaves open (``table1_grid``): selection scope {``"global"`` top-k over all
layers, ``"layer"`` top-k in every layer} x attribution positions {``"all"``: ``|Σ_pos g·a|`` over
every position, ``"answer"``: only the positions that predict answer tokens} x random control
{``"layer"``: as many neurons in every layer, ``"total"``: as many neurons drawn over all layers}.
The cell closest to the paper's text (``PAPER_CELL``) is global / all / total: "neurons with top k%
relevance", ω zeroed everywhere, "the same number of randomly selected neurons". Every condition
keeps its per-example values so verdicts carry bootstrap CIs over test examples and random draws.

Each table first lists its conditions, then scores them all through ``score_conditions``: every
distinct condition once, shared over ``NRN_WORKERS`` single-threaded processes (``workers.run_jobs``),
so a table's rows do not depend on how many processes computed them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from jaxtyping import Float

from nrnlib.claims import bootstrap_ci
from nrnlib.experiments.conditions import LOGPROB_METRIC, TEACHER_FORCED_METRIC, score_condition
from nrnlib.experiments.detection import neuron_sets, relevance_chunks, relevance_scores
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import RANDOM_MATCHES, NeuronSet
from nrnlib.profiles import Profile
from nrnlib.tasks import get_task
from nrnlib.workers import run_jobs

POSITIONS = {"all": "signed_sum", "answer": "answer_positions"}  # attribution positions -> aggregation
SCOPES = ("global", "layer")


def _row(task, condition: str, whose: str, selection: str, k: float, metrics: dict, base: dict, **extra) -> dict:
    lp, acc = LOGPROB_METRIC[task.category], TEACHER_FORCED_METRIC[task.category]
    return {"task": task.name, "category": task.category, "role": task.role, "condition": condition,
            "whose": whose, "selection": selection, "k": k, "logprob": metrics[lp], "accuracy": metrics[acc],
            "calibrated_accuracy": metrics.get("calibrated_accuracy"),
            "logprob_drop": base[lp] - metrics[lp], "accuracy_drop": base[acc] - metrics[acc],
            "per_example": metrics.get("per_example"), **extra}


@dataclass(frozen=True)
class Cell:
    """One way of reading Paper A's selection: ``scope`` (``SCOPES``) and attribution ``positions``
    (``POSITIONS``). The random control is the third axis, chosen per condition (``RANDOM_MATCHES``)."""

    scope: str
    positions: str

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"Cell: scope must be one of {SCOPES}, got {self.scope!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"Cell: positions must be one of {tuple(POSITIONS)}, got {self.positions!r}")

    @property
    def name(self) -> str:
        return f"{self.scope}/{self.positions}"


GRID = tuple(Cell(scope, positions) for scope in SCOPES for positions in POSITIONS)
PAPER_CELL = Cell("global", "all")
PAPER_CONTROL = "total"


def grid_sets(
    model, profile: Profile, tasks: Sequence[str], k: float = 0.10, cells: Sequence[Cell] = GRID,
) -> dict[str, dict[str, NeuronSet]]:
    """``{cell.name: {task: plain top-k set}}``: relevance from ``relevance_chunks`` with the cell's
    aggregation (cached per chunk), selected with the cell's scope among ``tasks``."""
    scores = {pos: relevance_scores(relevance_chunks(model, profile, tasks, aggregation=POSITIONS[pos]))
              for pos in dict.fromkeys(c.positions for c in cells)}
    return {c.name: neuron_sets(scores[c.positions], k, "plain", scope=c.scope, model=model) for c in cells}


class Condition(NamedTuple):
    """One condition of ``conditions.score_condition``: ``task`` scored with ``neurons`` off (``None``:
    the intact model) in ``mode``, with or without the neurons' inputs."""

    task: Any  # nrnlib.tasks.Task
    neurons: NeuronSet | None = None
    mode: str = "activation"
    include_inputs: bool = False

    def key(self) -> tuple:
        """What identifies the condition's cache entry for one model and ``n``."""
        mask = None if self.neurons is None else (self.neurons.digest(), tuple(self.neurons.shape))
        return self.task.name, mask, self.mode, self.include_inputs


def score_conditions(model, conditions: Sequence[Condition], n: int, *, batch_size: int = 16,
                     workers: int | None = None, desc: str | None = None, progress: bool = True) -> list[dict]:
    """``[score_condition(model, *c, n) for c in conditions]``, each distinct condition scored once,
    shared over ``workers`` processes (``workers.run_jobs``; default ``$NRN_WORKERS``)."""
    fp = model_fingerprint(model)
    distinct: dict[tuple, Condition] = {}
    for c in conditions:
        distinct.setdefault(c.key(), c)
    jobs = [partial(score_condition, model, c.task, c.neurons, n, c.mode, c.include_inputs, batch_size, fp)
            for c in distinct.values()]
    scored = dict(zip(distinct, run_jobs(jobs, workers=workers, desc=desc, progress=progress,
                                         device=model.cfg.device), strict=True))
    return [scored[c.key()] for c in conditions]


def _scored_rows(model, plan: Sequence[tuple[Condition, dict]], n: int, *, batch_size: int, workers: int | None,
                 desc: str) -> list[dict]:
    """``_row`` for every ``(condition, fields)`` of ``plan``, its drop against the intact model on the
    same task; the intact models and the conditions scored together (``score_conditions``)."""
    tasks = {c.task.name: c.task for c, _ in plan}
    conditions = [Condition(task) for task in tasks.values()] + [c for c, _ in plan]
    scores = score_conditions(model, conditions, n, batch_size=batch_size, workers=workers, desc=desc)
    base = dict(zip(tasks, scores, strict=False))
    return [_row(c.task, metrics=m, base=base[c.task.name], **fields)
            for (c, fields), m in zip(plan, scores[len(tasks):], strict=True)]


def table1_grid(
    model, sets_by_cell: Mapping[str, Mapping[str, NeuronSet]], n: int, random_seeds: Sequence[int] = (0, 1, 2),
    controls: Sequence[str] = RANDOM_MATCHES, batch_size: int = 16, k: float = 0.10, workers: int | None = None,
) -> pd.DataFrame:
    """Table 1 over the grid: per task, the intact model (``condition="none"``), and per cell its own
    set (``"task"``) and for each control and seed the set's ``random_like(seed, match=control)``
    (``"random"``), all in activation mode, each row with its ``per_example`` values. Every condition
    is cached, so an interrupted run resumes where it stopped."""
    for control in controls:
        if control not in RANDOM_MATCHES:
            raise ValueError(f"controls must be among {RANDOM_MATCHES}, got {control!r}")
    tasks = list(dict.fromkeys(t for sets in sets_by_cell.values() for t in sets))
    plan = []
    for name in tasks:
        task = get_task(name)
        plan.append((Condition(task), dict(condition="none", whose="-", selection="-", k=0.0, cell="-", control="-",
                                           seed=None)))
        for cell, by_task in sets_by_cell.items():
            own = by_task[name]
            plan.append((Condition(task, own), dict(condition="task", whose=name, selection="plain", k=k, cell=cell,
                                                    control="-", seed=None)))
            plan += [(Condition(task, own.random_like(seed, match=control)),
                      dict(condition="random", whose=f"random({name})", selection="plain", k=k, cell=cell,
                           control=control, seed=seed))
                     for control in controls for seed in random_seeds]
    return pd.DataFrame(_scored_rows(model, plan, n, batch_size=batch_size, workers=workers, desc="Table 1 grid"))


def drops_per_example(table: pd.DataFrame, task: str, cell: str, control: str, metric: str = "logprob"
                      ) -> tuple[Float[np.ndarray, " example"], Float[np.ndarray, "seed example"]]:
    """From ``table1_grid``: the own set's per-example drop ``base_e − own_e`` and the random sets'
    ``base_e − random_{s,e}`` (one row per random seed, in seed order), on the same test examples."""
    part = table[table.task == task]
    base = np.asarray(part[part.condition == "none"].iloc[0].per_example[metric], dtype=float)
    own = part[(part.condition == "task") & (part.cell == cell)]
    rnd = part[(part.condition == "random") & (part.cell == cell) & (part.control == control)].sort_values("seed")
    if len(own) != 1 or rnd.empty:
        raise ValueError(f"drops_per_example: no own set or no random sets for {task!r}, cell {cell!r}, "
                         f"control {control!r} in the table")
    own_drop = base - np.asarray(own.iloc[0].per_example[metric], dtype=float)
    random_drop = np.stack([base - np.asarray(v[metric], dtype=float) for v in rnd.per_example])
    return own_drop, random_drop


def drop_summary(table: pd.DataFrame, metric: str = "logprob") -> pd.DataFrame:
    """Per (task, cell, control): the mean own-set drop and the mean random-set drop, each with its
    bootstrap 95% CI (own: over test examples; random: over random sets x test examples, crossed),
    long format for ``plots.drop_bars_figure`` (``panel`` = ``"cell, random control"``)."""
    rows = []
    random = table[table.condition == "random"]
    for task in dict.fromkeys(table.task):
        for cell, control in dict.fromkeys(zip(random.cell, random.control, strict=True)):
            own, rnd = drops_per_example(table, task, cell, control, metric)
            panel = f"{cell}, random {control}"
            for condition, values, design in (("task neurons off", own, "nested"),
                                              ("random neurons off", rnd, "crossed")):
                est = bootstrap_ci(values, design=design)
                rows.append({"task": task, "cell": cell, "control": control, "panel": panel, "condition": condition,
                             "drop": est.estimate, "ci_low": est.ci_low, "ci_high": est.ci_high})
    return pd.DataFrame(rows)


def mode_agreement(model, sets: Mapping[str, NeuronSet], n: int, batch_size: int = 16,
                   workers: int | None = None) -> pd.DataFrame:
    """Per task: the log-prob with its own set off by activation zeroing, by parameter zeroing (row j of
    the down projection) and with the inputs too (columns j of gate and up), and the largest gap;
    for a gated SiLU MLP all three are the same function (SiLU(0)·0 = 0)."""
    modes = {"activation": ("activation", False), "parameter": ("parameter", False),
             "parameter+inputs": ("parameter", True)}
    plan = [(name, label, Condition(get_task(name), own, mode, inputs))
            for name, own in sets.items() for label, (mode, inputs) in modes.items()]
    scores = score_conditions(model, [c for *_, c in plan], n, batch_size=batch_size, workers=workers,
                              desc="deactivation modes")
    lp: dict[str, dict[str, float]] = {}
    for (name, label, c), m in zip(plan, scores, strict=True):
        lp.setdefault(name, {})[label] = m[LOGPROB_METRIC[c.task.category]]
    return pd.DataFrame([{"task": name, **v, "max_gap": max(abs(x - v["activation"]) for x in v.values())}
                         for name, v in lp.items()])


def specificity_matrix(
    model, sets: Mapping[str, NeuronSet], n: int, selection: str = "", batch_size: int = 16,
    workers: int | None = None,
) -> pd.DataFrame:
    """Rows = whose neurons are deactivated, columns = which task is scored: long table with the
    log-prob drop of every pair (activation mode); the diagonal is each task's own set."""
    plan = [(Condition(get_task(name), neurons), dict(condition="task" if whose == name else "other", whose=whose,
                                                      selection=selection, k=float("nan")))
            for name in sets for whose, neurons in sets.items()]
    return pd.DataFrame(_scored_rows(model, plan, n, batch_size=batch_size, workers=workers,
                                     desc=f"specificity matrix ({selection})"))


def k_curve_table(
    model, sets_by_k: Mapping[float, Mapping[str, Mapping[str, NeuronSet]]], n: int, random_seed: int = 0,
    batch_size: int = 16, control: str = "layer", workers: int | None = None,
) -> pd.DataFrame:
    """Drops as a function of k: ``sets_by_k[k][selection][task]``; own set and one random set
    (``random_like(random_seed, match=control)``) per (k, selection, task), activation mode."""
    plan = []
    for k, sets in sorted(sets_by_k.items()):
        for selection, by_task in sets.items():
            for name, own in by_task.items():
                task = get_task(name)
                plan.append((Condition(task, own), dict(condition="task", whose=name, selection=selection, k=k)))
                plan.append((Condition(task, own.random_like(random_seed, match=control)),
                             dict(condition="random", whose=f"random({name})", selection=selection, k=k)))
    return pd.DataFrame(_scored_rows(model, plan, n, batch_size=batch_size, workers=workers, desc="k curve"))


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
