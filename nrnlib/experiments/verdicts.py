"""The verdicts of notebooks 00, 01 and 02, through ``nrnlib.claims`` (statistic, bootstrap 95% CI,
threshold fixed here before the run). Kept apart from the experiment modules whose code keys the
cache (``nrnlib.store.code_digest``), so editing a verdict never invalidates a computed result."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from nrnlib.claims import (
    Claim,
    Estimate,
    bootstrap_ci,
    correlation_ci,
    make_claim,
    off_diagonal_mean_ci,
    paired_difference_ci,
    scaled_difference_ci,
    tally_claim,
)
from nrnlib.experiments.deactivation import PAPER_CELL, PAPER_CONTROL, drops_per_example
from nrnlib.profiles import Profile

MARGIN = 0.10
_METRICS = {"calibrated": ("calibrated_correct", "calibrated_accuracy", "ours.foundation.above_chance"),
            "plain": ("correct", "accuracy", "ours.foundation.above_chance_plain")}


def suite_claims(table: pd.DataFrame, profile: Profile | str) -> list[Claim]:
    """The foundation's claims from ``zero_and_few_shot_table``: per classification task and for
    each of plain and calibrated accuracy, in the task's better setting (zero- or few-shot, by the
    point estimate), the statistic ``mean_i(correct_i) − chance`` (``chance`` = majority-class rate
    of the scored examples, held fixed) with its bootstrap 95% CI over the test examples, against
    ``MARGIN`` = 0.10; then per metric the summary "above chance + 0.10 on at least ⌈2/3⌉ of the
    tasks" (4 of 6), decided from the per-task verdicts (:func:`nrnlib.claims.tally_claim`).

    Caveats, said in the notebook: the better setting is picked on the same examples, and Batch
    Calibration's mean is not recomputed inside each resample."""
    cls = table[table.category == "classification"]
    if cls.empty:
        raise ValueError("suite_claims: the table has no classification tasks")
    if "per_example" not in cls or cls.per_example.isna().any():
        raise ValueError("suite_claims: the table has no per-example values; rebuild it with zero_and_few_shot_table")
    out: list[Claim] = []
    for label, (key, metric, id) in _METRICS.items():
        per_task = []
        for task, rows in cls.groupby("task", sort=False):
            best = rows.loc[rows[metric].idxmax()]
            values = np.asarray(best.per_example[key], dtype=float) - float(best.chance)
            per_task.append(make_claim(
                f"{id}.per_task", paper="ours", statement=f"{metric} is above chance + {MARGIN:.2f}",
                paper_value="-", statistic=f"{metric} - chance ({best.chance:.3f}), {best.setting}",
                estimate=bootstrap_ci(values), threshold=MARGIN, direction=">", unit="test examples", scope=task,
                notebook="00_model_and_tasks", figure="00_zero_few_shot", profile=profile))
        at_least = math.ceil(2 * len(per_task) / 3)
        out += per_task + [tally_claim(
            id, per_task, at_least, paper="ours", scope=f"classification tasks, {label} accuracy, better setting",
            statement=f"{metric} above chance + {MARGIN:.2f} on at least {at_least} of {len(per_task)} "
                      f"classification tasks", paper_value="-", notebook="00_model_and_tasks",
            figure="00_zero_few_shot", profile=profile)]
    return out


