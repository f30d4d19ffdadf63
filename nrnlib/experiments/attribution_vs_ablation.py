"""Notebook 01's check that attribution predicts ablation: does a neuron's relevance score say how much
the loss moves when that neuron alone is silenced?

For neuron j of layer l with output ω (``blocks.{l}.mlp.hook_post``), example b with loss
``L_b`` (``losses.per_example_loss``: mean cross-entropy over b's answer tokens), gradient
``g = ∂L_b/∂ω`` and activation ``a = ω`` at every position p of b:

- **first-order estimate** (what ``attribute`` computes, ``aggregation="signed_sum"``): zeroing the
  neuron at every position changes ``L_b`` by ``ΔL_b ≈ Σ_p g_p · (0 − a_p) = −Σ_p g_p a_p``, and the
  relevance is the summed absolute estimate ``R_lj = Σ_b |Σ_p g_p a_p|`` (absolute per example, as
  in Paper A);
- **measured effect**: the same neuron zeroed by ``deactivate`` (a one-neuron ``NeuronSet``,
  activation mode, every position), the same loss on the same examples:
  ``M_lj = Σ_b |L_b(ablated) − L_b(intact)|``, the exact quantity ``R`` estimates to first order.
  ``Σ_b (L_b(ablated) − L_b(intact))`` (signed, positive = the neuron helped) is reported beside it.

Neurons are drawn across the whole relevance range: the ``N = n_layers × d_mlp`` neurons ranked by
``R`` (rank 0 = most relevant) are cut into ``n_neurons`` strata, and one neuron is drawn per stratum
(``numpy.random.default_rng(seed)``). With ``spacing="log"`` (default) the stratum edges are
``e_i = max(e_{i−1} + 1, round(N^{i/n}))``: the top ranks (where the top-k% sets live) are sampled
densely, the tail sparsely; ``"linear"`` gives equal-width strata ``e_i = round(i·N/n)``.

The verdict statistic is Spearman's ρ between ``R`` and ``M`` over the drawn neurons, with a
percentile-bootstrap 95% CI over neurons (``claims.correlation_ci``). Every measured neuron is a
cache entry (model fingerprint, task digest of the examples, layer and neuron, code digest), so an
interrupted run resumes at the next neuron.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib import encoding, losses, store
from nrnlib.ablation import deactivate
from nrnlib.attribution import _examples, attribute
from nrnlib.checks import check_int
from nrnlib.claims import Estimate, correlation_ci
from nrnlib.model_state import eval_mode, model_fingerprint
from nrnlib.neurons import NeuronSet
from nrnlib.tasks import as_task

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

    from nrnlib.profiles import Profile
    from nrnlib.tasks import Task

SPACINGS = ("log", "linear")
# aggregations whose score is a first-order estimate of zeroing the neuron at every position
AGGREGATIONS = ("signed_sum", "abs_sum")
# the code whose change invalidates cached measurements (nrnlib.store.code_digest)
CHECK_CODE = ("experiments.attribution_vs_ablation", "ablation", "losses", "encoding", "neurons")


@dataclass(frozen=True)
class AblationCheck:
    """One task's check: ``table`` (one row per drawn neuron: task, layer, neuron, rank, stratum,
    relevance, measured_abs, measured_signed, n_examples) and ``spearman``, Spearman's ρ between
    relevance and measured_abs with its bootstrap 95% CI over the neurons."""

    table: pd.DataFrame
    spearman: Estimate


def stratum_edges(n_total: int, n_strata: int, spacing: str = "log") -> Int[np.ndarray, " edges"]:
    """``n_strata + 1`` strictly increasing rank edges from 0 to ``n_total`` (see the module docstring):
    stratum i holds ranks ``[e_i, e_{i+1})``."""
    n_total = check_int(n_total, "n_total", minimum=1, where="stratum_edges")
    n_strata = check_int(n_strata, "n_strata", minimum=1, where="stratum_edges")
    if n_strata > n_total:
        raise ValueError(f"stratum_edges: {n_strata} strata need at least as many ranks, got {n_total}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    edges = [0]
    for i in range(1, n_strata):
        target = n_total ** (i / n_strata) if spacing == "log" else i * n_total / n_strata
        # at least one rank per stratum, and room left for the strata after this one
        edges.append(min(max(edges[-1] + 1, round(target)), n_total - (n_strata - i)))
    edges.append(n_total)
    return np.asarray(edges, dtype=np.int64)


def draw_neurons(
    scores: Float[Tensor, "n_layers d_mlp"], n_neurons: int = 50, spacing: str = "log", seed: int = 0,
) -> pd.DataFrame:
    """One neuron per rank stratum of ``scores`` (descending, ties broken by flat index): a table of
    layer, neuron, rank (0 = most relevant), stratum and relevance, sorted by rank."""
    flat = scores.detach().double().flatten().cpu()
    order = torch.argsort(-flat, stable=True)
    edges = stratum_edges(len(flat), n_neurons, spacing)
    rng = np.random.default_rng(seed)
    d_mlp = scores.shape[1]
    rows = []
    for stratum, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        rank = int(rng.integers(lo, hi))
        index = int(order[rank])
        rows.append({"layer": index // d_mlp, "neuron": index % d_mlp, "rank": rank, "stratum": stratum,
                     "relevance": float(flat[index])})
    return pd.DataFrame(rows)


@torch.no_grad()
def per_example_losses(
    model, task: Task, examples: Sequence[dict], batch_size: int, neurons: NeuronSet | None = None,
) -> Float[Tensor, " n"]:
    """``L_b`` for every example (``losses.per_example_loss``), with ``neurons`` zeroed at every
    position through ``deactivate`` (activation mode) when given; float64 on CPU. Each batch's
    common prompt prefix runs once (``losses.final_hidden``; the zeroing hook fires on it too)."""
    device = next(iter(model.parameters())).device
    out = []
    with eval_mode(model):
        with deactivate(model, neurons) if neurons is not None else contextlib.nullcontext():
            for batch in encoding.batches(model, task, examples, batch_size):
                out.append(losses.per_example_loss(model, batch.to(device), share_prefix=True).double().cpu())
    return torch.cat(out)


def _one_neuron(model, layer: int, neuron: int) -> NeuronSet:
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    return NeuronSet.from_indices(n_layers, d_mlp, {layer: [neuron]}, name=f"L{layer}N{neuron}").for_model(model)


def ablation_check(
    model: TransformerBridge,
    task: Task | str,
    n_examples: int = 64,
    n_neurons: int = 50,
    split: str = "train",
    start: int = 0,
    batch_size: int = 8,
    aggregation: str = "signed_sum",
    spacing: str = "log",
    seed: int = 0,
    scores: Float[Tensor, "n_layers d_mlp"] | None = None,
    progress: bool = True,
) -> AblationCheck:
    """Relevance (``attribute`` on ``n_examples`` examples of ``split`` from ``start``) against the
    measured loss change when each of ``n_neurons`` neurons, drawn across the relevance range, is
    zeroed alone on the same examples (see the module docstring for the formulas and the draw).

    ``aggregation``: ``"signed_sum"`` (default; ``R`` is then exactly the first-order estimate of
    ``M``) or ``"abs_sum"`` (``Σ_b Σ_p |g a|``, an upper bound of that estimate). ``"answer_positions"``
    is refused: it estimates zeroing at the answer-predicting positions only, not what ``deactivate``
    does. ``scores`` may be passed when they were computed already (they must be ``attribute``'s on the
    same examples). Measurements are cached per neuron.
    """
    task = as_task(task)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"ablation_check: aggregation must be one of {AGGREGATIONS} (a first-order estimate of "
                         f"zeroing the neuron at every position), got {aggregation!r}")
    n_neurons = check_int(n_neurons, "n_neurons", minimum=8, where="ablation_check")  # a bootstrap CI needs them
    batch_size = check_int(batch_size, "batch_size", minimum=1, where="ablation_check")
    examples = _examples(task, split, n_examples, start)
    if scores is None:
        scores = attribute(model, task, n_examples=n_examples, split=split, batch_size=batch_size,
                           aggregation=aggregation, start=start, progress=False)
    drawn = draw_neurons(scores, n_neurons, spacing, seed)
    fp = model_fingerprint(model)
    digests = {task.name: task.digest(examples)}
    base = {"split": split, "start": start, "n_used": len(examples), "batch_size": batch_size,
            "dtype": str(next(iter(model.parameters())).dtype)}

    def measure(layer: int, neuron: int | None) -> list[float]:
        def compute() -> list[float]:
            neurons = None if layer < 0 else _one_neuron(model, layer, neuron)
            return per_example_losses(model, task, examples, batch_size, neurons).tolist()

        return store.cached("ablation_check", compute, settings={**base, "layer": layer, "neuron": neuron},
                            code=CHECK_CODE, model=model, fingerprint=fp, tasks=digests)

    intact = np.asarray(measure(-1, None))
    abs_change, signed_change = [], []
    for row in tqdm(drawn.itertuples(), total=len(drawn), desc=f"ablate {task.name}", disable=not progress,
                    leave=False):
        change = np.asarray(measure(int(row.layer), int(row.neuron))) - intact
        abs_change.append(float(np.abs(change).sum()))
        signed_change.append(float(change.sum()))
    table = drawn.assign(task=task.name, measured_abs=abs_change, measured_signed=signed_change,
                         n_examples=len(examples), aggregation=aggregation)
    table = table[["task", "layer", "neuron", "rank", "stratum", "relevance", "measured_abs", "measured_signed",
                   "n_examples", "aggregation"]]
    return AblationCheck(table, correlation_ci(table.relevance.to_numpy(), table.measured_abs.to_numpy()))


def ablation_check_table(
    model: TransformerBridge, profile: Profile, tasks: Sequence[Task | str], n_neurons: int = 50, spacing: str = "log",
    seed: int = 0, scores: Mapping[str, Tensor] | None = None, progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``ablation_check`` for each task on its first ``profile.n_attribution`` train examples
    (clipped to the task) at ``profile.batch_size``: the neurons' long table, and one row per task
    with Spearman's ρ [95% CI] and the number of neurons. ``scores``: notebook 01's relevance per task
    (``relevance_scores(relevance_chunks(...))``, the sum over chunks of those same examples), to
    reuse instead of attributing again."""
    tables, rows = [], []
    for name in tqdm(list(tasks), desc="attribution vs ablation", disable=not progress):
        task = as_task(name)
        n = profile.sizes(task).n_attribution
        check = ablation_check(model, task, n_examples=n, n_neurons=n_neurons, batch_size=profile.batch_size,
                               spacing=spacing, seed=seed, scores=None if scores is None else scores[task.name],
                               progress=False)
        tables.append(check.table)
        rows.append({"task": task.name, "spearman": check.spearman.estimate, "ci_low": check.spearman.ci_low,
                     "ci_high": check.spearman.ci_high, "n_neurons": check.spearman.n, "n_examples": n,
                     "method": check.spearman.method})
    return pd.concat(tables, ignore_index=True), pd.DataFrame(rows)
