"""Select task-specific neurons from relevance scores (Paper A's detection step, after attribution).

``select_neurons`` takes the top k fraction of neurons by score (globally or per layer);
``specificity_scores`` and ``select_specific_neurons`` contrast a task's relevance with the other
tasks' before selecting, so neurons every task needs are not called task-specific.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from nrnlib.neurons import NeuronSet

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

SCOPES = ("global", "layer")
SPECIFICITY_METHODS = ("zscore", "ratio", "rank")


def _check_k(k: float) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k is the fraction of neurons to select and must be in (0, 1], got {k!r}")


def _top(values: Float[Tensor, " n"], n: int) -> Tensor:
    """Indices of the n largest values; ties broken by the lower index (stable sort)."""
    return torch.argsort(values, descending=True, stable=True)[:n]


def select_neurons(
    scores: Float[Tensor, "n_layers d_mlp"], k: float = 0.10, scope: str = "global", name: str = "",
    model: TransformerBridge | str | None = None,
) -> NeuronSet:
    """The top ``k`` fraction of neurons by score (Paper A: k = 10%).

    ``scope="global"`` (default; the paper does not say, and a global cut lets layers differ in how
    many task neurons they hold): ``round(k · n_layers · d_mlp)`` neurons over all layers.
    ``scope="layer"``: ``round(k · d_mlp)`` neurons in every layer. At least one neuron is taken.
    Ties go to the lower (layer, neuron) index, so the result is deterministic. ``model`` (the model
    the scores were computed on, or its ``model_identity``) is recorded in the set, so ``deactivate``
    and ``finetune`` refuse it on another model.
    """
    _check_k(k)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise ValueError(f"scores must be a [n_layers, d_mlp] tensor, got {getattr(scores, 'shape', type(scores))}")
    scores = scores.detach().float().cpu()
    if not bool(torch.isfinite(scores).all()):  # +inf would be selected first, NaN anywhere
        bad = (~torch.isfinite(scores)).nonzero()
        raise ValueError(f"scores contain {len(bad)} non-finite values (NaN or inf), e.g. at [layer, neuron] "
                         f"{bad[0].tolist()}: recompute them (a diverged model?) before selecting neurons")
    n_layers, d_mlp = scores.shape
    mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    if scope == "global":
        n = max(1, round(k * scores.numel()))
        mask.view(-1)[_top(scores.flatten(), n)] = True
    else:
        n = max(1, round(k * d_mlp))
        for layer in range(n_layers):
            mask[layer, _top(scores[layer], n)] = True
    return NeuronSet(mask, name=name, metadata={"k": repr(float(k)), "scope": scope}).for_model(model)


def _stack_tasks(scores_by_task: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
    if not isinstance(scores_by_task, Mapping) or len(scores_by_task) < 2:
        raise ValueError("specificity needs scores for at least two tasks: {task_name: scores}")
    names = list(scores_by_task)
    shapes = {tuple(scores_by_task[n].shape) for n in names}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"all tasks' scores must share one [n_layers, d_mlp] shape, got {sorted(shapes)}")
    stacked = torch.stack([scores_by_task[n].detach().double().cpu() for n in names])
    if bool((stacked < 0).any()):
        raise ValueError("relevance scores must be non-negative")
    return names, stacked


def specificity_scores(
    scores_by_task: Mapping[str, Tensor], method: str = "zscore", eps: float = 1e-6
) -> dict[str, Float[Tensor, "n_layers d_mlp"]]:
    """How much more relevant each neuron is to each task than to the others (larger = more specific).

    Let N = n_layers·d_mlp and ``q_t = N · s_t / Σ s_t`` (task t's relevance as a distribution over
    neurons, scaled to mean 1, so tasks with larger losses do not dominate). For task t, with
    ``others = {u ≠ t}``:

    - ``"zscore"``: ``(q_t − mean_others q_u) / (std_all q_u + eps)``, std over all tasks (t
      included, population std);
    - ``"ratio"``: ``log(q_t + eps) − log(mean_others q_u + eps)``;
    - ``"rank"``: ``r_t − mean_others r_u``, r_u = ordinal rank of the neuron among all N by s_u
      (0 = least relevant, N−1 = most; ties by index).

    Needs two or more tasks with scores of one shape; returns fp32 tensors keyed like the input.
    """
    if method not in SPECIFICITY_METHODS:
        raise ValueError(f"method must be one of {SPECIFICITY_METHODS}, got {method!r}")
    names, s = _stack_tasks(scores_by_task)  # [T, L, D]
    n_tasks = len(names)
    if method == "rank":
        flat = s.flatten(1)
        order = torch.argsort(flat, dim=1, stable=True)
        ranks = torch.empty_like(flat)
        ranks.scatter_(1, order, torch.arange(flat.shape[1], dtype=flat.dtype).expand_as(flat).contiguous())
        values = ranks.view_as(s)
    else:
        totals = s.flatten(1).sum(1).clamp_min(torch.finfo(torch.float64).tiny)
        values = s / totals[:, None, None] * s[0].numel()
    out = {}
    for t, name in enumerate(names):
        others = values[[u for u in range(n_tasks) if u != t]].mean(0)
        if method == "zscore":
            spec = (values[t] - others) / (values.std(0, unbiased=False) + eps)
        elif method == "ratio":
            spec = torch.log(values[t] + eps) - torch.log(others + eps)
        else:
            spec = values[t] - others
        out[name] = spec.float()
    return out


def select_specific_neurons(
    scores_by_task: Mapping[str, Tensor],
    task: str,
    k: float = 0.10,
    method: str = "zscore",
    scope: str = "global",
    model: TransformerBridge | str | None = None,
) -> NeuronSet:
    """Top ``k`` neurons of ``task`` by ``specificity_scores(scores_by_task, method)`` (``model`` as
    in ``select_neurons``)."""
    if task not in scores_by_task:
        raise KeyError(f"task {task!r} not among {list(scores_by_task)}")
    spec = specificity_scores(scores_by_task, method)[task]
    selected = select_neurons(spec, k=k, scope=scope, name=f"{task}-specific", model=model)
    selected.metadata.update({"method": method, "task": task, "tasks": ",".join(scores_by_task)})
    return selected
