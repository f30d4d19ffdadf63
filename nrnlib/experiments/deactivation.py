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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from jaxtyping import Float
from tqdm.auto import tqdm

from nrnlib.claims import bootstrap_ci
from nrnlib.experiments.conditions import LOGPROB_METRIC, TEACHER_FORCED_METRIC, score_condition
from nrnlib.experiments.detection import neuron_sets, relevance_chunks, relevance_scores
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import RANDOM_MATCHES, NeuronSet
from nrnlib.profiles import Profile
from nrnlib.tasks import get_task

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


def table1_grid(
    model, sets_by_cell: Mapping[str, Mapping[str, NeuronSet]], n: int, random_seeds: Sequence[int] = (0, 1, 2),
    controls: Sequence[str] = RANDOM_MATCHES, batch_size: int = 16, k: float = 0.10,
) -> pd.DataFrame:
    """Table 1 over the grid: per task, the intact model (``condition="none"``), and per cell its own
    set (``"task"``) and for each control and seed the set's ``random_like(seed, match=control)``
    (``"random"``), all in activation mode, each row with its ``per_example`` values. Runs task by
    task (each condition cached), so an interrupted run resumes at the next condition."""
    fp = model_fingerprint(model)
    for control in controls:
        if control not in RANDOM_MATCHES:
            raise ValueError(f"controls must be among {RANDOM_MATCHES}, got {control!r}")
    tasks = list(dict.fromkeys(t for sets in sets_by_cell.values() for t in sets))
    rows = []
    for name in tqdm(tasks, desc="Table 1 grid"):
        task = get_task(name)
        base = score_condition(model, task, None, n, batch_size=batch_size, fingerprint=fp)
        rows.append(_row(task, "none", "-", "-", 0.0, base, base, cell="-", control="-", seed=None))
        for cell, by_task in sets_by_cell.items():
            own = by_task[name]
            m = score_condition(model, task, own, n, batch_size=batch_size, fingerprint=fp)
            rows.append(_row(task, "task", name, "plain", k, m, base, cell=cell, control="-", seed=None))
            for control in controls:
                for seed in random_seeds:
                    m = score_condition(model, task, own.random_like(seed, match=control), n, batch_size=batch_size,
                                        fingerprint=fp)
                    rows.append(_row(task, "random", f"random({name})", "plain", k, m, base, cell=cell,
                                     control=control, seed=seed))
    return pd.DataFrame(rows)


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


def mode_agreement(model, sets: Mapping[str, NeuronSet], n: int, batch_size: int = 16) -> pd.DataFrame:
    """Per task: the log-prob with its own set off by activation zeroing, by parameter zeroing (row j of
    the down projection) and with the inputs too (columns j of gate and up), and the largest gap;
    for a gated SiLU MLP all three are the same function (SiLU(0)·0 = 0)."""
    fp = model_fingerprint(model)
    rows = []
    for name, own in sets.items():
        task = get_task(name)
        lp = {f"{mode}{'+inputs' if inputs else ''}": score_condition(
            model, task, own, n, mode, inputs, batch_size, fp)[LOGPROB_METRIC[task.category]]
            for mode, inputs in (("activation", False), ("parameter", False), ("parameter", True))}
        rows.append({"task": name, **lp, "max_gap": max(abs(v - lp["activation"]) for v in lp.values())})
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
    batch_size: int = 16, control: str = "layer",
) -> pd.DataFrame:
    """Drops as a function of k: ``sets_by_k[k][selection][task]``; own set and one random set
    (``random_like(random_seed, match=control)``) per (k, selection, task), activation mode."""
    fp = model_fingerprint(model)
    rows = []
    for k, sets in tqdm(sorted(sets_by_k.items()), desc="k curve"):
        for selection, by_task in sets.items():
            for name, own in by_task.items():
                task = get_task(name)
                base = score_condition(model, task, None, n, batch_size=batch_size, fingerprint=fp)
                m = score_condition(model, task, own, n, batch_size=batch_size, fingerprint=fp)
                rows.append(_row(task, "task", name, selection, k, m, base))
                r = score_condition(model, task, own.random_like(random_seed, match=control), n, batch_size=batch_size,
                                    fingerprint=fp)
                rows.append(_row(task, "random", f"random({name})", selection, k, r, base))
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
