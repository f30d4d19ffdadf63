"""Notebook 05 (Paper A Figure 3): inside a model fine-tuned on one task's neurons, how similar are
that task's neuron parameters to a held-out task's, layer by layer, and does the similarity go with
how well the held-out task does?

- **Models.** ``M_i``: the model trained on training task i alone, updating only ``N_i`` (its top-k
  neurons, k = 10%), on the training protocol (``nrnlib.protocol``); one per training task and seed.
- **Similarity.** In ``M_i`` and layer l, ``s_l(i, j) = sim(θ[N_i ∩ layer l], θ[N_j ∩ layer l])``
  with ``θ_n = [W_gate[n, :]; W_up[n, :]; W_down[:, n]]`` and ``sim`` one of
  ``nrnlib.similarity.DEFINITIONS`` ("centroid": the cosine of the two sets' mean unit vectors;
  "matching": the symmetric mean best-match cosine), both reported. Shared neurons make two sets
  similar by construction, so every value has a **shuffled control** beside it: the same sizes per
  layer, drawn at random (``random_like(seed, match="layer")`` for both sets), in the same model.
- **Performance** of held-out task j in ``M_i``: the per-example gain of its test log-prob (and decoded
  metric) over the untrained model, as in notebook 04.
- **Settings**: classification → classification, generation → generation, classification →
  generation (the category of i → the category of j).

Each (task i, seed) is one cached ``protocol.run_arm`` whose measurement computes the scores and the
similarities on the trained weights; the lr is chosen on dev over the grid at the first seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from nrnlib.experiments.generalization import proportion_sets
from nrnlib.experiments.measures import DECODED_METRIC, MEASURE_CODE, TestMeasure, measure_untrained
from nrnlib.model_state import model_fingerprint
from nrnlib.neurons import NeuronSet
from nrnlib.protocol import Arm, Protocol, choose_lr, run_arm
from nrnlib.similarity import DEFINITIONS, layer_similarity
from nrnlib.tasks import get_task
from nrnlib.workers import run_jobs

SETTINGS = (("classification", "classification"), ("generation", "generation"), ("classification", "generation"))
SIMILARITY_CODE = ("similarity", "experiments.parameter_similarity")


def setting_name(source: str, target: str) -> str:
    """``"classification -> generation"`` style label of a (trained, held-out) category pair."""
    return f"{source} -> {target}"


def _json_layers(values: Tensor) -> list[float | None]:
    """Per-layer values as JSON numbers (None for NaN: a layer without neurons of one set)."""
    return [None if np.isnan(v) else float(v) for v in values.tolist()]


@dataclass(frozen=True)
class SimilarityMeasure:
    """``measure(model)`` for ``M_i``: the held-out tasks' test results, and per held-out task and
    definition the per-layer similarity of ``own`` with its set, and of the shuffled pair."""

    own: NeuronSet
    test_sets: tuple[tuple[str, NeuronSet], ...]
    measures: tuple[TestMeasure, ...]
    control_seed: int = 0

    def settings(self) -> dict[str, Any]:
        return {"measure": "figure3", "own": self.own.digest(), "sets": {t: s.digest() for t, s in self.test_sets},
                "tests": {m.task.name: m.settings() for m in self.measures}, "definitions": list(DEFINITIONS),
                "control_seed": self.control_seed}

    def similarities(self, model) -> dict[str, Any]:
        """Per held-out task: ``{"similarity": {definition: [per layer]}, "shuffled": {...}}`` (NaN
        as None where a layer holds none of one set's neurons)."""
        out = {}
        for i, (name, other) in enumerate(self.test_sets):
            a = self.own.random_like(self.control_seed, match="layer")
            b = other.random_like(self.control_seed + 1 + i, match="layer")
            out[name] = {kind: {d: _json_layers(layer_similarity(model, x, y, d)) for d in DEFINITIONS}
                         for kind, (x, y) in (("similarity", (self.own, other)), ("shuffled", (a, b)))}
        return out

    def __call__(self, model) -> dict[str, Any]:
        start = time.perf_counter()
        return {"tasks": {m.task.name: m(model) for m in self.measures}, "similarity": self.similarities(model),
                "wall_s": time.perf_counter() - start}


@dataclass
class Figure3:
    """``rows``: one per (model task i, seed, held-out task j, layer, definition) with the similarity,
    the shuffled control, the setting and j's gains; ``lr``: the chosen lr and the grid's scores;
    ``runs``: the ``protocol.run_arm`` results (loss curves); ``untrained``: the untrained model's
    similarities (the same pairs before any training)."""

    rows: pd.DataFrame
    lr: dict[str, Any] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)
    untrained: dict[str, dict] = field(default_factory=dict)


def _rows(source: str, seed: int | None, measured: dict, base: Mapping[str, dict], stage: str) -> list[dict]:
    rows = []
    for target, sims in measured["similarity"].items():
        task = get_task(target)
        key = DECODED_METRIC[task.category]
        per, ref = measured["tasks"][target]["per_example"], base[target]["per_example"]
        gain = float(np.mean(np.subtract(per["logprob"], ref["logprob"])))
        decoded = float(np.mean(np.subtract(per[key], ref[key])))
        for definition in DEFINITIONS:
            for layer, (value, shuffled) in enumerate(zip(sims["similarity"][definition], sims["shuffled"][definition],
                                                          strict=True)):
                rows.append({"stage": stage, "model_task": source, "seed": seed, "test_task": target,
                             "setting": setting_name(get_task(source).category, task.category),
                             "definition": definition, "layer": layer, "similarity": value, "shuffled": shuffled,
                             "logprob_gain": gain, "decoded_gain": decoded})
    return rows