def detection_claims(
    stability: pd.DataFrame, ious: Mapping[str, pd.DataFrame], k: float, profile: Profile | str, *,
    prefix: str = "ours.detection", model_label: str = "",
) -> list[Claim]:
    """Notebook 01's claims, each with a bootstrap 95% CI over the *tasks* (the units resampled):

    - ``ours.detection.stability`` (per selection): ``mean_t IoU(S_t^A, S_t^B)`` at the largest
      half size of ``stability_table`` > ``k/(2−k)``, the expected IoU of two random sets of ``k``;
    - ``ours.detection.specific_overlap``: ``mean_{s≠t} [IoU_plain(s,t) − IoU_specific(s,t)]`` > 0,
      the off-diagonal IoU paired by task pair (``ious`` keyed ``"plain"`` and ``"specific"``, same
      task order), resampling tasks (:func:`nrnlib.claims.off_diagonal_mean_ci`);
    - ``ours.detection.plain_shared`` (supporting): ``mean_{s≠t} IoU_plain(s,t)`` > ``k/(2−k)``.

    ``prefix`` replaces ``ours.detection`` in the ids (``ours.null_model.detection`` for the null
    model) and ``model_label`` is prepended to every scope."""
    chance = k / (2 - k)
    largest = stability[stability.chunks_per_half == stability.chunks_per_half.max()]
    common = dict(paper="ours", paper_value="-", notebook="01_detect_task_neurons", profile=profile)
    out = []
    for selection, rows in largest.groupby("selection", sort=False):
        m = int(rows.chunks_per_half.iloc[0])
        out.append(make_claim(
            f"{prefix}.stability", statement="a task's neuron set found on one half of the data agrees with "
            "the set found on the other half more than two random sets do", figure="01_stability",
            statistic=f"mean over tasks of half-vs-half IoU ({m} chunks per half)",
            estimate=bootstrap_ci(rows.iou.to_numpy(float)), threshold=chance, direction=">", unit="tasks",
            scope=f"{model_label}{selection} top-{k:.0%}", **common))
    plain, specific = ious["plain"], ious["specific"]
    if list(plain.index) != list(specific.index) or list(plain.columns) != list(specific.columns):
        raise ValueError("detection_claims: the plain and specific IoU matrices must list the same tasks in order")
    out.append(make_claim(
        f"{prefix}.specific_overlap", statement="specificity-aware sets overlap less across tasks than "
        "plain top-k sets", figure="01_iou_heatmap",
        statistic="mean over task pairs of IoU(plain) - IoU(specific), paired by pair",
        estimate=off_diagonal_mean_ci(plain.to_numpy(float) - specific.to_numpy(float)), threshold=0.0,
        direction=">", unit="tasks", scope=f"{model_label}top-{k:.0%}, all task pairs", **common))
    out.append(make_claim(
        f"{prefix}.plain_shared", statement="plain top-k sets of two different tasks overlap more than "
        "random sets", figure="01_iou_heatmap", statistic="mean over task pairs of IoU(plain)",
        estimate=off_diagonal_mean_ci(plain.to_numpy(float)), threshold=chance, direction=">", unit="tasks",
        scope=f"{model_label}plain top-{k:.0%}, all task pairs", **common))
    return out


RHO_MIN = 0.5  # attribution must rank neurons like ablation does at least this well (Spearman's ρ)


def ablation_claims(summary: pd.DataFrame, profile: Profile | str, *, threshold: float = RHO_MIN,
                    id: str = "ours.detection.attribution_predicts_ablation", model_label: str = "") -> list[Claim]:
    """From ``ablation_check_table``'s per-task summary: per task, Spearman's ρ between a neuron's
    relevance ``R`` and the measured ``Σ_b |ΔL_b|`` when it alone is zeroed, with its bootstrap CI
    over the drawn neurons, against ``threshold`` (a ranking by ``R`` is only useful if it agrees
    with the ablation ranking well, not merely positively); then the tally over tasks (⌈2/3⌉)."""
    per_task = [make_claim(
        f"{id}.per_task", paper="ours", paper_value="-",
        statement=f"attribution ranks neurons as single-neuron ablation does (Spearman's rho > {threshold:g})",
        statistic="Spearman's rho between relevance R and measured sum |dL| (neuron zeroed alone)",
        estimate=Estimate(float(r.spearman), float(r.ci_low), float(r.ci_high), int(r.n_neurons),
                          (int(r.n_neurons),), str(getattr(r, "method", ""))),
        threshold=threshold, direction=">", unit="neurons", scope=f"{model_label}{r.task}",
        notebook="01_detect_task_neurons", figure="01_attribution_vs_ablation", profile=profile)
        for r in summary.itertuples()]
    at_least = _at_least(len(per_task))
    return per_task + [tally_claim(
        id, per_task, at_least, paper="ours", paper_value="-", statement=f"attribution predicts single-neuron "
        f"ablation (rho > {threshold:g}) on at least {at_least} of {len(per_task)} tasks",
        scope=f"{model_label}neurons drawn across the relevance range", notebook="01_detect_task_neurons",
        figure="01_attribution_vs_ablation", profile=profile)]


