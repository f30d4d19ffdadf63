"""Notebook 04 (Paper A Figure 2): specialization and generalization as the proportion of trained
task neurons grows, with the overlap of training- and test-task neurons.

- **Sets.** Task t's top-p set ``N_t(p)`` = the global top ``p`` fraction of its relevance scores
  (``selection.select_neurons``; p = 1 is every MLP neuron). For a category with training tasks
  ``x = {x_1, x_2, x_3}`` the trained set is the union ``N_x(p) = ∪_i N_{x_i}(p)``.
- **Joint training** (``mode="joint"``): per category, train the three training tasks together (one
  mixed stream, ``nrnlib.protocol``) updating only ``N_x(p)``, then score every test task: *ID* = the
  training tasks' own test sets, *OOD (same category)* = the category's held-out tasks, *OOD (other
  category)* = the other category's tasks.
- **Individual training** (``mode="individual"``, Paper A's ablation): one model per training task,
  trained on that task alone with its own ``N_t(p)``, scored on its own test set (ID).
- **Overlap** of a test task y with the training tasks: ``IoU(N_x(p), N_y(p)) = |N_x ∩ N_y| / |N_x ∪ N_y|``.
- **Gain**: per test example, the metric after training minus the untrained model's on the same
  example (log-prob of the answer, and the decoded metric of ``neuron_finetuning.DECODED_METRIC``).

**Protocol** (``sweep_protocol``): the profile's, with its own step cap and dev size for this sweep,
and task batches: a joint run's step trains on one task, the three in turn (``Protocol.task_batches``),
so each step's rows share their task's prompt prefix (it runs once) and no short task is padded to a
long one's length: 1.7-1.9x per step (``benchmarks/sweep_cost.py``).

One learning rate serves every arm of the sweep: chosen on the protocol's "neurons" grid at the
reference proportion (10%, the sets of notebooks 02-03) and the first seed, by the mean best dev loss
of the categories' joint runs (``protocol.choose_lr``); those runs are cached and reused. Each
(mode, category or task, p, seed) is one cached ``protocol.run_arm``: an interrupted sweep resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pandas as pd
from jaxtyping import Float
from torch import Tensor

from nrnlib.experiments.measures import DECODED_METRIC, MEASURE_CODE, TasksMeasure, TestMeasure, measure_untrained
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import NeuronSet
from nrnlib.protocol import Arm, Protocol, choose_lr, run_arm
from nrnlib.selection import select_neurons
from nrnlib.tasks import get_task
from nrnlib.workers import run_jobs

PROPORTIONS = (0.01, 0.05, 0.10, 0.30, 0.50, 0.70, 1.0)  # Paper A's sweep, 100% = every MLP neuron
REFERENCE_P = 0.10  # where the sweep's lr is chosen
ID, OOD_SAME, OOD_OTHER = "ID", "OOD (same category)", "OOD (other category)"
MODES = ("joint", "individual")


def sweep_protocol(profile) -> Protocol:
    """The protocol of notebook 04's runs (module docstring): ``profile``'s, with
    ``generalization_max_steps`` and ``generalization_dev_size`` where set, and task batches."""
    return Protocol.from_profile(profile, max_steps=profile.generalization_max_steps or profile.max_steps,
                                 dev_size=profile.generalization_dev_size or profile.dev_size, task_batches=True)


def proportion_sets(scores: Mapping[str, Float[Tensor, "n_layers d_mlp"]], p: float, model=None
                    ) -> dict[str, NeuronSet]:
    """``{task: N_t(p)}``: each task's global top-``p`` neurons by its relevance."""
    return {t: select_neurons(s, k=p, name=f"{t}@{p:g}", model=model) for t, s in scores.items()}


def training_union(sets: Mapping[str, NeuronSet], train_tasks: Sequence[str]) -> NeuronSet:
    """``N_x = ∪_{t ∈ train_tasks} N_t``."""
    if not train_tasks:
        raise ValueError("training_union needs at least one training task")
    first, *rest = (sets[t] for t in train_tasks)
    return first.union(*rest) if rest else first


def relation(test_task: str, category: str, train_tasks: Sequence[str]) -> str:
    """ID when ``test_task`` was trained on, else OOD of the same or the other category."""
    if test_task in train_tasks:
        return ID
    return OOD_SAME if get_task(test_task).category == category else OOD_OTHER


def overlap_table(scores: Mapping[str, Tensor], proportions: Sequence[float],
                  categories: Mapping[str, Sequence[str]], test_tasks: Sequence[str]) -> pd.DataFrame:
    """Per category, proportion and test task: ``IoU(N_x(p), N_y(p))`` and the test task's relation."""
    rows = []
    for p in proportions:
        sets = proportion_sets(scores, p)
        for category, train in categories.items():
            union = training_union(sets, train)
            rows += [{"category": category, "p": p, "test_task": y, "relation": relation(y, category, train),
                      "overlap": union.iou(sets[y]), "trained_fraction": union.fraction} for y in test_tasks]
    return pd.DataFrame(rows)


