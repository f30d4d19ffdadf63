"""Notebook 07's verdicts (``nrnlib.experiments.layer_verdicts``) on synthetic CKA curves whose answer
is known: tables built by hand, one row per task, model, estimator and layer (0 = embedding)."""

import numpy as np
import pandas as pd
import pytest

from nrnlib.experiments import layer_verdicts as V

N_BLOCKS = 8  # Paper B's early range (layers 1-9 of 32) rescales to blocks 0-1 (layers 1 and 2) of 8
NOISE = {"a": -0.01, "b": 0.0, "c": 0.01}


def _rows(task, seen, model, values, estimator="linear", other=""):
    rows = [{"task": task, "seen": seen, "model": model, "other": other, "estimator": estimator, "layer": 0,
             "cka": float("nan")}]
    rows += [{"task": task, "seen": seen, "model": model, "other": other, "estimator": estimator, "layer": i + 1,
              "cka": float(v)} for i, v in enumerate(values)]
    return rows


def _table(base, e, seen=True, cross=None, estimator="linear"):
    """Curves of the tasks in ``base`` / ``e`` (task -> values per block); ``cross``: task -> list of
    curves of other tasks' controls read on it."""
    rows = []
    for task in base:
        rows += _rows(task, seen, "base", base[task], estimator)
        rows += _rows(task, seen, "E", e[task], estimator)
        for j, values in enumerate((cross or {}).get(task, [])):
            rows += _rows(task, seen, "cross", values, estimator, other=f"u{j}")
    return pd.DataFrame(rows)


def _gap_tasks(gap_by_block, base_level=0.8, seen=True):
    """Three tasks with base at ``base_level`` and E = base + gap(block) + the task's small noise."""
    base = {t: [base_level] * N_BLOCKS for t in NOISE}
    e = {t: [base_level + gap_by_block(i) + NOISE[t] for i in range(N_BLOCKS)] for t in NOISE}
    return _table(base, e, seen=seen)


def _one(claims, id):
    (claim,) = [c for c in claims if c.id == id]
    return claim


def test_early_blocks_are_paper_b_shared_range_rescaled():
    assert V.early_blocks(32) == (0, 9) and V.early_blocks(N_BLOCKS) == (0, 2) and V.early_blocks(30) == (0, 8)
    assert V.block_list([1, 2, 3, 6, 10, 11]) == "1-3, 6, 10-11" and V.block_list([5]) == "5"


def test_early_similarity_by_hand():
    """Per task the mean of base's CKA over layers 1-2 (the early blocks of 8): a 0.96, b 0.93, c 0.98;
    later blocks (0.1) must not enter. Mean 0.9567; the CI over three tasks lies in [0.93, 0.98], so
    > 0.90 holds, > 0.97 is inconclusive and > 0.99 does not hold."""
    early = {"a": [0.95, 0.97], "b": [0.92, 0.94], "c": [0.99, 0.97]}
    base = {t: v + [0.1] * (N_BLOCKS - 2) for t, v in early.items()}
    curves = _table(base, base)
    claim = V.early_similarity_claim(curves, "smoke")
    assert claim.id == "B.pretrained.early_similarity" and claim.paper == "B" and claim.n == 3
    assert claim.estimate == pytest.approx((0.96 + 0.93 + 0.98) / 3)
    assert 0.93 - 1e-12 <= claim.ci_low <= claim.estimate <= claim.ci_high <= 0.98 + 1e-12
    assert claim.verdict == "holds" and claim.threshold == V.EARLY_LEVEL == 0.90
    assert V.early_similarity_claim(curves, "smoke", level=0.97).verdict == "inconclusive"
    assert V.early_similarity_claim(curves, "smoke", level=0.99).verdict == "does not hold"


