"""Notebook 03 (Paper A Table 2) on the training protocol (``nrnlib.protocol``): per task, train only
its task neurons, only as many random neurons, or every parameter, each to convergence on a dev
split with its arm type's learning rate chosen on dev, then score the task's test examples.

Arms per task (``table2``):

- ``none``: the model as loaded (scored once);
- ``task``: the task's set of every grid cell (``experiments.deactivation.Cell``), neuron-sparse;
- ``random``: per cell, random control (``neurons.RANDOM_MATCHES``) and seed, the task's set's
  ``random_like(seed, match=control)`` (a new draw per seed, as in Table 1);
- ``all``: every parameter (a reference; under ``standard`` at the first seed only).

The learning rate of the neuron arms is chosen per task among the protocol's "neurons" grid on the
first seed, by the mean best dev loss of its task *and* random arms together (``protocol.choose_lr``),
so both arms of a comparison share one lr and neither is tuned for alone; "all" gets its own lr from
the "all" grid. The runs of the chosen lr are the first seed's final runs (cached).

Every arm is scored by ``measures.TestMeasure`` (the log-prob of the answer and a decoded metric,
per example, for paired bootstrap CIs in ``verdicts.finetuning_claims``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import pandas as pd

from nrnlib.experiments.measures import DECODED_METRIC, MEASURE_CODE, TestMeasure, measure_untrained
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import RANDOM_MATCHES, NeuronSet
from nrnlib.protocol import Arm, Protocol, run_arm, select_lr
from nrnlib.tasks import get_task
from nrnlib.workers import run_jobs

ARMS = ("none", "task", "random", "all")
@dataclass
class Table2:
    """``rows``: one per (task, arm, cell, control, seed) with the lr, the curve's summary, the test
    metrics and ``per_example``; ``lr``: per task and arm type, the chosen lr and every lr's score;
    ``runs``: the ``protocol.run_arm`` results (loss curves), task by task in the table's order."""

    rows: pd.DataFrame
    lr: dict[str, dict[str, dict]] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)


def _row(task, arm: str, cell: str, control: str, seed: int | None, measured: dict, run: dict | None) -> dict:
    curve = run["curve"] if run is not None else {}
    per_example = measured["per_example"]
    return {"task": task.name, "category": task.category, "arm": arm, "cell": cell, "control": control, "seed": seed,
            "lr": run["lr"] if run is not None else None, "best_step": curve.get("best_step", 0),
            "steps": curve.get("steps", 0), "stopped": curve.get("stopped", "-"),
            "best_dev_loss": curve.get("best_dev_loss"), "n_trainable": curve.get("n_trainable_entries", 0),
            "train_wall_s": curve.get("wall_s", 0.0),
            "logprob": sum(per_example["logprob"]) / len(per_example["logprob"]),
            "decoded": sum(per_example[DECODED_METRIC[task.category]]) / len(per_example["logprob"]),
            "decoded_metric": DECODED_METRIC[task.category], "per_example": per_example}


def neuron_arms(name: str, sets_by_cell: Mapping[str, Mapping[str, NeuronSet]], controls: Sequence[str],
                 seed: int) -> list[tuple[str, str, str, Arm]]:
    """(arm, cell, control, Arm) of the neuron arms of one task and seed: each cell's own set, and its
    random draw per control (the draw depends on the seed; the own set does not)."""
    out = []
    for cell, by_task in sets_by_cell.items():
        own = by_task[name]
        out.append(("task", cell, "-", Arm(f"task:{name}:{cell}", "neurons", neurons=own)))
        out += [("random", cell, control, Arm(f"random-{control}:{name}:{cell}", "neurons",
                                             neurons=own.random_like(seed, match=control)))
                for control in controls]
    return out


