"""Neuron relevance scores and task-specific neuron selection (Paper A's detection step).

Paper A scores neuron j of layer l by the first-order Taylor estimate of the loss change when its
output ω_lj is set to zero: ``R[l, j] = |∂L/∂ω_lj · ω_lj|``, where ω is the MLP hidden unit
(``blocks.{l}.mlp.hook_post``, the input of the down projection). The top k% neurons by R are the
task's "task-specific" neurons.

``attribute`` computes R for every layer with one forward and one backward per batch (gradients
with respect to the activations only, never the parameters). ``activation_scores`` is a
forward-only baseline (mean |ω|). ``select_neurons`` takes the top k; ``specificity_scores`` and
``select_specific_neurons`` contrast a task's relevance with the other tasks' before selecting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from einops import einsum, reduce
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib import encoding, losses
from nrnlib.encoding import EncodedBatch
from nrnlib.models import cache_dir, eval_mode, model_fingerprint, unique_parameters
from nrnlib.neurons import NeuronSet
from nrnlib.results import save_safetensors_atomic

AGGREGATIONS = ("signed_sum", "abs_sum", "answer_positions")
SCOPES = ("global", "layer")
SPECIFICITY_METHODS = ("zscore", "ratio", "rank")
# Bump when the way scores are computed changes, so old cache entries are not reused.
SCORES_VERSION = 1


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def per_example_loss(model, batch: EncodedBatch) -> Float[Tensor, " batch"]:
    """Mean cross-entropy over each example's answer tokens: ``L_b = -mean_t log p(y_bt | y_b<t, x_b)``.

    Attribution differentiates ``Σ_b L_b``, so an example's gradient never depends on the other
    examples of its batch (each example weighs the same, whatever its answer length).
    """
    n_answer = batch.target_mask.sum(dim=1)
    if bool((n_answer == 0).any()):
        raise ValueError("Every example needs at least one answer token: encode with with_answers=True")
    logp = losses.answer_token_logprobs(model, batch)  # in target_mask.nonzero() order
    rows = batch.target_mask.nonzero(as_tuple=True)[0]
    nll = torch.zeros(len(batch), dtype=logp.dtype, device=logp.device).index_add(0, rows, -logp)
    return nll / n_answer.to(nll.device, nll.dtype)


# --------------------------------------------------------------------------------------------
# Hooks and parameter freezing
# --------------------------------------------------------------------------------------------


def hook_post_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


@contextlib.contextmanager
def frozen_parameters(model) -> Iterator[None]:
    """Set ``requires_grad=False`` on every parameter; restore the flags on exit (also on error)."""
    params = unique_parameters(model)
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _embed_requires_grad(x: Tensor, hook=None) -> Tensor:
    """Embedding output as a grad-requiring leaf: the graph exists without parameter gradients."""
    if not x.requires_grad:
        x.requires_grad_()
    return x


# --------------------------------------------------------------------------------------------
# Examples and caching
# --------------------------------------------------------------------------------------------


def _examples(task, split: str, n_examples: int, start: int = 0) -> list[dict]:
    if not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an integer >= 0, got {start!r}")
    examples = list(task.split(split))
    if len(examples) <= start:
        raise ValueError(f"Task {task.name!r} has {len(examples)} {split!r} examples, none from index {start}")
    if len(examples) < start + n_examples:
        warnings.warn(
            f"Task {task.name!r} has only {len(examples) - start} {split!r} examples from index {start} "
            f"(asked for {n_examples}); using those.",
            stacklevel=3,
        )
    return examples[start: start + n_examples]


def _hash_examples(task, examples: Sequence[dict]) -> str:
    text = json.dumps(
        {
            "instruction": getattr(task, "instruction", None),
            "category": getattr(task, "category", None),
            "labels": list(getattr(task, "labels", ()) or ()),
            "examples": [[ex, task.target(ex)] for ex in examples],
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_key(model, task, examples, **fields) -> dict:
    return {
        "version": SCORES_VERSION,
        "model": model_fingerprint(model),
        "dtype": str(next(iter(model.parameters())).dtype),
        "task": task.name,
        "examples": _hash_examples(task, examples),
        "n_used": len(examples),
        **fields,
    }


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    safe_task = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key["task"]))[:60]
    return cache_dir() / "scores" / f"{key['kind']}-{safe_task}-{digest}.safetensors"


def _load_cached(path: Path, key: dict) -> Tensor | None:
    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != json.dumps(key, sort_keys=True):
                return None
            return f.get_tensor("scores")
    except Exception:  # unreadable cache entry: recompute (and overwrite it)
        return None


def _save_cached(path: Path, key: dict, scores: Tensor) -> None:
    save_safetensors_atomic(path, {"scores": scores}, {"key": json.dumps(key, sort_keys=True)})


def _cached(cache: bool, make_key: Callable[[], dict], compute: Callable[[], Tensor]) -> Tensor:
    """``compute()``, or its stored result under ``make_key()`` (the key, which reads all the
    weights once for their fingerprint, is only built when ``cache`` is on)."""
    if not cache:
        return compute()
    key = make_key()
    path = _cache_path(key)
    hit = _load_cached(path, key)
    if hit is not None:
        return hit
    scores = compute()
    _save_cached(path, key, scores)
    return scores


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


def _prediction_positions(batch: EncodedBatch) -> Bool[Tensor, "batch seq"]:
    """Positions whose logits predict an answer token: ``t - 1`` for every answer token ``t``."""
    pred = torch.zeros_like(batch.target_mask)
    pred[:, :-1] = batch.target_mask[:, 1:]
    return pred


def _aggregate(
    grad: Float[Tensor, "batch seq d_mlp"],
    act: Float[Tensor, "batch seq d_mlp"],
    batch: EncodedBatch,
    aggregation: str,
) -> Float[Tensor, " d_mlp"]:
    """Sum over the batch's examples of the per-example relevance of each neuron (float64)."""
    ga = grad.detach().float() * act.detach().float()
    if aggregation == "signed_sum":  # |Σ_pos g·a|: first-order loss change of zeroing the neuron everywhere
        per_example = einsum(ga, batch.attention_mask.to(ga.dtype), "b s d, b s -> b d").abs()
    elif aggregation == "abs_sum":  # Σ_pos |g·a|
        per_example = einsum(ga.abs(), batch.attention_mask.to(ga.dtype), "b s d, b s -> b d")
    elif aggregation == "answer_positions":  # |Σ_{pos predicting an answer token} g·a|
        per_example = einsum(ga, _prediction_positions(batch).to(ga.dtype), "b s d, b s -> b d").abs()
    else:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    per_example = per_example.double() if per_example.device.type != "mps" else per_example
    return reduce(per_example, "b d -> d", "sum")


