"""What notebook 06 (NCFT, Paper A Table 3) does around the runner: its learning rates
(``ncft_learning_rates``), the performance matrix ``R`` of a sequence, its continual metrics
(``nrnlib.continual``) with CIs over sequences, and the claims through ``nrnlib.claims`` (every rule
fixed here before the run; each compares two methods paired by (order, seed), the units of the
bootstrap). Kept apart from the runner ``experiments.ncft``, whose code keys the cached stages
(``store.code_digest``), so editing a reading never invalidates one."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nrnlib.claims import Claim, bootstrap_ci, make_claim
from nrnlib.continual import average_performance, backward_transfer, continual_metrics
from nrnlib.experiments.measures import DECODED_METRIC
from nrnlib.experiments.ncft import Selector, select_learning_rates
from nrnlib.profiles import Profile
from nrnlib.protocol import Protocol
from nrnlib.tasks import get_task

# W-NCFT is the graded variant (``weighted_update``); the 0/1 ``w_ncft`` is ours
PAPER_IDS = {("ncft", "seqft"): "A.ncft.forgetting", ("w_ncft_graded", "seqft"): "A.ncft.weighted"}
# beyond "each method against seqft": NCFT against the other baselines, and W-NCFT against NCFT
COMPARISONS = (("ncft", "random"), ("ncft", "lora"), ("ncft", "replay"), ("w_ncft", "ncft"),
               ("w_ncft_graded", "ncft"))


def ncft_learning_rates(model, task: str, protocol: Protocol, arm_types: Sequence[str], *, selector: Selector,
                   settings: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """``ncft.select_learning_rates`` for the arm types whose grid has several values; a one-value
    grid is that lr, with no selection run (``scores`` empty): nothing to choose, and its run would
    not be reused (a stage's cache key is not an arm's). ``{arm_type: {"lr", "scores"}}`` in
    ``arm_types`` order."""
    chosen = select_learning_rates(model, task, protocol, [t for t in arm_types if len(protocol.grid(t)) > 1],
                                   selector=selector, settings=settings)
    return {t: chosen[t] if t in chosen else {"lr": protocol.grid(t)[0], "scores": {}} for t in arm_types}


def _key(task: str, metric: str) -> str:
    """The per-example key of ``metric`` for ``task`` ("decoded": by the task's category)."""
    return DECODED_METRIC[get_task(task).category] if metric == "decoded" else metric


def performance_matrix(sequence: Mapping[str, Any], metric: str = "logprob") -> np.ndarray:
    """``R`` ([T + 1, T]): row 0 the untrained model's mean ``metric`` per task of the order, row n + 1
    after stage n; ``metric="decoded"``: calibrated accuracy or ROUGE-L by the task's category."""
    order = sequence["order"]

    keys = {t: _key(t, metric) for t in order}

    def mean(scores: Mapping[str, Any], task: str) -> float:
        return float(np.mean(scores[task]["per_example"][keys[task]]))

    rows = [[mean(sequence["untrained"], t) for t in order]]
    rows += [[mean(record["scores"], t) for t in order] for record in sequence["stages"]]
    return np.asarray(rows)


def sequence_metrics(sequence: Mapping[str, Any], metric: str = "logprob") -> dict[str, float]:
    """AP, BWT, FWT and mean forgetting (``continual.continual_metrics``) of one sequence."""
    return continual_metrics(performance_matrix(sequence, metric))


def metrics_table(sequences: Sequence[Mapping[str, Any]], metric: str = "logprob",
                  joint: Sequence[Mapping[str, Any]] = ()) -> pd.DataFrame:
    """Per method and continual metric (AP, BWT, FWT, forgetting): the mean over the (order, seed)
    sequences with its bootstrap 95% CI over them (``claims.bootstrap_ci``; a single sequence gives
    the value as both ends); ``joint`` references add an AP row (method "joint", units = seeds)."""
    rows = [{"method": s["method"], **sequence_metrics(s, metric)} for s in sequences]
    rows += [{"method": "joint", "AP": float(np.mean(joint_performance(j, j["tasks"], metric)))} for j in joint]
    frame = pd.DataFrame(rows)
    out = []
    for method, group in frame.groupby("method", sort=False):
        for name in ("AP", "BWT", "FWT", "forgetting"):
            values = group[name].dropna().to_numpy() if name in group else np.array([])
            if len(values) >= 2:
                e = bootstrap_ci(values)
                out.append({"method": method, "metric": name, "mean": e.estimate, "ci_low": e.ci_low,
                            "ci_high": e.ci_high, "n": len(values)})
            elif len(values) == 1:  # one sequence: no interval
                out.append({"method": method, "metric": name, "mean": float(values[0]), "ci_low": float(values[0]),
                            "ci_high": float(values[0]), "n": 1})
    return pd.DataFrame(out)


def joint_performance(reference: Mapping[str, Any], order: Sequence[str], metric: str = "logprob") -> np.ndarray:
    """The joint reference's mean ``metric`` per task, in ``order`` (compare with ``R[T]``)."""
    return np.asarray([float(np.mean(reference["scores"][t]["per_example"][_key(t, metric)])) for t in order])


def current_task(r: np.ndarray) -> float:
    """Mean over stages of ``R[n+1, n]``, the score on the task just trained."""
    return float(np.mean([r[n + 1, n] for n in range(r.shape[1])]))


def _paired(by: Mapping, method: str, reference: str, statistic: Callable[[np.ndarray], float]) -> np.ndarray:
    pairs = sorted({(o, seed) for (_, o, seed) in by})
    return np.array([statistic(by[(method, o, s)]) - statistic(by[(reference, o, s)]) for o, s in pairs
                     if (method, o, s) in by and (reference, o, s) in by])


def ncft_claims(sequences: Sequence[Mapping], profile: Profile | str, *, metric: str = "logprob") -> list[Claim]:
    """Table 3's verdicts from ``ncft.run_sequence`` results, paired by (order, seed), each with a
    bootstrap CI over the pairs (at least two needed):

    - for each method m ≠ seqft: ``BWT(m) − BWT(seqft) > 0`` (m forgets less; ids
      ``A.ncft.forgetting`` for ncft, ``A.ncft.weighted`` for w_ncft_graded, ``ours.ncft.<m>_vs_seqft``
      otherwise), the cost ``current(m) − current(seqft) > 0`` (``current``: mean over stages of
      ``R[n+1, n]``; ``ours.ncft.<m>_current_task``) and ``AP(m) − AP(seqft) > 0``
      (``ours.ncft.<m>_ap``: forgetting less must not come from learning less);
    - ``BWT(m) − BWT(ref) > 0`` for the pairs of ``COMPARISONS`` present (``ours.ncft.<m>_vs_<ref>``).

    Ids end in ``.<metric>`` for any metric but the log-prob (e.g. ``A.ncft.forgetting.decoded``).
    """
    by = {(s["method"], tuple(s["order"]), s["seed"]): performance_matrix(s, metric) for s in sequences}
    methods = list(dict.fromkeys(m for (m, _, _) in by))
    common = dict(notebook="06_ncft_continual", figure="06_table3", profile=profile, threshold=0.0, direction=">",
                  unit="(order, seed) pairs")
    out: list[Claim] = []
    suffix = "" if metric == "logprob" else f".{metric}"

    def add(claim_id: str, values: np.ndarray, statement: str, statistic: str, scope: str,
            paper_value: str = "-") -> None:
        if len(values) >= 2:
            out.append(make_claim(claim_id + suffix, paper="A" if claim_id.startswith("A.") else "ours",
                                  paper_value=paper_value, statement=statement, statistic=statistic,
                                  estimate=bootstrap_ci(values), scope=scope, **common))

    for m in methods:
        if m == "seqft":
            continue
        paper_id = PAPER_IDS.get((m, "seqft"))
        add(paper_id or f"ours.ncft.{m}_vs_seqft", _paired(by, m, "seqft", backward_transfer),
            f"{m} forgets less than sequential full fine-tuning",
            f"BWT({m}) - BWT(seqft) on the {metric}, paired by order and seed", m,
            "Table 3: NCFT significantly outperforms the baseline" if paper_id else "-")
        add(f"ours.ncft.{m}_current_task", _paired(by, m, "seqft", current_task),
            f"{m} learns the task being trained as well as sequential full fine-tuning",
            f"mean over stages of R[n+1, n]({m}) - R[n+1, n](seqft), paired", m)
        add(f"ours.ncft.{m}_ap", _paired(by, m, "seqft", average_performance),
            f"{m} ends with a higher average performance than sequential full fine-tuning",
            f"AP({m}) - AP(seqft) on the {metric}, paired", m)
    for m, ref in COMPARISONS:
        if m in methods and ref in methods:
            add(f"ours.ncft.{m}_vs_{ref}", _paired(by, m, ref, backward_transfer),
                f"{m} forgets less than {ref}", f"BWT({m}) - BWT({ref}) on the {metric}, paired by order and seed",
                f"{m} vs {ref}")
    return out