FACTOR = 3.0  # Table 1's rule: own-set drop at least FACTOR x the random-set drop


def _at_least(n: int) -> int:
    return math.ceil(2 * n / 3)


def deactivation_claims(
    table: pd.DataFrame, profile: Profile | str, *, factor: float = FACTOR, id: str = "A.deactivation.ratio",
    paper: str = "A", paper_value: str = "Table 1: large drops for task neurons, small for random ones",
    model_label: str = "",
) -> list[Claim]:
    """Table 1's verdicts from ``deactivation.table1_grid``, per (cell, random control):

    - per task, ``mean_e d_own,e − factor · mean_{s,e} d_rand,s,e > 0`` (log-prob drops, ``d = base −
      condition``), the own drop broadcast over the random seeds and resampled *crossed*: seeds (random
      draws) and test examples at once (:func:`nrnlib.claims.scaled_difference_ci`), so the CI
      carries the spread between random draws as well as between examples;
    - the tally "holds on at least ⌈2/3⌉ of the tasks" (:func:`nrnlib.claims.tally_claim`), under ``id``
      for the cell closest to the paper (global / all positions / same total) and ``id + ".grid"``
      for the other cells."""
    out: list[Claim] = []
    common = dict(notebook="02_deactivation", figure="02_table1_grid", profile=profile)
    tasks = list(dict.fromkeys(table.task))
    random = table[table.condition == "random"]
    for cell, control in dict.fromkeys(zip(random.cell, random.control, strict=True)):
        per_task = []
        for task in tasks:
            own, rnd = drops_per_example(table, task, cell, control)
            estimate = scaled_difference_ci(np.broadcast_to(own, rnd.shape), rnd, factor, design="crossed")
            per_task.append(make_claim(
                f"{id}.per_task", paper=paper, paper_value="-",
                statement=f"log-prob drop with the task's neurons off >= {factor:g}x the drop with random "
                          "neurons off",
                statistic=f"mean own drop - {factor:g} x mean random drop ({rnd.shape[0]} random sets)",
                estimate=estimate, threshold=0.0, direction=">", unit="test examples x random sets",
                scope=f"{model_label}{task}; {cell}, random {control}", **common))
        paper_cell = cell == PAPER_CELL.name and control == PAPER_CONTROL
        at_least = _at_least(len(per_task))
        out += per_task + [tally_claim(
            id if paper_cell else f"{id}.grid", per_task, at_least, paper=paper, paper_value=paper_value,
            statement=f"deactivating a task's top-10% neurons hurts >= {factor:g}x more than random neurons, "
                      f"on at least {at_least} of {len(per_task)} tasks",
            scope=f"{model_label}{cell} attribution, random {control}"
                  + (" (closest to the paper)" if paper_cell else ""), **common)]
    return out