def test_transition_holds_on_seen_and_unseen_mirrors_it():
    """Seen tasks: gap 0.2 on blocks 3-5, −0.1 elsewhere (noise ±0.01): 3 closer blocks, none undecided:
    holds. Unseen tasks with gap −0.1 everywhere: no block can be closer: 'no transition' holds."""
    seen = _gap_tasks(lambda i: 0.2 if 3 <= i <= 5 else -0.1)
    unseen = _gap_tasks(lambda i: -0.1, seen=False)
    unseen["task"] = unseen.task + "_unseen"
    claims = V.transition_claims(pd.concat([seen, unseen]), "smoke")
    transition = _one(claims, "B.ranges.transition")
    assert (transition.estimate, transition.ci_low, transition.ci_high) == (3, 3, 3)
    assert transition.verdict == "holds" and transition.direction == ">" and transition.threshold == 0.5
    assert "block 4" in transition.statistic  # blocks 3-5 (0-based) tie on the lower bound: the first is named
    none = _one(claims, "B.ranges.unseen_no_transition")
    assert (none.estimate, none.ci_low, none.ci_high) == (0, 0, 0)
    assert none.verdict == "holds" and none.direction == "<"


def test_transition_does_not_hold_and_undecided_blocks_are_inconclusive():
    """Seen gap −0.1 everywhere: every CI below 0: does not hold. Unseen: a block whose gaps are
    −0.01, 0, 0.01 (CI around 0) makes 'no transition' inconclusive; a block at +0.2 makes it fail."""
    below = _gap_tasks(lambda i: -0.1)
    assert _one(V.transition_claims(below, "smoke"), "B.ranges.transition").verdict == "does not hold"
    around = _gap_tasks(lambda i: 0.0 if i == 2 else -0.1, seen=False)
    claim = _one(V.transition_claims(around, "smoke"), "B.ranges.unseen_no_transition")
    assert (claim.estimate, claim.ci_low, claim.ci_high) == (0, 0, 1) and claim.verdict == "inconclusive"
    above = _gap_tasks(lambda i: 0.2 if i == 6 else -0.1, seen=False)
    claim = _one(V.transition_claims(above, "smoke"), "B.ranges.unseen_no_transition")
    assert claim.estimate == 1 and claim.verdict == "does not hold" and "block 7" in claim.statistic
    seen_around = _gap_tasks(lambda i: 0.0 if i == 2 else -0.1)
    assert _one(V.transition_claims(seen_around, "smoke"), "B.ranges.transition").verdict == "inconclusive"


def test_beyond_format_by_hand():
    """Closer blocks 3-5 (0-based; layers 4-6). On them E − mean_u C_u is 0.10 (a), 0.12 (b), 0.08 (c):
    the two cross-task curves of each task sit at E − d − 0.05 and E − d + 0.05. Outside them cross is
    far above E (must not count). Estimate 0.10, CI within [0.08, 0.12]: holds."""
    gap = {i: 0.2 if 3 <= i <= 5 else -0.1 for i in range(N_BLOCKS)}
    base = {t: [0.7] * N_BLOCKS for t in NOISE}
    e = {t: [0.7 + gap[i] + NOISE[t] for i in range(N_BLOCKS)] for t in NOISE}
    d = {"a": 0.10, "b": 0.12, "c": 0.08}
    cross = {t: [[e[t][i] - (d[t] + s if 3 <= i <= 5 else -0.5) for i in range(N_BLOCKS)] for s in (-0.05, 0.05)]
             for t in NOISE}
    claim, note = V.beyond_format_claim(_table(base, e, cross=cross), "smoke")
    assert claim.id == "ours.layer_by_layer.beyond_format" and claim.paper == "ours" and claim.n == 3
    assert claim.estimate == pytest.approx(0.10)
    assert 0.08 - 1e-12 <= claim.ci_low and claim.ci_high <= 0.12 + 1e-12 and claim.verdict == "holds"
    assert "blocks 4-6" in claim.statistic and "blocks 4-6" in note
    flipped = {t: [[2 * e[t][i] - v for i, v in enumerate(c)] for c in cs] for t, cs in cross.items()}
    assert V.beyond_format_claim(_table(base, e, cross=flipped), "smoke")[0].verdict == "does not hold"


