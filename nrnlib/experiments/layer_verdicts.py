"""The verdicts of notebook 07 (Paper B, "Layer by Layer"), through ``nrnlib.claims``: a statistic,
its bootstrap 95% CI over *tasks* (the units resampled), and a rule fixed here before the run. Kept
apart from ``layer_by_layer`` (whose code keys the cache of trained states), so editing a verdict
never invalidates a trained model.

Inputs are ``cka_curves`` tables (one row per task, model, estimator and layer index; layer 0 is the
embedding, layer l + 1 the output of block l). Every rule reads the *primary* estimator of the curves
(debiased where some task has fewer prompts than dimensions) unless told otherwise.

- ``B.pretrained.early_similarity``: per task t, ``s_t = mean_{l ∈ early} CKA(base, C_t)(l)`` over the
  early blocks (Paper B's shared range, layers 1-9 of 32, rescaled to this depth); claim
  ``mean_t s_t > EARLY_LEVEL`` (0.90, our reading of the paper's "high similarity"), all tasks.
- ``B.ranges.transition``: the gap rule of ``layer_by_layer.gap_ranges`` on the seen tasks: block l is
  *closer* when the 95% CI over tasks of ``mean_t [CKA(E, C_t) − CKA(base, C_t)](l)`` lies above
  ``DELTA`` (0). Statistic: ``H`` = number of closer blocks, known to lie in ``[H, H + I]`` with ``I``
  the blocks whose CI contains ``DELTA``; claim ``H ≥ 1``: holds when some block is closer, does not
  hold when every block's CI lies below ``DELTA``, else inconclusive (``claims.tally_claim``'s rule).
- ``B.ranges.unseen_no_transition``: the same count on the unseen tasks, claim ``H = 0``: holds when
  every block's CI lies below ``DELTA`` (no block can be closer), does not hold when some block is
  closer (a transition appears on tasks E never saw), else inconclusive. Where E and base are
  indistinguishable (early blocks, CI around 0) it stays inconclusive: absence needs evidence too.
- ``ours.layer_by_layer.beyond_format``: on the seen tasks that have cross-task controls, over the
  blocks the gap rule calls closer on seen tasks, per task t
  ``f_t = mean_{l ∈ closer} [CKA(E, C_t)(l) − mean_{u ≠ t} CKA(C_u, C_t)(l)]``; claim ``mean_t f_t > 0``:
  where E is closer to C_t than base is, it is also closer than another task's control C_u is, so
  what E shares with C_t is specific to task t, not the answer format every control learns. Not
  testable (no claim) without closer blocks or with fewer than two such tasks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nrnlib.claims import N_BOOT, Claim, Estimate, bootstrap_ci, format_ci, make_claim
from nrnlib.experiments.ranges import _estimator, gap_ranges, paper_b_ranges
from nrnlib.profiles import Profile

EARLY_LEVEL = 0.90  # "high similarity" in the early blocks (Paper B reads it off its curves; no number given)
DELTA = 0.0  # the gap rule: a block is closer when the CI of E − base lies above this
NOTEBOOK = "07_layer_by_layer"
FIGURE_CURVES = "07_layer_by_layer"
FIGURE_GAP = "07_gap"


def early_blocks(n_blocks: int) -> tuple[int, int]:
    """Paper B's shared range (layers 1-9 of 32) rescaled to ``n_blocks``: half-open 0-based blocks."""
    first, end = paper_b_ranges(n_blocks)["shared"]
    if end <= first:
        raise ValueError(f"with {n_blocks} blocks Paper B's early range rescales to no block at all")
    return first, end


def _part(curves: pd.DataFrame, estimator: str | None) -> tuple[pd.DataFrame, str]:
    """The curves' rows of one estimator, embedding (layer 0) excluded, NaN CKA dropped."""
    needed = {"task", "seen", "model", "estimator", "layer", "cka"}
    if not isinstance(curves, pd.DataFrame) or not needed <= set(curves.columns):
        raise ValueError(f"expected a cka_curves table with columns {sorted(needed)}")
    estimator = _estimator(curves, estimator)
    part = curves[(curves.estimator == estimator) & (curves.layer > 0)].dropna(subset=["cka"])
    if part.empty:
        raise ValueError(f"no CKA values (after the embedding) for estimator {estimator!r}")
    return part, estimator