def specificity_claims(matrix: pd.DataFrame, profile: Profile | str, id: str = "ours.deactivation.own_set_most_harmful"
                       ) -> list[Claim]:
    """From ``deactivation.specificity_matrix`` (rows with ``per_example``): per task t, the paired
    per-example difference between the log-prob drop with its own set off and with the most harmful
    other task's set off (the other set with the largest mean drop), ``> 0`` with its bootstrap CI
    over test examples; then the tally over tasks (at least ⌈2/3⌉). Choosing the strongest rival on
    the same examples favours the rival, so the test is conservative."""
    per_task = []
    for task, part in matrix.groupby("task", sort=False):
        own = part[part.whose == task].iloc[0]
        others = part[part.whose != task]
        rival = others.loc[others.logprob_drop.idxmax()]
        # drops share the intact baseline, so own drop − rival drop = rival log-prob − own log-prob
        estimate = paired_difference_ci(rival.per_example["logprob"], own.per_example["logprob"])
        per_task.append(make_claim(
            f"{id}.per_task", paper="ours", paper_value="-",
            statement="the task's own set hurts it more than any other task's set",
            statistic=f"mean over examples of drop(own) - drop({rival.whose}), paired", estimate=estimate,
            threshold=0.0, direction=">", unit="test examples", scope=task, notebook="02_deactivation",
            figure="02_specificity_matrix", profile=profile))
    at_least = _at_least(len(per_task))
    return per_task + [tally_claim(
        id, per_task, at_least, paper="ours", paper_value="-", statement=f"a task's own set is the most harmful set "
        f"for it on at least {at_least} of {len(per_task)} tasks", scope="plain global top-10%, activation zeroing",
        notebook="02_deactivation", figure="02_specificity_matrix", profile=profile)]



_DECODED_LABEL = {"calibrated": "calibrated accuracy", "rougeL": "ROUGE-L"}


def _finetuning_metric(metric: str, category: str) -> tuple[str, str]:
    """Table 2's column and label for ``metric`` ("logprob" or "decoded") on a task of ``category``."""
    from nrnlib.experiments.measures import DECODED_METRIC

    if metric == "logprob":
        return "logprob", "log-prob"
    key = DECODED_METRIC[category]
    return key, _DECODED_LABEL[key]


def _finetuning_pairs(rows: pd.DataFrame):
    """Every (metric, cell, control, task, label, own − random [seed, example] array) of Table 2's rows."""
    from nrnlib.experiments.neuron_finetuning import paired_per_example

    random = rows[rows.arm == "random"]
    category = rows.drop_duplicates("task").set_index("task").category
    for metric in ("logprob", "decoded"):
        for cell, control in dict.fromkeys(zip(random.cell, random.control, strict=True)):
            for task in dict.fromkeys(random.task):
                key, label = _finetuning_metric(metric, category[task])
                own, rnd = paired_per_example(rows, task, cell, control, key)
                yield metric, cell, control, task, label, np.asarray(own, dtype=float) - np.asarray(rnd, dtype=float)


def finetuning_seed_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Each seed's own mean over test examples of task arm − random arm, in the rows and panels of
    ``finetuning_claims``' per-task forest (columns row, facet, seed_index, estimate): the dots around a CI."""
    return pd.DataFrame([{"row": task, "facet": f"{label}; {cell}, random {control}", "seed_index": seed,
                          "estimate": float(per_seed)}
                         for _, cell, control, task, label, diff in _finetuning_pairs(rows)
                         for seed, per_seed in enumerate(diff.mean(axis=1))])


def finetuning_claims(rows: pd.DataFrame, profile: Profile | str, *, id: str = "A.finetune.task_vs_random"
                      ) -> list[Claim]:
    """Table 2's verdicts from ``neuron_finetuning.table2``'s rows, per metric (the test log-prob and
    the decoded metric: calibrated accuracy / ROUGE-L) and per (cell, random control):

    - per task, ``mean_{s,e} (m_task,s,e − m_random,s,e) > 0``: the paired difference of the task arm
      and the random arm of the same seed (same batches, same lr) on the same test examples, a
      [seed, example] array resampled *crossed* (seeds and examples at once), so the CI carries the
      spread between training runs and random draws as well as between examples;
    - the tally "holds on at least ⌈2/3⌉ of the tasks", under ``id`` for the cell and control closest
      to the paper (global / all positions / same total) and ``id + ".grid"`` for the others."""
    out: list[Claim] = []
    common = dict(notebook="03_neuron_finetuning", figure="03_table2", profile=profile)
    groups: dict[tuple[str, str, str], list[Claim]] = {}
    for metric, cell, control, task, label, diff in _finetuning_pairs(rows):
        groups.setdefault((metric, cell, control), []).append(make_claim(
            f"{id}.per_task", paper="A", paper_value="-",
            statement=f"training only the task's neurons gives a higher test {label} than training as "
                      "many random neurons",
            statistic=f"mean over seeds and examples of {label}(task arm) - {label}(random arm), paired",
            estimate=bootstrap_ci(diff, design="crossed"), threshold=0.0, direction=">",
            unit="seeds x test examples", scope=f"{task}; {label}; {cell}, random {control}", **common))
    for (metric, cell, control), per_task in groups.items():
        paper_cell = cell == PAPER_CELL.name and control == PAPER_CONTROL
        at_least = _at_least(len(per_task))
        metric_label = "log-prob" if metric == "logprob" else "calibrated accuracy / ROUGE-L"
        out += per_task + [tally_claim(
            id if paper_cell else f"{id}.grid", per_task, at_least, paper="A",
            paper_value="Table 2: remarkable improvements over random neurons on all tasks but one",
            statement=f"fine-tuning only the task's neurons beats fine-tuning as many random neurons, on at "
                      f"least {at_least} of {len(per_task)} tasks",
            scope=f"{metric_label}; {cell} attribution, random {control}"
                  + (" (closest to the paper)" if paper_cell else ""), **common)]
    return out