def _device(model) -> torch.device:
    return next(iter(model.parameters())).device


def _attribute_uncached(
    model, task, examples: Sequence[dict], batch_size: int, aggregation: str, progress: bool
) -> Float[Tensor, "n_layers d_mlp"]:
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    device = _device(model)
    # accumulate on the model's device (no per-batch host sync), in float64 where supported
    total = torch.zeros(n_layers, d_mlp, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    acts: dict[int, Tensor] = {}

    def store(layer: int):
        def hook(x: Tensor, hook=None) -> None:
            acts[layer] = x  # keyed by our layer index (hook.name may be the canonical alias)

        return hook

    fwd_hooks = [("hook_embed", _embed_requires_grad)] + [(hook_post_name(i), store(i)) for i in range(n_layers)]
    n_batches = math.ceil(len(examples) / batch_size)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad(), model.hooks(fwd_hooks=fwd_hooks):
        bar = tqdm(
            encoding.batches(model, task, examples, batch_size),
            total=n_batches, desc=f"attribute {task.name}", disable=not progress, leave=False,
        )
        for batch in bar:
            batch = batch.to(device)
            acts.clear()
            loss = per_example_loss(model, batch).sum()
            missing = [i for i in range(n_layers) if i not in acts]
            if missing:
                raise RuntimeError(f"hook_post did not fire for layers {missing}")
            layer_acts = [acts[i] for i in range(n_layers)]
            grads = torch.autograd.grad(loss, layer_acts)
            with torch.no_grad():
                for layer, (g, a) in enumerate(zip(grads, layer_acts, strict=True)):
                    total[layer] += _aggregate(g, a.detach(), batch, aggregation).to(total.dtype)
            acts.clear()
            del loss, grads, layer_acts
    return total.cpu().float()


def attribute(
    model,
    task,
    n_examples: int = 64,
    split: str = "train",
    batch_size: int = 8,
    aggregation: str = "signed_sum",
    start: int = 0,
    cache: bool = True,
    progress: bool = True,
) -> Float[Tensor, "n_layers d_mlp"]:
    """Relevance ``R[l, j]`` of every MLP neuron for ``task`` (Paper A's gradient attribution), fp32 on CPU.

    Loss per example b: mean cross-entropy over its answer tokens; g = ∂L_b/∂ω, a = ω at every
    position. Aggregations over positions, then summed over ``n_examples`` examples of ``split`` from
    index ``start`` (scores are sums, so disjoint chunks add up to the scores of their union):

    - ``"signed_sum"`` (default): ``|Σ_pos g·a|``, the first-order estimate of the loss change when
      the neuron is zeroed at all positions (Paper A's derivation, ω → 0);
    - ``"abs_sum"``: ``Σ_pos |g·a|``;
    - ``"answer_positions"``: ``|Σ_pos g·a|`` over the positions that predict answer tokens only.

    One forward and one backward per batch, gradients taken with respect to the activations only
    (parameters temporarily frozen). Results are cached on disk (``cache_dir()/"scores"``), keyed by
    the model, a fingerprint of its weights, the task and its examples, split, n_examples and
    aggregation.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = _examples(task, split, n_examples, start)
    return _cached(
        cache,
        lambda: _cache_key(model, task, examples, kind="attribution", split=split, n_examples=n_examples,
                           aggregation=aggregation),
        lambda: _attribute_uncached(model, task, examples, batch_size, aggregation, progress),
    )


def _activation_uncached(model, task, examples, batch_size: int, progress: bool) -> Tensor:
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    device = _device(model)
    total = torch.zeros(n_layers, d_mlp, dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    current: dict[str, Tensor] = {}

    def accumulate(layer: int):
        def hook(x: Tensor, hook=None) -> None:
            m = current["mask"].to(torch.float32)  # [b, s]
            per_example = einsum(x.float().abs(), m, "b s d, b s -> b d") / m.sum(1, keepdim=True)
            total[layer] += reduce(per_example.to(total.dtype), "b d -> d", "sum")

        return hook

    fwd_hooks = [(hook_post_name(i), accumulate(i)) for i in range(n_layers)]
    with eval_mode(model), torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        bar = tqdm(encoding.batches(model, task, examples, batch_size, with_answers=True),
                   total=math.ceil(len(examples) / batch_size), desc=f"activations {task.name}",
                   disable=not progress, leave=False)
        for batch in bar:
            batch = batch.to(device)
            current["mask"] = batch.attention_mask
            losses.final_hidden(model, batch)
    return (total / len(examples)).cpu().float()


def activation_scores(
    model,
    task,
    n_examples: int = 64,
    split: str = "train",
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
) -> Float[Tensor, "n_layers d_mlp"]:
    """Forward-only baseline score: mean over examples of the mean ``|ω_lj|`` over the example's
    tokens (prompt and answer), fp32 on CPU. Cached like ``attribute``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = _examples(task, split, n_examples)
    return _cached(
        cache,
        lambda: _cache_key(model, task, examples, kind="activation", split=split, n_examples=n_examples),
        lambda: _activation_uncached(model, task, examples, batch_size, progress),
    )


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def _check_k(k: float) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 < k <= 1:
        raise ValueError(f"k is the fraction of neurons to select and must be in (0, 1], got {k!r}")


def _top(values: Float[Tensor, " n"], n: int) -> Tensor:
    """Indices of the n largest values; ties broken by the lower index (stable sort)."""
    return torch.argsort(values, descending=True, stable=True)[:n]


def select_neurons(
    scores: Float[Tensor, "n_layers d_mlp"], k: float = 0.10, scope: str = "global", name: str = ""
) -> NeuronSet:
    """The top ``k`` fraction of neurons by score (Paper A: k = 10%).

    ``scope="global"`` (default; the paper does not say, and a global cut lets layers differ in how
    many task neurons they hold): ``round(k · n_layers · d_mlp)`` neurons over all layers.
    ``scope="layer"``: ``round(k · d_mlp)`` neurons in every layer. At least one neuron is taken.
    Ties go to the lower (layer, neuron) index, so the result is deterministic.
    """
    _check_k(k)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        raise ValueError(f"scores must be a [n_layers, d_mlp] tensor, got {getattr(scores, 'shape', type(scores))}")
    scores = scores.detach().float().cpu()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    n_layers, d_mlp = scores.shape
    mask = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    if scope == "global":
        n = max(1, round(k * scores.numel()))
        mask.view(-1)[_top(scores.flatten(), n)] = True
    else:
        n = max(1, round(k * d_mlp))
        for layer in range(n_layers):
            mask[layer, _top(scores[layer], n)] = True
    return NeuronSet(mask, name=name, metadata={"k": repr(float(k)), "scope": scope})


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
) -> NeuronSet:
    """Top ``k`` neurons of ``task`` by ``specificity_scores(scores_by_task, method)``."""
    if task not in scores_by_task:
        raise KeyError(f"task {task!r} not among {list(scores_by_task)}")
    spec = specificity_scores(scores_by_task, method)[task]
    selected = select_neurons(spec, k=k, scope=scope, name=f"{task}-specific")
    selected.metadata.update({"method": method, "task": task, "tasks": ",".join(scores_by_task)})
    return selected
