"""Notebook 07's analysis of CKA curves (Paper B's layer ranges), apart from the states that
``experiments.layer_by_layer`` trains and reads (so editing a rule here never invalidates a cached
model's states): mean curves with CIs over tasks, the layer ranges at one τ and over a τ grid, the
rule on the E − base gap, Paper B's ranges rescaled, and depth labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from nrnlib.claims import N_BOOT, bootstrap_ci

TAU_GRID = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.50, 0.55, ..., 0.95


def _estimator(curves: pd.DataFrame, estimator: str | None) -> str:
    """``estimator``, or (None) the primary one of ``curves`` (debiased wherever some task has n < d)."""
    if estimator is not None:
        return estimator
    if "primary" not in curves:
        return "linear"
    primaries = set(curves[curves.primary].estimator)
    return "debiased" if "debiased" in primaries else "linear"


def mean_curves(curves: pd.DataFrame, estimator: str | None = None, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per curve and block (embedding excluded): the mean CKA over tasks and its percentile-bootstrap
    95% CI over tasks. Curves: ``"{model} vs C_t, {seen|unseen} tasks"`` for E and base, and one curve
    each, over all tasks, for ``"ceiling: C_t (seed + 1) vs C_t"``, ``"floor: random-init vs C_t"`` and
    ``"cross-task: C_u vs C_t"`` (first averaged over u per task). ``estimator`` None: the primary one."""
    estimator = _estimator(curves, estimator)
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)]
    part = part.groupby(["task", "seen", "model", "layer"], as_index=False).cka.mean()  # cross: mean over u
    labels = {"ceiling": "ceiling: C_t (seed + 1) vs C_t", "floor": "floor: random-init vs C_t",
              "cross": "cross-task: C_u vs C_t"}
    part["curve"] = [labels.get(m, f"{m} vs C_t, {'seen' if s else 'unseen'} tasks")
                     for m, s in zip(part.model, part.seen, strict=True)]
    rows = []
    for (curve, layer), group in part.groupby(["curve", "layer"], sort=False):
        values = group.cka.dropna().to_numpy()
        low = high = float("nan")
        if len(values) >= 2 and np.ptp(values) > 0:
            ci = bootstrap_ci(values, n_boot=n_boot)
            low, high = ci.ci_low, ci.ci_high
        rows.append({"curve": curve, "layer": int(layer), "cka": float(np.mean(values)) if len(values) else np.nan,
                     "ci_low": low, "ci_high": high, "n_tasks": len(values), "estimator": estimator})
    return pd.DataFrame(rows)


def range_sweep(
    curves: pd.DataFrame, taus: Sequence[float] = TAU_GRID, estimator: str | None = None,
) -> pd.DataFrame:
    """``layer_ranges`` at every τ of ``taus``: one row per τ and range (shared, transition,
    refinement) with its half-open block range ``[first, end)`` and its length ``blocks``.
    ``estimator`` None: the primary one of ``curves``."""
    estimator = _estimator(curves, estimator)
    rows = []
    for tau in taus:
        for name, (first, end) in layer_ranges(curves, float(tau), estimator).items():
            rows.append({"tau": float(tau), "range": name, "first": first, "end": end, "blocks": end - first,
                         "estimator": estimator})
    return pd.DataFrame(rows)


def gap_ranges(
    curves: pd.DataFrame, delta: float = 0.0, estimator: str | None = None, n_boot: int = N_BOOT,
) -> tuple[dict[str, tuple[int, int]], pd.DataFrame]:
    """Ranges from the gap between E and base, decided per block with a CI over tasks.

    Per task t and block l: ``g_t(l) = CKA(E, C_t) − CKA(base, C_t)``; per block the mean over tasks
    with its percentile-bootstrap 95% CI over tasks (``claims.bootstrap_ci``). Block l is *closer*
    when the whole CI lies above ``delta`` (E is nearer to the single-task controls than base is).

    - transition: the longest run of consecutive closer blocks (the first such run on a tie);
    - shared: the blocks before it; refinement: the blocks after it.

    Without any closer block the rule finds no transition and does not split the rest: all three
    ranges are empty. Returns the ranges (half-open 0-based block indices) and the per-block table
    (block, gap, ci_low, ci_high, closer). Pass the seen or the unseen tasks' rows, not both mixed,
    unless that mixture is what you mean."""
    estimator = _estimator(curves, estimator)
    part = curves[(curves.estimator == estimator) & (curves.layer > 0) & curves.model.isin(["E", "base"])]
    wide = part.pivot_table(index=["layer", "task"], columns="model", values="cka").dropna()
    if wide.empty:
        raise ValueError(f"no CKA values of E and base for estimator {estimator!r}")
    gaps = (wide["E"] - wide["base"]).rename("gap").reset_index()
    rows = []
    for layer, group in gaps.groupby("layer"):
        values = group.gap.to_numpy()
        if len(values) >= 2 and np.ptp(values) > 0:
            ci = bootstrap_ci(values, n_boot=n_boot)
            low, high = ci.ci_low, ci.ci_high
        else:  # one task, or all tasks equal: the CI is the value itself
            low = high = float(values.mean())
        rows.append({"block": int(layer) - 1, "gap": float(values.mean()), "ci_low": low, "ci_high": high,
                     "closer": bool(low > delta), "n_tasks": len(values)})
    table = pd.DataFrame(rows).sort_values("block", ignore_index=True)
    n = int(table.block.max()) + 1
    closer_blocks = set(table.block[table.closer])
    best, run_start = (0, 0), None
    for i, closer in enumerate([b in closer_blocks for b in range(n)] + [False]):
        if closer and run_start is None:
            run_start = i
        elif not closer and run_start is not None:
            if i - run_start > best[1] - best[0]:
                best = (run_start, i)
            run_start = None
    if best[1] == best[0]:
        return {"shared": (0, 0), "transition": (0, 0), "refinement": (0, 0)}, table
    return {"shared": (0, best[0]), "transition": best, "refinement": (best[1], n)}, table


