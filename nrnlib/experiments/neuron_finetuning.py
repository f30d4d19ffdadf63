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

Measured on the first ``n`` test examples of the task: the log-prob of the answer (classification:
the gold label's log-prob; generation: the reference answer's summed log-prob), and a decoded metric
(``DECODED_METRIC``: Batch-Calibrated accuracy for classification, ROUGE-L of the greedy answer for
generation), each kept per example for paired bootstrap CIs (``verdicts.finetuning_claims``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from nrnlib import store
from nrnlib.evaluate import evaluate
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import RANDOM_MATCHES, NeuronSet
from nrnlib.protocol import Arm, Protocol, run_arm, select_lr
from nrnlib.tasks import get_task

ARMS = ("none", "task", "random", "all")
DECODED_METRIC = {"classification": "calibrated", "generation": "rougeL"}
# per-example values kept by the measurement: {key in our tables: key in evaluate's TaskScore.per_example}
PER_EXAMPLE = {"classification": {"logprob": "label_logprob", "accuracy": "correct",
                                  "calibrated": "calibrated_correct"},
               "generation": {"logprob": "answer_logprob", "rougeL": "rougeL", "exact_match": "exact_match"}}
MEASURE_CODE = ("evaluate", "encoding", "losses", "experiments.neuron_finetuning")  # the measurement's code digest


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


def measure_untrained(model, measure: TestMeasure, fingerprint: str | None = None) -> dict[str, Any]:
    """The ``none`` arm: ``measure`` on the model as it is (cached)."""
    return store.cached("table2_none", lambda: measure(model), settings=measure.settings(), code=MEASURE_CODE,
                        model=model, fingerprint=fingerprint, tasks={measure.task.name: measure.task.digest(
                            measure.examples())})


@dataclass
class Table2:
    """``rows``: one per (task, arm, cell, control, seed) with the lr, the curve's summary, the test
    metrics and ``per_example``; ``lr``: per task and arm type, the chosen lr and every lr's score;
    ``runs``: the ``protocol.run_arm`` results (loss curves) in the order they ran."""

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


def _neuron_arms(name: str, sets_by_cell: Mapping[str, Mapping[str, NeuronSet]], controls: Sequence[str],
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
    batch_size: int = 16, progress: bool = True,
) -> Table2:
    """Table 2 on the protocol (module docstring). ``sets_by_cell[cell][task]`` are the task-neuron
    sets (``deactivation.grid_sets``); ``all_seeds`` (default: the first seed; ``()`` skips the arm)
    are the seeds of the "all parameters" arm. Runs task by task and arm by arm, each cached, so an
    interrupted run resumes at the next arm."""
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
    n_neuron = len(sets_by_cell) * (1 + len(controls))
    per_task = (len(protocol.grid("neurons")) * n_neuron + (len(seeds) - 1) * n_neuron
                + (len(protocol.grid("all")) + len(all_seeds) - 1 if all_seeds else 0))
    bar = tqdm(total=len(tasks) * per_task, desc="Table 2 arms", disable=not progress)
    out = Table2(rows=pd.DataFrame())
    rows = []

    def run(task, measure: TestMeasure, arm: Arm, lr: float, seed: int) -> dict:
        bar.set_postfix_str(f"{arm.name} lr={lr:g} seed={seed}")
        result = run_arm(model, [task], arm, protocol, lr=lr, seed=seed, measure=measure,
                         measure_settings=measure.settings(), measure_code=MEASURE_CODE, fingerprint=fp)
        out.runs.append(result)
        bar.update()
        return result

    def select(task, measure: TestMeasure, arms: list[Arm], seed: int) -> tuple[dict, list[dict]]:
        """``protocol.select_lr`` over ``arms``: the chosen lr with every grid value's score, and the
        arms' runs at that lr (in the arms' order)."""
        bar.set_postfix_str(f"lr grid of the {arms[0].arm_type} arms, {task.name}")
        chosen = select_lr(model, [task], arms, protocol, seed=seed, measure=measure,
                           measure_settings=measure.settings(), measure_code=MEASURE_CODE, fingerprint=fp)
        out.runs.extend(chosen["runs"])
        bar.update(len(chosen["runs"]))
        i = list(chosen["scores"]).index(chosen["lr"])
        return {"lr": chosen["lr"], "scores": chosen["scores"]}, chosen["runs"][i * len(arms):(i + 1) * len(arms)]

    for name in tasks:
        task = get_task(name)
        measure = TestMeasure(task, n_test, batch_size)
        rows.append(_row(task, "none", "-", "-", None, measure_untrained(model, measure, fp), None))
        out.lr[name] = {}
        first = _neuron_arms(name, sets_by_cell, controls, seeds[0])
        out.lr[name]["neurons"], first_runs = select(task, measure, [arm for *_, arm in first], seeds[0])
        lr = out.lr[name]["neurons"]["lr"]
        for seed in seeds:
            arms = first if seed == seeds[0] else _neuron_arms(name, sets_by_cell, controls, seed)
            results = first_runs if seed == seeds[0] else [run(task, measure, arm, lr, seed) for *_, arm in arms]
            rows += [_row(task, kind, cell, control, seed, r["measure"], r)
                     for (kind, cell, control, _), r in zip(arms, results, strict=True)]
        if all_seeds:
            every = Arm(f"all:{name}", "all")
            out.lr[name]["all"], [first_all] = select(task, measure, [every], all_seeds[0])
            for seed in all_seeds:
                r = first_all if seed == all_seeds[0] else run(task, measure, every, out.lr[name]["all"]["lr"], seed)
                rows.append(_row(task, "all", "-", "-", seed, r["measure"], r))
    bar.close()
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