def block_list(blocks: list[int]) -> str:
    """1-based block numbers as runs: [1, 2, 3, 6, 10, 11] -> "1-3, 6, 10-11"."""
    runs: list[list[int]] = []
    for b in sorted(blocks):
        if runs and b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _n_blocks(curves: pd.DataFrame) -> int:
    return int(curves.layer.max())


def _per_task(part: pd.DataFrame, model: str) -> pd.DataFrame:
    """Wide table [task x layer] of one model's CKA (cross-task rows averaged over u first)."""
    rows = part[part.model == model]
    return rows.groupby(["task", "layer"]).cka.mean().unstack("layer")


def _need_tasks(values: np.ndarray, what: str) -> None:
    if len(values) < 2:
        raise ValueError(f"{what}: a bootstrap CI over tasks needs at least 2 tasks, got {len(values)}")


def early_similarity_claim(
    curves: pd.DataFrame, profile: Profile | str, estimator: str | None = None, level: float = EARLY_LEVEL,
    n_boot: int = N_BOOT,
) -> Claim:
    """``B.pretrained.early_similarity`` (module docstring): ``mean_t s_t > level``, CI over all tasks."""
    part, estimator = _part(curves, estimator)
    n_blocks = _n_blocks(curves)
    first, end = early_blocks(n_blocks)
    base = _per_task(part, "base")
    early = base.loc[:, [layer for layer in base.columns if first < layer <= end]]  # layer = block + 1
    s = early.mean(axis=1).dropna()
    _need_tasks(s.to_numpy(), "early_similarity_claim")
    return make_claim(
        "B.pretrained.early_similarity", paper="B",
        statement="The model before the multi-task tuning already matches the single-task controls in early blocks",
        paper_value="linear CKA high in layers 1-9 of 32 (Llama-2-7B)",
        statistic=f"mean over tasks of the mean {estimator} CKA(base, C_t) over blocks {first + 1}-{end} of "
                  f"{n_blocks}", estimate=bootstrap_ci(s.to_numpy(), n_boot=n_boot), threshold=level,
        direction=">", unit="tasks", scope=f"all {len(s)} tasks", notebook=NOTEBOOK, figure=FIGURE_CURVES,
        profile=profile)


def _count_estimate(table: pd.DataFrame, delta: float, n_tasks: int) -> tuple[Estimate, str]:
    """[H, H + I] from a gap_ranges table, and a phrase naming the deciding block."""
    n_closer = int((table.ci_low > delta).sum())
    n_open = int(((table.ci_low <= delta) & (table.ci_high >= delta)).sum())
    best = table.loc[table.ci_low.idxmax()] if n_closer else table.loc[table.ci_high.idxmax()]
    note = (f"{'largest lower bound' if n_closer else 'largest upper bound'}: block {int(best.block) + 1}, "
            f"gap {format_ci(best.gap, best.ci_low, best.ci_high)}")
    estimate = Estimate(n_closer, n_closer, n_closer + n_open, n_tasks,
                        method=f"count of per-block verdicts (95% percentile-bootstrap CI over {n_tasks} tasks "
                               f"per block): [#closer, #closer + #undecided]")
    return estimate, note