def layer_ranges(curves: pd.DataFrame, tau: float = 0.95, estimator: str = "linear") -> dict[str, tuple[int, int]]:
    """Shared / transition / refinement layers from mean CKA curves over the tasks in ``curves``.

    With b(l) = mean_t CKA(base, C_t) and e(l) = mean_t CKA(E, C_t) at block l (embedding excluded):

    - shared: the longest run of blocks from the first with b(l) ≥ τ (fine-tuning on a task has not
      moved the representation away from the base model's);
    - transition: the following blocks with e(l) ≥ τ (the multi-task model still matches every
      single-task control although the base model no longer does);
    - refinement: the remaining blocks (the controls' task-specific representations, matched by
      neither experimental model).

    Ranges are half-open ``(first, end)`` in block indices (0-based); empty when first == end.
    """
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)]
    if part.empty:
        raise ValueError(f"no CKA values for estimator {estimator!r}")
    mean = part.groupby(["model", "layer"]).cka.mean()
    b, e = mean.loc["base"].sort_index(), mean.loc["E"].sort_index()
    n = len(b)
    s = 0
    while s < n and b.iloc[s] >= tau:
        s += 1
    t = s
    while t < n and e.iloc[t] >= tau:
        t += 1
    return {"shared": (0, s), "transition": (s, t), "refinement": (t, n)}


def ranges_as_depth(ranges: dict[str, tuple[int, int]], n_layers: int) -> dict[str, str]:
    """Ranges as 1-based layer numbers and fractions of depth, e.g. "1-9 (0.03-0.28)"."""
    out = {}
    for name, (a, b) in ranges.items():
        out[name] = "none" if a == b else f"{a + 1}-{b} ({(a + 1) / n_layers:.2f}-{b / n_layers:.2f})"
    return out


def paper_b_ranges(n_layers: int = 32) -> dict[str, tuple[int, int]]:
    """Paper B's Llama-2-7B ranges (layers 1-9 shared, 10-15 transition, 16-32 refinement of 32), as
    half-open 0-based block ranges rescaled to ``n_layers`` blocks."""
    scale = n_layers / 32
    cut = [0, math.floor(9 * scale + 0.5), math.floor(15 * scale + 0.5), n_layers]
    return {"shared": (cut[0], cut[1]), "transition": (cut[1], cut[2]), "refinement": (cut[2], cut[3])}


def cka_gap(curves: pd.DataFrame, estimator: str = "linear") -> pd.DataFrame:
    """Per block (embedding excluded) and task group (seen / unseen): mean_t CKA(E, C_t) − mean_t
    CKA(base, C_t); positive where the multi-task model is closer to the single-task controls."""
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)]
    mean = part.groupby(["seen", "model", "layer"]).cka.mean().unstack("model")
    gap = (mean["E"] - mean["base"]).rename("gap").reset_index()
    gap["tasks"] = gap.seen.map({True: "seen", False: "unseen"})
    return gap.drop(columns="seen")


# --------------------------------------------------------------------------------------------------
# notebook 07 on Paper B's protocol: tasks, LoRA settings, the plan of models, loss curves
# --------------------------------------------------------------------------------------------------

# Held-out tasks that share no label with a training task: headline_topic shares news_topic's five
# labels, and definition inverts reverse_dictionary (word → gloss against gloss → word), so neither is
# unseen in Paper B's sense.