@dataclass
class Sweep:
    """``rows``: one per (mode, category, trained task, p, seed, test task) with the metrics, gains and
    per-example values; ``untrained``: the untrained model's per-test-task results; ``lr``: the chosen
    lr and every grid value's score; ``runs``: the ``protocol.run_arm`` results (loss curves)."""

    rows: pd.DataFrame
    untrained: dict[str, dict] = field(default_factory=dict)
    lr: dict[str, Any] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)


def _rows(mode: str, category: str, trained: str, p: float, seed: int, run: dict, results: Mapping[str, dict],
          untrained: Mapping[str, dict], train_tasks: Sequence[str], overlap: Mapping[str, float]) -> list[dict]:
    rows = []
    for test, measured in results.items():
        task = get_task(test)
        key = DECODED_METRIC[task.category]
        per, base = measured["per_example"], untrained[test]["per_example"]
        gain = {m: [a - b for a, b in zip(per[m], base[m], strict=True)] for m in ("logprob", key)}
        rows.append({"mode": mode, "category": category, "trained": trained, "p": p, "seed": seed,
                     "test_task": test, "test_category": task.category,
                     "relation": relation(test, category, train_tasks), "overlap": overlap.get(test),
                     "lr": run["lr"], "best_step": run["curve"]["best_step"], "stopped": run["curve"]["stopped"],
                     "logprob": sum(per["logprob"]) / len(per["logprob"]),
                     "decoded": sum(per[key]) / len(per[key]), "decoded_metric": key,
                     "logprob_gain": sum(gain["logprob"]) / len(gain["logprob"]),
                     "decoded_gain": sum(gain[key]) / len(gain[key]),
                     "per_example_gain": {"logprob": gain["logprob"], "decoded": gain[key]}})
    return rows


def proportion_sweep(
    model, scores: Mapping[str, Tensor], protocol: Protocol, categories: Mapping[str, Sequence[str]],
    test_tasks: Sequence[str], *, proportions: Sequence[float] = PROPORTIONS, seeds: Sequence[int] = (0, 1, 2),
    individual_proportions: Sequence[float] = (), individual_seeds: Sequence[int] | None = None, n_test: int = 24,
    reference_p: float = REFERENCE_P, batch_size: int = 16, progress: bool = True, workers: int | None = None,
) -> Sweep:
    """Figure 2's sweep (module docstring). ``scores[t]`` is every task's relevance (``relevance_scores``;
    it needs the training and the test tasks); ``categories`` maps each category to its training
    tasks; ``test_tasks`` are scored after every joint run (the training tasks among them are ID).
    ``seeds``: the joint runs'; ``individual_seeds``: individual training's (None: ``seeds``).
    The runs are shared out over ``workers`` processes (``workers.run_jobs``; default ``$NRN_WORKERS``)."""
    individual_seeds = tuple(seeds if individual_seeds is None else individual_seeds)
    if not categories or not all(categories.values()):
        raise ValueError("proportion_sweep: categories must map each category to its training tasks")
    bad = [p for p in (*proportions, *individual_proportions, reference_p)
           if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1]
    if bad or not proportions or not seeds or not individual_seeds:
        raise ValueError(f"proportion_sweep: proportions must lie in (0, 1] (got {bad}) and the seeds must be "
                         "non-empty")
    missing = sorted(({t for train in categories.values() for t in train} | set(test_tasks)) - set(scores))
    if missing:
        raise ValueError(f"proportion_sweep: no relevance scores for {missing}")
    fp = model_fingerprint(model)
    measures = {t: TestMeasure(get_task(t), n_test, batch_size) for t in test_tasks}
    everything = TasksMeasure(tuple(measures.values()))
    out = Sweep(rows=pd.DataFrame())
    out.untrained = {t: measure_untrained(model, m, fp) for t, m in measures.items()}
    by_p = {p: proportion_sets(scores, p, model) for p in dict.fromkeys((reference_p, *proportions,
                                                                         *individual_proportions))}
    grid = protocol.grid("neurons")

    def joint(category: str, p: float, lr: float, seed: int) -> Callable[[], dict]:
        train = categories[category]
        arm = Arm(f"joint:{category}:p={p:g}", "neurons", neurons=training_union(by_p[p], train))
        return partial(run_arm, model, [get_task(t) for t in train], arm, protocol, lr=lr, seed=seed,
                       measure=everything, measure_settings=everything.settings(), measure_code=MEASURE_CODE,
                       fingerprint=fp)

    def individual(name: str, p: float, lr: float, seed: int) -> Callable[[], dict]:
        arm = Arm(f"individual:{name}:p={p:g}", "neurons", neurons=by_p[p][name])
        return partial(run_arm, model, [get_task(name)], arm, protocol, lr=lr, seed=seed, measure=measures[name],
                       measure_settings=measures[name].settings(), measure_code=MEASURE_CODE, fingerprint=fp)

    run = partial(run_jobs, workers=workers, progress=progress, device=model.cfg.device)
    choice = [(lr, c) for lr in grid for c in categories]
    choice_runs = run([joint(c, reference_p, lr, seeds[0]) for lr, c in choice], desc="Figure 2: lr choice")
    scores_by_lr = {lr: sum(r["curve"]["best_dev_loss"] for (g, _), r in zip(choice, choice_runs, strict=True)
                            if g == lr) / len(categories) for lr in grid}
    lr = choose_lr(scores_by_lr)
    out.lr = {"lr": lr, "scores": scores_by_lr, "reference_p": reference_p}
    joint_cells = [(seed, category, p) for seed in seeds for category in categories for p in proportions]
    individual_cells = [(seed, category, name, p) for seed in individual_seeds for category, train in categories.items()
                        for name in train for p in individual_proportions]
    runs = run([joint(category, p, lr, seed) for seed, category, p in joint_cells]
               + [individual(name, p, lr, seed) for seed, _, name, p in individual_cells], desc="Figure 2 arms")
    out.runs = [*choice_runs, *runs]
    rows = []
    for (seed, category, p), joint_run in zip(joint_cells, runs[:len(joint_cells)], strict=True):
        train = categories[category]
        union = training_union(by_p[p], train)
        overlap = {y: union.iou(by_p[p][y]) for y in test_tasks}
        rows += _rows("joint", category, "+".join(train), p, seed, joint_run, joint_run["measure"]["tasks"],
                      out.untrained, train, overlap)
    for (seed, category, name, p), alone in zip(individual_cells, runs[len(joint_cells):], strict=True):
        rows += _rows("individual", category, name, p, seed, alone, {name: alone["measure"]}, out.untrained,
                      [name], {name: 1.0})
    out.rows = pd.DataFrame(rows)
    return out