MIN_POINTS = 8  # a rank correlation over fewer (category, p, task) points gets no verdict
NO_TRANSFER_MARGIN = 0.5  # nats: a log-prob gain below this on the other category's tasks counts as no transfer


def generalization_claims(rows: pd.DataFrame, profile: Profile | str, *, margin: float = NO_TRANSFER_MARGIN
                          ) -> list[Claim]:
    """Figure 2's verdicts from ``generalization.proportion_sweep``'s rows (log-prob gains over the
    untrained model, per example; seeds and examples resampled crossed), rules fixed here:

    - ``A.generalization.id_peak`` (per category, joint training): with ``p*`` the proportion below
      the largest whose mean ID gain is highest, ``gain_ID(p*) − gain_ID(p_max) > 0`` (paired by seed
      and example): some proportion below all neurons beats training all of them, i.e. ID rises then
      falls. Picking ``p*`` on the same data favours the claim; the CI does not correct for it;
    - ``A.generalization.ood_rise`` (per category, per held-out task of the category):
      ``gain(p_max) − gain(p_min) > 0``; the tally over the tasks (⌈2/3⌉);
    - ``A.generalization.no_cls_to_gen`` (per generation task, after joint classification training at
      ``p_max``): the gain's CI lies below ``margin`` nats; the tally over the tasks;
    - ``A.generalization.overlap_ood``: Spearman's ρ between the overlap ``IoU(N_x(p), N_y(p))`` and
      the mean OOD (same category) gain over the (category, p, held-out task) points, > 0, CI over points
      (only with at least ``MIN_POINTS`` points);
    - ``A.generalization.individual_rise`` (per training task, individual training):
      ``gain_ID(p_max) − gain_ID(p_min) > 0``; the tally."""
    from nrnlib.experiments.generalization import ID, OOD_OTHER, OOD_SAME, gains

    out: list[Claim] = []
    common = dict(paper="A", notebook="04_generalization_overlap", profile=profile)
    joint = rows[rows["mode"] == "joint"]
    ps = sorted(joint.p.unique())
    if len(ps) < 2:
        raise ValueError("generalization_claims needs at least two proportions")
    low, top = ps[0], ps[-1]

    def arr(part: pd.DataFrame) -> np.ndarray:
        return np.asarray(gains(part), dtype=float)

    def rise(part: pd.DataFrame, id: str, scope: str, figure: str) -> Claim:
        return make_claim(id, paper_value="-", statement=f"the gain rises from p = {low:g} to p = {top:g}",
                          statistic=f"mean gain at p = {top:g} - mean gain at p = {low:g}, paired",
                          estimate=bootstrap_ci(arr(part[part.p == top]) - arr(part[part.p == low]), design="crossed"),
                          threshold=0.0, direction=">", unit="seeds x test examples", scope=scope, figure=figure,
                          **common)

    for category, part in joint.groupby("category", sort=False):
        in_domain = part[part.relation == ID]
        means = {p: in_domain[in_domain.p == p].logprob_gain.mean() for p in ps if p < top}
        peak = max(means, key=means.get)
        out.append(make_claim(
            "A.generalization.id_peak", paper_value="Fig. 2: peak at 70% (classification) and 50% (generation)",
            statement="in-domain performance first rises, then falls, as the proportion of trained neurons grows",
            statistic=f"ID log-prob gain at the best p below {top:g} (p* = {peak:g}) - at p = {top:g}, paired",
            estimate=bootstrap_ci(arr(in_domain[in_domain.p == peak]) - arr(in_domain[in_domain.p == top]),
                                  design="crossed"),
            threshold=0.0, direction=">", unit="seeds x test examples", scope=f"{category}; peak p* = {peak:g}",
            figure="04_proportion_sweep", **common))
        held_out = part[part.relation == OOD_SAME]
        per_task = [rise(held_out[held_out.test_task == t], "A.generalization.ood_rise.per_task",
                         f"{category} -> {t}", "04_proportion_sweep") for t in dict.fromkeys(held_out.test_task)]
        if per_task:
            at_least = _at_least(len(per_task))
            out += per_task + [tally_claim(
                "A.generalization.ood_rise", per_task, at_least, paper_value="Fig. 2: continuous increase",
                statement=f"OOD (same category) log-prob gain rises with the proportion on at least {at_least} of "
                          f"{len(per_task)} held-out tasks", scope=category, figure="04_proportion_sweep", **common)]
    to_gen = joint[(joint.category == "classification") & (joint.relation == OOD_OTHER) & (joint.p == top)
                   & (joint.test_category == "generation")]
    per_task = [make_claim(
        "A.generalization.no_cls_to_gen.per_task", paper_value="-",
        statement=f"joint classification training does not raise a generation task's log-prob by {margin:g} nats",
        statistic=f"mean log-prob gain at p = {top:g}", estimate=bootstrap_ci(arr(rows_t), design="crossed"),
        threshold=margin, direction="<", unit="seeds x test examples", scope=t, figure="04_proportion_sweep", **common)
        for t, rows_t in to_gen.groupby("test_task", sort=False)]
    if per_task:
        at_least = _at_least(len(per_task))
        out += per_task + [tally_claim(
            "A.generalization.no_cls_to_gen", per_task, at_least, paper_value="Fig. 2: no generalization observed",
            statement=f"no transfer from classification to generation on at least {at_least} of {len(per_task)} "
                      "generation tasks", scope=f"p = {top:g}", figure="04_proportion_sweep", **common)]
    points = (joint[joint.relation == OOD_SAME].groupby(["category", "p", "test_task"])
              .agg(overlap=("overlap", "mean"), gain=("logprob_gain", "mean")).reset_index())
    if len(points) >= MIN_POINTS and points.overlap.nunique() > 1 and points.gain.nunique() > 1:
        out.append(make_claim(
            "A.generalization.overlap_ood", paper_value="Fig. 2: overlap 'surges' with the proportion",
            statement="the more a held-out task's neurons overlap the training tasks', the more it gains",
            statistic="Spearman's rho between IoU(N_x, N_y) and the mean OOD log-prob gain",
            estimate=correlation_ci(points.overlap.to_numpy(), points.gain.to_numpy()), threshold=0.0,
            direction=">", unit="(category, p, task) points", scope="OOD tasks of the same category",
            figure="04_overlap", **common))
    individual = rows[rows["mode"] == "individual"]
    if not individual.empty and individual.p.nunique() >= 2:
        low, top = individual.p.min(), individual.p.max()
        per_task = [rise(part, "A.generalization.individual_rise.per_task", f"{t} alone", "04_proportion_sweep")
                    for t, part in individual.groupby("test_task", sort=False)]
        at_least = _at_least(len(per_task))
        out += per_task + [tally_claim(
            "A.generalization.individual_rise", per_task, at_least,
            paper_value="ablation: continuous enhancement when each task is trained alone",
            statement=f"trained alone, a task's ID gain rises with the proportion on at least {at_least} of "
                      f"{len(per_task)} tasks", scope="individual training", figure="04_proportion_sweep", **common)]
    return out


