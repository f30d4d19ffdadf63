"""Neuron relevance scores (Paper A's gradient attribution).

Paper A scores neuron j of layer l by the first-order Taylor estimate of the loss change when its
output ω_lj is set to zero: ``R[l, j] = |∂L/∂ω_lj · ω_lj|``, where ω is the MLP hidden unit
(``blocks.{l}.mlp.hook_post``, the input of the down projection). The top k% neurons by R are the
task's "task-specific" neurons (``nrnlib.selection``).

``attribute`` computes R for every layer with one forward and one backward per batch (gradients
with respect to the activations only, never the parameters). ``activation_scores`` is a
forward-only baseline (mean |ω|). Both are cached in ``nrnlib.store``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from einops import einsum, reduce
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib import encoding, losses, store
from nrnlib.encoding import EncodedBatch
from nrnlib.model_state import eval_mode, frozen_parameters
from nrnlib.tasks import as_task

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

    from nrnlib.tasks import Task

AGGREGATIONS = ("signed_sum", "abs_sum", "answer_positions")
# the code whose change invalidates cached scores (nrnlib.store.code_digest)
SCORE_CODE = ("attribution", "losses", "encoding")


# --------------------------------------------------------------------------------------------
# Hooks and parameter freezing
# --------------------------------------------------------------------------------------------


def hook_post_name(layer: int) -> str:
    return f"blocks.{layer}.mlp.hook_post"


def _embed_requires_grad(x: Tensor, hook=None) -> Tensor:
    """Embedding output as a grad-requiring leaf: the graph exists without parameter gradients."""
    if not x.requires_grad:
        x.requires_grad_()
    return x


# --------------------------------------------------------------------------------------------
# Examples and caching
# --------------------------------------------------------------------------------------------


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _examples(task: Task, split: str, n_examples: int, start: int = 0) -> list[dict]:
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be an integer >= 1, got {n_examples!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
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

    def keep(layer: int):
        def hook(x: Tensor, hook=None) -> None:
            acts[layer] = x  # keyed by our layer index (hook.name may be the canonical alias)

        return hook

    fwd_hooks = [("hook_embed", _embed_requires_grad)] + [(hook_post_name(i), keep(i)) for i in range(n_layers)]
    n_batches = math.ceil(len(examples) / batch_size)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad(), model.hooks(fwd_hooks=fwd_hooks):
        bar = tqdm(
            encoding.batches(model, task, examples, batch_size),
            total=n_batches, desc=f"attribute {task.name}", disable=not progress, leave=False,
        )
        for batch in bar:
            batch = batch.to(device)
            acts.clear()
            loss = losses.per_example_loss(model, batch).sum()
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
    model: TransformerBridge,
    task: Task | str,
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
    (parameters temporarily frozen). Cached in ``nrnlib.store`` under the model's fingerprint, the
    task's digest over exactly these examples, split, start, aggregation and the scoring code; a model
    carrying hooks is refused unless ``cache=False``.
    """
    task = as_task(task)
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    _check_batch_size(batch_size)
    examples = _examples(task, split, n_examples, start)
    scores = store.cached(
        "attribution",
        lambda: {"scores": _attribute_uncached(model, task, examples, batch_size, aggregation, progress)},
        settings={"split": split, "start": start, "n_used": len(examples), "aggregation": aggregation,
                  "dtype": str(next(iter(model.parameters())).dtype)},
        code=SCORE_CODE, model=model, tasks={task.name: task.digest(examples)}, fmt="tensors", cache=cache,
    )
    return scores["scores"]


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
    model: TransformerBridge,
    task: Task | str,
    n_examples: int = 64,
    split: str = "train",
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
) -> Float[Tensor, "n_layers d_mlp"]:
    """Forward-only baseline score: mean over examples of the mean ``|ω_lj|`` over the example's
    tokens (prompt and answer), fp32 on CPU. Cached like ``attribute``."""
    task = as_task(task)
    _check_batch_size(batch_size)
    examples = _examples(task, split, n_examples)
    scores = store.cached(
        "activation", lambda: {"scores": _activation_uncached(model, task, examples, batch_size, progress)},
        settings={"split": split, "n_used": len(examples), "dtype": str(next(iter(model.parameters())).dtype)},
        code=SCORE_CODE, model=model, tasks={task.name: task.digest(examples)}, fmt="tensors", cache=cache,
    )
    return scores["scores"]