def dev_curves(runs: Sequence[Mapping[str, Any]], lr: float | None = None) -> pd.DataFrame:
    """The dev loss of every sweep run (``Sweep.runs``; at ``lr`` only when given) for a convergence
    figure: one row per (run, evaluation) with ``panel`` ("joint: {category}" or "alone: {task}"),
    ``p`` (a label, "p = 10%"), ``seed``, ``step``, ``dev_loss`` and ``best`` (its best evaluation)."""
    from nrnlib.protocol import curves_frame

    chosen = [r for r in runs if lr is None or r["lr"] == lr]
    frame = curves_frame(chosen)
    frame = frame[frame.split == "dev"].drop_duplicates(["arm", "lr", "seed", "step"])
    parts = frame.arm.str.extract(r"^(?P<mode>joint|individual):(?P<group>.+):p=(?P<p>[0-9.e-]+)$")
    if parts.isna().any().any():
        raise ValueError(f"dev_curves: not a sweep run: {sorted(set(frame.arm[parts.isna().any(axis=1)]))}")
    p = parts.p.astype(float)
    return pd.DataFrame({
        "panel": parts["mode"].map({"joint": "joint: ", "individual": "alone: "}) + parts.group,
        "p": [f"p = {v:.0%}" for v in p], "p_value": p, "seed": frame.seed.to_numpy(), "step": frame.step.to_numpy(),
        "dev_loss": frame.loss.to_numpy(), "best": frame.best.to_numpy(),
    }).sort_values(["panel", "p_value", "seed", "step"], kind="stable").reset_index(drop=True)


def curve_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, category, relation, p): the mean gain over test tasks, seeds and examples (log-prob
    and decoded), the mean overlap, and the number of test tasks."""
    return (rows.groupby(["mode", "category", "relation", "p"], sort=False)
            .agg(logprob_gain=("logprob_gain", "mean"), decoded_gain=("decoded_gain", "mean"),
                 overlap=("overlap", "mean"), tasks=("test_task", "nunique"), seeds=("seed", "nunique"))
            .reset_index())


def gains(rows: pd.DataFrame, metric: str = "logprob") -> list[list[float]]:
    """The per-example gains of ``rows`` (one test task or several, the same seeds each) as a
    [seed, example] array: per seed, the examples of every test task concatenated in row order."""
    if rows.empty:
        raise ValueError("gains: no rows")
    out = []
    for _, part in rows.groupby("seed", sort=True):
        out.append([v for r in part.itertuples() for v in r.per_example_gain[metric]])
    if len({len(r) for r in out}) != 1:
        raise ValueError("gains: the seeds hold different numbers of examples")
    return out


def curve_cis(rows: pd.DataFrame, metric: str = "logprob") -> pd.DataFrame:
    """Per (mode, category, relation, p): the mean per-example gain over test tasks, seeds and examples
    with its bootstrap 95% CI (seeds and examples resampled crossed), for the sweep's figure."""
    from nrnlib.claims import bootstrap_ci

    out = []
    for (mode, category, rel, p), part in rows.groupby(["mode", "category", "relation", "p"], sort=False):
        values = gains(part, metric)
        est = bootstrap_ci(values, design="crossed") if len(values[0]) >= 2 else None
        mean = sum(map(sum, values)) / sum(map(len, values))
        out.append({"mode": mode, "category": category, "relation": rel, "p": p, "gain": mean,
                    "ci_low": est.ci_low if est else mean, "ci_high": est.ci_high if est else mean,
                    "curve": rel if mode == "joint" else "ID, trained alone"})
    return pd.DataFrame(out)