def similarity_claims(rows: pd.DataFrame, profile: Profile | str, *, definition: str = "centroid") -> list[Claim]:
    """Figure 3's verdicts from ``parameter_similarity.similarity_models``'s rows (trained models;
    similarity and performance averaged over seeds per (model task i, held-out task j) pair), per
    setting, over the deeper half of the layers (Paper A: "beyond a certain depth"):

    - ``A.similarity.layer_correlation.per_layer``: Spearman's ρ between ``s_l(i, j)`` and j's log-prob
      gain over the pairs, > 0, CI by resampling pairs (only with at least ``MIN_POINTS`` pairs); the
      tally ``A.similarity.layer_correlation``: ρ > 0 in at least ⌈2/3⌉ of the deeper layers;
    - ``ours.similarity.beyond_shuffled``: the mean over pairs of ``mean_{deeper l} (s_l − shuffled_l)``
      > 0, CI over pairs: the sets are more alike than random sets of the same sizes per layer."""
    out: list[Claim] = []
    part = rows[(rows.stage == "trained") & (rows.definition == definition)]
    if part.empty:
        raise ValueError(f"similarity_claims: no trained rows for definition {definition!r}")
    deep_from = (int(part.layer.max()) + 1) // 2
    common = dict(notebook="05_parameter_similarity", figure="05_similarity_by_layer", profile=profile)
    for setting, rows_s in part.groupby("setting", sort=False):
        pairs = rows_s.groupby(["layer", "model_task", "test_task"], as_index=False)[
            ["similarity", "shuffled", "logprob_gain"]].mean()
        deep = pairs[pairs.layer >= deep_from]
        per_layer = []
        for layer, group in deep.groupby("layer"):
            group = group.dropna(subset=["similarity"])
            if len(group) < MIN_POINTS or group.similarity.nunique() < 2 or group.logprob_gain.nunique() < 2:
                continue
            per_layer.append(make_claim(
                "A.similarity.layer_correlation.per_layer", paper="A", paper_value="-",
                statement="the more alike the two tasks' neuron parameters in this layer, the more the held-out task "
                          "gains", statistic=f"Spearman's rho between {definition} similarity and log-prob gain",
                estimate=correlation_ci(group.similarity.to_numpy(), group.logprob_gain.to_numpy()), threshold=0.0,
                direction=">", unit="(model, held-out task) pairs", scope=f"{setting}; layer {int(layer) + 1}",
                **common))
        if per_layer:
            at_least = _at_least(len(per_layer))
            out += per_layer + [tally_claim(
                "A.similarity.layer_correlation", per_layer, at_least, paper="A",
                paper_value="Fig. 3: high similarity in deeper layers, strongly correlated with performance",
                statement=f"similarity correlates positively with the held-out task's gain in at least {at_least} "
                          f"of the {len(per_layer)} deeper layers", unit="layers", scope=f"{setting}, {definition}",
                **common)]
        by_pair = deep.dropna(subset=["similarity", "shuffled"]).groupby(["model_task", "test_task"])
        excess = (by_pair.similarity.mean() - by_pair.shuffled.mean()).to_numpy(float)
        if len(excess) >= 2:
            out.append(make_claim(
                "ours.similarity.beyond_shuffled", paper="ours", paper_value="-",
                statement="in the deeper layers the two tasks' neuron parameters are more alike than random sets of "
                          "the same sizes",
                statistic=f"mean over pairs of the deeper-layer mean of similarity - shuffled ({definition})",
                estimate=bootstrap_ci(excess), threshold=0.0, direction=">", unit="(model, held-out task) pairs",
                scope=f"{setting}, layers {deep_from + 1}+", **common))
    return out