def test_beyond_format_is_not_testable_without_closer_blocks_or_cross_controls():
    base = {t: [0.7] * N_BLOCKS for t in NOISE}
    flat = {t: [0.7 - 0.1 + NOISE[t]] * N_BLOCKS for t in NOISE}
    claim, note = V.beyond_format_claim(_table(base, flat, cross={t: [[0.5] * N_BLOCKS] for t in NOISE}), "smoke")
    assert claim is None and "no block" in note
    up = {t: [0.9 + NOISE[t]] * N_BLOCKS for t in NOISE}
    claim, note = V.beyond_format_claim(_table(base, up, cross={"a": [[0.5] * N_BLOCKS]}), "smoke")
    assert claim is None and "1 seen task" in note


def test_verdicts_read_the_primary_estimator():
    """Linear rows say 'transition' and 'high early similarity'; the debiased rows, marked primary, say
    the opposite: the claims follow the debiased rows."""
    linear = _gap_tasks(lambda i: 0.2, base_level=0.95).assign(primary=False)
    debiased = _gap_tasks(lambda i: -0.1, base_level=0.5).assign(estimator="debiased", primary=True)
    curves = pd.concat([linear, debiased], ignore_index=True)
    claims, notes = V.layer_claims(curves, "smoke")
    assert {c.id for c in claims} == {"B.pretrained.early_similarity", "B.ranges.transition"}
    assert _one(claims, "B.ranges.transition").verdict == "does not hold"
    assert _one(claims, "B.pretrained.early_similarity").verdict == "does not hold"
    assert all("debiased" in c.statistic for c in claims) and "not testable" in notes[0]
    forced = V.layer_claims(curves, "smoke", estimator="linear")[0]
    assert _one(forced, "B.ranges.transition").verdict == "holds"


def test_layer_claims_ids_match_the_scorecard():
    from nrnlib.scorecard import CATALOGUE

    gap = {i: 0.2 if 3 <= i <= 5 else -0.1 for i in range(N_BLOCKS)}
    base = {t: [0.95] * N_BLOCKS for t in NOISE}
    e = {t: [0.95 + gap[i] + NOISE[t] for i in range(N_BLOCKS)] for t in NOISE}
    cross = {t: [[v - 0.1 for v in e[t]]] for t in NOISE}
    seen = _table(base, e, cross=cross)
    unseen = _table({f"{t}2": v for t, v in base.items()}, {f"{t}2": v for t, v in base.items()}, seen=False)
    claims, _ = V.layer_claims(pd.concat([seen, unseen], ignore_index=True), "smoke")
    ids = {c.id for c in claims}
    assert ids == {"B.pretrained.early_similarity", "B.ranges.transition", "B.ranges.unseen_no_transition",
                   "ours.layer_by_layer.beyond_format"}
    catalogue = {e.id: e for e in CATALOGUE}
    for c in claims:
        assert c.id in catalogue and catalogue[c.id].notebook == c.notebook and catalogue[c.id].figure == c.figure


def test_bad_inputs_name_the_problem():
    one = _gap_tasks(lambda i: 0.2)
    one = one[one.task == "a"]
    with pytest.raises(ValueError, match="at least 2 tasks"):
        V.transition_claims(one, "smoke")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        V.early_similarity_claim(one, "smoke")
    with pytest.raises(ValueError, match="columns"):
        V.early_similarity_claim(pd.DataFrame({"x": [1]}), "smoke")
    with pytest.raises(ValueError, match="no CKA values"):
        V.transition_claims(_gap_tasks(lambda i: 0.2), "smoke", estimator="rbf")
    assert np.isfinite(V.DELTA)