def similarity_models(
    model, scores: Mapping[str, Tensor], protocol: Protocol, train_tasks: Sequence[str], test_tasks: Sequence[str],
    *, k: float = 0.10, seeds: Sequence[int] = (0, 1, 2), n_test: int = 24, batch_size: int = 16,
    progress: bool = True, workers: int | None = None,
) -> Figure3:
    """Figure 3 (module docstring): one ``M_i`` per training task and seed, each measured on the
    held-out ``test_tasks`` (scores and per-layer similarities); the same similarities on the
    untrained model (``stage="untrained"``). ``scores`` must hold every training and test task. The
    models are shared out over ``workers`` processes (``workers.run_jobs``; default ``$NRN_WORKERS``)."""
    missing = sorted((set(train_tasks) | set(test_tasks)) - set(scores))
    if missing:
        raise ValueError(f"similarity_models: no relevance scores for {missing}")
    if not train_tasks or not test_tasks or not seeds:
        raise ValueError("similarity_models needs training tasks, held-out tasks and seeds")
    fp = model_fingerprint(model)
    sets = proportion_sets(scores, k, model)
    measures = tuple(TestMeasure(get_task(t), n_test, batch_size) for t in test_tasks)
    base = {m.task.name: measure_untrained(model, m, fp) for m in measures}
    test_sets = tuple((t, sets[t]) for t in test_tasks)
    out = Figure3(rows=pd.DataFrame())
    rows = []
    for name in train_tasks:  # the similarities before training: a property of the loaded model
        measure = SimilarityMeasure(sets[name], test_sets, measures, control_seed=0)
        untrained = {"similarity": measure.similarities(model), "tasks": base}
        out.untrained[name] = untrained["similarity"]
        rows += _rows(name, None, untrained, base, "untrained")
    grid = protocol.grid("neurons")

    def train(name: str, lr: float, seed: int) -> Callable[[], dict]:
        measure = SimilarityMeasure(sets[name], test_sets, measures, control_seed=seed)
        return partial(run_arm, model, [get_task(name)], Arm(f"M:{name}", "neurons", neurons=sets[name]), protocol,
                       lr=lr, seed=seed, measure=measure, measure_settings=measure.settings(),
                       measure_code=MEASURE_CODE + SIMILARITY_CODE, fingerprint=fp)

    run = partial(run_jobs, workers=workers, progress=progress, device=model.cfg.device)
    choice = [(lr, name) for lr in grid for name in train_tasks]
    choice_runs = run([train(name, lr, seeds[0]) for lr, name in choice], desc="Figure 3: lr choice")
    by_lr: dict[float, dict[str, dict]] = {lr: {} for lr in grid}
    for (lr, name), r in zip(choice, choice_runs, strict=True):
        by_lr[lr][name] = r
    lr_scores = {lr: float(np.mean([r["curve"]["best_dev_loss"] for r in runs.values()])) for lr, runs in by_lr.items()}
    lr = choose_lr(lr_scores)
    out.lr = {"lr": lr, "scores": lr_scores}
    later = [(seed, name) for seed in seeds[1:] for name in train_tasks]
    later_runs = run([train(name, lr, seed) for seed, name in later], desc="Figure 3 models")
    out.runs = [*choice_runs, *later_runs]
    trained = {(seeds[0], name): by_lr[lr][name] for name in train_tasks} | dict(zip(later, later_runs, strict=True))
    for seed in seeds:
        for name in train_tasks:
            rows += _rows(name, seed, trained[seed, name]["measure"], base, "trained")
    out.rows = pd.DataFrame(rows)
    return out


def layer_correlations(rows: pd.DataFrame, definition: str = "centroid", column: str = "similarity",
                       performance: str = "logprob_gain") -> pd.DataFrame:
    """Per setting and layer, over the (model task i, held-out task j) pairs of the trained models
    (similarity and performance averaged over seeds): Pearson's r and Spearman's ρ with their
    two-sided p-values (``scipy.stats``), and the number of pairs."""
    from scipy import stats

    part = rows[(rows.stage == "trained") & (rows.definition == definition)].dropna(subset=[column])
    pairs = part.groupby(["setting", "layer", "model_task", "test_task"], as_index=False)[[column, performance]].mean()
    out = []
    for (setting, layer), group in pairs.groupby(["setting", "layer"], sort=False):
        x, y = group[column].to_numpy(float), group[performance].to_numpy(float)
        row = {"setting": setting, "layer": int(layer), "n_pairs": len(group), "definition": definition,
               "column": column, "pearson": np.nan, "pearson_p": np.nan, "spearman": np.nan, "spearman_p": np.nan}
        if len(group) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
            r, p = stats.pearsonr(x, y)
            rho, p_rho = stats.spearmanr(x, y)
            row.update(pearson=float(r), pearson_p=float(p), spearman=float(rho), spearman_p=float(p_rho))
        out.append(row)
    return pd.DataFrame(out)


def similarity_by_layer(rows: pd.DataFrame) -> pd.DataFrame:
    """Per stage, setting, definition and layer: the mean similarity and the mean shuffled control
    over models, held-out tasks and seeds (the figure's curves)."""
    return (rows.groupby(["stage", "setting", "definition", "layer"], sort=False)
            .agg(similarity=("similarity", "mean"), shuffled=("shuffled", "mean"), pairs=("test_task", "size"))
            .reset_index())