def table2(
    model, sets_by_cell: Mapping[str, Mapping[str, NeuronSet]], protocol: Protocol, *, seeds: Sequence[int] = (0, 1, 2),
    n_test: int = 24, controls: Sequence[str] = ("total",), all_seeds: Sequence[int] | None = None,
    batch_size: int = 16, progress: bool = True, workers: int | None = None,
) -> Table2:
    """Table 2 on the protocol (module docstring). ``sets_by_cell[cell][task]`` are the task-neuron
    sets (``deactivation.grid_sets``); ``all_seeds`` (default: the first seed; ``()`` skips the arm)
    are the seeds of the "all parameters" arm. The runs (the lr grids, then the other seeds) are
    shared out over ``workers`` processes (``workers.run_jobs``; default ``$NRN_WORKERS``), each
    cached, so an interrupted run resumes at the next run; the table is then read task by task."""
    if not sets_by_cell or not all(sets_by_cell.values()):
        raise ValueError("table2: sets_by_cell must map each cell to a non-empty {task: NeuronSet}")
    if not seeds:
        raise ValueError("table2 needs at least one seed")
    bad = [c for c in controls if c not in RANDOM_MATCHES]
    if bad or not controls:
        raise ValueError(f"table2: controls must be a non-empty subset of {RANDOM_MATCHES}, got {list(controls)}")
    tasks = list(dict.fromkeys(t for sets in sets_by_cell.values() for t in sets))
    missing = [(c, t) for c, sets in sets_by_cell.items() for t in tasks if t not in sets]
    if missing:
        raise ValueError(f"table2: every cell needs a set for every task; missing (cell, task): {missing}")
    all_seeds = tuple(seeds[:1] if all_seeds is None else all_seeds)
    fp = model_fingerprint(model)
    measures = {name: TestMeasure(get_task(name), n_test, batch_size) for name in tasks}
    arms = {(name, seed): [arm for *_, arm in neuron_arms(name, sets_by_cell, controls, seed)]
            for name in tasks for seed in seeds}
    every = {name: Arm(f"all:{name}", "all") for name in tasks}
    settings = {name: dict(measure=m, measure_settings=m.settings(), measure_code=MEASURE_CODE, fingerprint=fp)
                for name, m in measures.items()}

    def job(name: str, arm: Arm, lr: float, seed: int) -> Callable[[], dict]:
        return partial(run_arm, model, [measures[name].task], arm, protocol, lr=lr, seed=seed, **settings[name])

    def select(name: str, chosen_from: list[Arm], seed: int) -> tuple[dict, list[dict], list[dict]]:
        """``protocol.select_lr`` over ``chosen_from``: the chosen lr with every grid value's score, every
        grid run, and the arms' runs at the chosen lr (in the arms' order)."""
        chosen = select_lr(model, [measures[name].task], chosen_from, protocol, seed=seed, **settings[name])
        i = list(chosen["scores"]).index(chosen["lr"])
        n = len(chosen_from)
        return {"lr": chosen["lr"], "scores": chosen["scores"]}, chosen["runs"], chosen["runs"][i * n:(i + 1) * n]

    prefill = partial(run_jobs, workers=workers, progress=progress, device=model.cfg.device)
    # 1. the lr grids on the first seed (every run of them shared over the workers), and the choices
    prefill([job(name, arm, lr, seeds[0]) for name in tasks for lr in protocol.grid("neurons")
             for arm in arms[name, seeds[0]]]
            + [job(name, every[name], lr, all_seeds[0]) for name in tasks for lr in protocol.grid("all") if all_seeds],
            desc="Table 2: lr grids")
    chosen = {(name, "neurons"): select(name, arms[name, seeds[0]], seeds[0]) for name in tasks}
    chosen |= {(name, "all"): select(name, [every[name]], all_seeds[0]) for name in tasks if all_seeds}
    # 2. the other seeds at the chosen lrs
    prefill([job(name, arm, chosen[name, "neurons"][0]["lr"], seed) for name in tasks for seed in seeds[1:]
             for arm in arms[name, seed]]
            + [job(name, every[name], chosen[name, "all"][0]["lr"], seed) for name in tasks for seed in all_seeds[1:]],
            desc="Table 2: seeds")
    # 3. the table, read from the cache task by task
    out = Table2(rows=pd.DataFrame())
    rows = []
    for name in tasks:
        task = measures[name].task
        rows.append(_row(task, "none", "-", "-", None, measure_untrained(model, measures[name], fp), None))
        out.lr[name] = {}
        out.lr[name]["neurons"], grid_runs, first_runs = chosen[name, "neurons"]
        out.runs += grid_runs
        for seed in seeds:
            labels = neuron_arms(name, sets_by_cell, controls, seed)
            results = first_runs if seed == seeds[0] else [job(name, arm, out.lr[name]["neurons"]["lr"], seed)()
                                                            for arm in arms[name, seed]]
            out.runs += [] if seed == seeds[0] else results
            rows += [_row(task, kind, cell, control, seed, r["measure"], r)
                     for (kind, cell, control, _), r in zip(labels, results, strict=True)]
        if all_seeds:
            out.lr[name]["all"], grid_runs, [first_all] = chosen[name, "all"]
            out.runs += grid_runs
            for seed in all_seeds:
                r = first_all if seed == all_seeds[0] else job(name, every[name], out.lr[name]["all"]["lr"], seed)()
                out.runs += [] if seed == all_seeds[0] else [r]
                rows.append(_row(task, "all", "-", "-", seed, r["measure"], r))
    out.rows = pd.DataFrame(rows)
    several = out.rows[out.rows.arm == "random"][["cell", "control"]].drop_duplicates().shape[0] > 1
    out.rows["label"] = [f"{a} ({c}{'' if k == '-' else ', ' + k})" if several and c != "-" else a
                         for a, c, k in zip(out.rows.arm, out.rows.cell, out.rows.control, strict=True)]
    return out


def paired_per_example(rows: pd.DataFrame, task: str, cell: str, control: str, metric: str = "logprob"
                       ) -> tuple[list[list[float]], list[list[float]]]:
    """The task arm's and the random arm's per-example ``metric`` as [seed][example] lists, paired by
    seed (both arms of a seed see the same batches) and by example (the same test examples)."""
    part = rows[(rows.task == task) & (rows.cell == cell)]
    own = part[part.arm == "task"].set_index("seed")
    rnd = part[(part.arm == "random") & (part.control == control)].set_index("seed")
    seeds = [s for s in own.index if s in rnd.index]
    if not seeds:
        raise ValueError(f"no seed has both a task and a random ({control}) arm for task {task!r}, cell {cell!r}")
    return ([own.loc[s, "per_example"][metric] for s in seeds], [rnd.loc[s, "per_example"][metric] for s in seeds])


def arm_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (task, arm, cell, control): the mean over seeds of the test log-prob and the decoded metric,
    their spread over seeds (std), the chosen lr, and the mean best step and training time."""
    keys = ["task", "category", "arm", "cell", "control"]
    return (rows.groupby(keys, sort=False)
            .agg(logprob=("logprob", "mean"), logprob_std=("logprob", "std"), decoded=("decoded", "mean"),
                 decoded_std=("decoded", "std"), decoded_metric=("decoded_metric", "first"), lr=("lr", "first"),
                 seeds=("seed", "nunique"), best_step=("best_step", "mean"), steps=("steps", "mean"),
                 train_wall_s=("train_wall_s", "mean"))
            .reset_index())