def transition_claims(
    curves: pd.DataFrame, profile: Profile | str, estimator: str | None = None, delta: float = DELTA,
    n_boot: int = N_BOOT,
) -> list[Claim]:
    """``B.ranges.transition`` (seen tasks) and ``B.ranges.unseen_no_transition`` (unseen tasks), where
    the curves have such tasks (module docstring)."""
    part, estimator = _part(curves, estimator)
    n_blocks = _n_blocks(curves)
    out = []
    for seen, id in ((True, "B.ranges.transition"), (False, "B.ranges.unseen_no_transition")):
        group = part[part.seen == seen]
        if group.empty:
            continue
        n_tasks = group.task.nunique()
        if n_tasks < 2:
            raise ValueError(f"transition_claims: a bootstrap CI over {'seen' if seen else 'unseen'} tasks needs at "
                             f"least 2 tasks, got {n_tasks}")
        _, table = gap_ranges(group, delta=delta, estimator=estimator, n_boot=n_boot)
        estimate, note = _count_estimate(table, delta, n_tasks)
        words = "seen" if seen else "unseen"
        out.append(make_claim(
            id, paper="B",
            statement=("On tasks E was trained on, E is closer to the single-task controls than base is in some "
                       "blocks (a transition range, by the gap rule)") if seen else
                      ("On tasks E never saw, no block has E closer to the single-task controls than base "
                       "(no transition range)"),
            paper_value="layers 10-15 of 32 (Llama-2-7B)" if seen else "no transition range for unseen tasks",
            statistic=f"number of blocks (of {n_blocks}) whose mean {estimator} CKA gap E − base over {words} tasks "
                      f"has its 95% CI above {delta:g} ({note})",
            estimate=estimate, threshold=0.5, direction=">" if seen else "<", unit="tasks",
            scope=f"{words} tasks ({n_tasks})", notebook=NOTEBOOK, figure=FIGURE_GAP, profile=profile))
    return out


def beyond_format_claim(
    curves: pd.DataFrame, profile: Profile | str, estimator: str | None = None, delta: float = DELTA,
    n_boot: int = N_BOOT,
) -> tuple[Claim | None, str]:
    """``ours.layer_by_layer.beyond_format`` (module docstring), and a sentence saying on which blocks and
    tasks it was decided, or why it could not be."""
    part, estimator = _part(curves, estimator)
    seen = part[part.seen]
    if seen.empty:
        return None, "not testable: no seen tasks"
    _, table = gap_ranges(seen, delta=delta, estimator=estimator, n_boot=n_boot)
    closer = [int(b) + 1 for b in table.block[table.closer]]  # as layer indices
    if not closer:
        return None, "not testable: the gap rule finds no block where E is closer than base on seen tasks"
    e, cross = _per_task(seen, "E"), _per_task(seen, "cross")
    tasks = [t for t in cross.index if t in e.index]
    if len(tasks) < 2:
        return None, (f"not testable: {len(tasks)} seen task(s) with cross-task controls; the CI over tasks needs "
                      "at least 2")
    diff = (e.loc[tasks, closer] - cross.loc[tasks, closer]).mean(axis=1).dropna()
    _need_tasks(diff.to_numpy(), "beyond_format_claim")
    blocks = f"blocks {block_list(closer)}"
    claim = make_claim(
        "ours.layer_by_layer.beyond_format", paper="ours",
        statement="Where E is closer to the controls than base is, it is closer to C_t than other tasks' controls "
                  "C_u are: what E shares with C_t is task-specific, not the answer format",
        paper_value="-",
        statistic=f"mean over seen tasks of the mean {estimator} [CKA(E, C_t) − mean_u CKA(C_u, C_t)] over the "
                  f"closer {blocks}", estimate=bootstrap_ci(diff.to_numpy(), n_boot=n_boot), threshold=0.0,
        direction=">", unit="tasks", scope=f"seen tasks with cross-task controls ({len(diff)})", notebook=NOTEBOOK,
        figure=FIGURE_CURVES, profile=profile)
    return claim, f"decided on {blocks} and the seen tasks {list(diff.index)}"


def layer_claims(
    curves: pd.DataFrame, profile: Profile | str, estimator: str | None = None, n_boot: int = N_BOOT,
) -> tuple[list[Claim], list[str]]:
    """Every claim of notebook 07 that the curves can decide, and notes on those they cannot."""
    claims = [early_similarity_claim(curves, profile, estimator, n_boot=n_boot),
              *transition_claims(curves, profile, estimator, n_boot=n_boot)]
    beyond, note = beyond_format_claim(curves, profile, estimator, n_boot=n_boot)
    notes = [f"ours.layer_by_layer.beyond_format: {note}"]
    if beyond is not None:
        claims.append(beyond)
    return claims, notes
