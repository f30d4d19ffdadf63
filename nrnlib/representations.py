"""Hidden states at the last prompt token after every block, and centered kernel alignment (CKA)
to compare two models' representations layer by layer (Paper B, Zhao, Ziser & Cohen).

Linear CKA (Kornblith et al. 2019), feature space, float64, for ``X: [n, p]`` and ``Y: [n, q]``
with columns centered:

    CKA(X, Y) = ||Yᵀ X||_F² / (||Xᵀ X||_F · ||Yᵀ Y||_F)              (biased HSIC; Paper B's choice)

The debiased estimator replaces the biased HSIC by the unbiased one of Song et al. (2012) on the
Gram matrices ``K = X Xᵀ``, ``L = Y Yᵀ`` (diagonals set to zero: ``K̃``, ``L̃``):

    HSIC₁(K, L) = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀ K̃ L̃ 1] / (n(n−3))

RBF CKA uses ``K_ij = exp(−||x_i − x_j||² / (2σ²))`` with σ = ``sigma_frac`` × the median pairwise
distance, and the biased HSIC ``tr(K H L H)``. CKA is invariant to orthogonal transforms and
isotropic scaling of either input, not to general invertible linear maps.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from nrnlib import encoding, losses
from nrnlib.checks import check_int
from nrnlib.model_state import eval_mode
from nrnlib.tasks import as_task


class UndefinedCKAError(ValueError):
    """CKA has no value for these inputs (a representation without variance, or RBF CKA on rows
    that are all equal); ``layer_cka`` reports such layers as NaN."""


class NonFiniteRepresentationError(ValueError):
    """A representation with NaN or infinite entries: CKA would silently be NaN."""


def _as_matrix(x: object, which: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"CKA needs tensors (or arrays), got {type(x).__name__} for {which}") from None


def _check_pair(x: Tensor, y: Tensor, min_n: int = 2) -> tuple[Tensor, Tensor]:
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"CKA needs two [n, features] matrices, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same examples (rows) in both inputs, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < min_n:
        raise ValueError(f"this CKA estimator needs at least {min_n} examples, got {x.shape[0]}")
    x, y = x.detach().double().cpu(), y.detach().double().cpu()
    for which, t in (("x", x), ("y", y)):
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise NonFiniteRepresentationError(
                f"CKA input {which} has {bad} non-finite (NaN or inf) entries of {t.numel()}: CKA is undefined. "
                "Check where the states come from (a diverged fine-tune, an fp16 overflow)."
            )
    return x, y


def _center(x: Float[Tensor, "n p"]) -> Float[Tensor, "n p"]:
    return x - x.mean(0, keepdim=True)


def linear_cka(x: Float[Tensor, "n p"], y: Float[Tensor, "n q"], debiased: bool = False) -> float:
    """Linear CKA of two representations of the same n examples (see the module docstring)."""
    if debiased:
        x, y = _check_pair(x, y, min_n=4)
        return _cka_from_grams(x @ x.T, y @ y.T, _hsic_unbiased)
    x, y = _check_pair(x, y)
    x, y = _center(x), _center(y)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norm == 0:
        raise UndefinedCKAError("CKA is undefined for a constant representation (all rows equal)")
    return float(cross / norm)


def _hsic_biased(k: Tensor, l_: Tensor) -> Tensor:
    """tr(K H L H), H = I − 11ᵀ/n (the normalisation cancels in CKA)."""
    n = k.shape[0]
    h = torch.eye(n, dtype=k.dtype) - 1.0 / n
    return torch.trace(k @ h @ l_ @ h)


def _hsic_unbiased(k: Tensor, l_: Tensor) -> Tensor:
    """Song et al. (2012), unbiased HSIC (see the module docstring)."""
    n = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    l_ = l_ - torch.diag(torch.diag(l_))
    ones = torch.ones(n, 1, dtype=k.dtype)
    term = torch.trace(k @ l_) + (ones.T @ k @ ones) * (ones.T @ l_ @ ones) / ((n - 1) * (n - 2))
    term = term - 2.0 / (n - 2) * (ones.T @ k @ l_ @ ones)
    return term.squeeze() / (n * (n - 3))


def _cka_from_grams(k: Tensor, l_: Tensor, hsic) -> float:
    denom = hsic(k, k) * hsic(l_, l_)
    if denom <= 0:
        raise UndefinedCKAError("CKA is undefined here (a representation has no variance under this estimator)")
    return float(hsic(k, l_) / torch.sqrt(denom))


def _rbf_gram(x: Tensor, sigma_frac: float) -> Tensor:
    dist = torch.cdist(x, x)
    off = dist[~torch.eye(len(x), dtype=torch.bool)]
    median = off.median() if len(off) else torch.tensor(0.0, dtype=x.dtype)
    if median == 0:
        raise UndefinedCKAError("RBF CKA needs distinct rows (the median pairwise distance is 0)")
    sigma = sigma_frac * median
    return torch.exp(-(dist**2) / (2 * sigma**2))


def rbf_cka(x: Float[Tensor, "n p"], y: Float[Tensor, "n q"], sigma_frac: float = 0.5) -> float:
    """CKA with RBF kernels, bandwidth ``sigma_frac`` × the median pairwise distance of each input."""
    if sigma_frac <= 0:
        raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
    x, y = _check_pair(x, y, min_n=3)
    return _cka_from_grams(_rbf_gram(x, sigma_frac), _rbf_gram(y, sigma_frac), _hsic_biased)


def residual_hook_names(n_layers: int) -> list[str]:
    """``hook_embed`` output (index 0, the embedding) then ``blocks.{l}.hook_resid_post`` (index l + 1)."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


@torch.no_grad()
def last_token_states(
    model, task, n: int | None = None, split: str = "test", batch_size: int = 16, progress: bool = True,
) -> Float[Tensor, "n_layers_plus_1 n d_model"]:
    """Residual stream at each example's last prompt token, after the embedding (index 0) and after
    every block (index l + 1), for the first ``n`` examples of ``split``; fp32 on CPU.

    Prompts are right-padded, so the last prompt token of example b sits at ``prompt_length_b − 1``
    and never attends to padding.
    """
    task = as_task(task)
    n = check_int(n, "n", minimum=1, where="last_token_states", none_ok=True)
    batch_size = check_int(batch_size, "batch_size", minimum=1, where="last_token_states")
    examples = list(task.split(split))[: n if n is not None else None]
    if not examples:
        raise ValueError(f"Task {task.name!r} has no {split!r} examples to read states from")
    names = residual_hook_names(int(model.cfg.n_layers))
    out = torch.zeros(len(names), len(examples), int(model.cfg.d_model))
    current: dict[str, Tensor] = {}

    def store(index: int):
        def hook(x: Tensor, hook=None) -> None:
            rows = torch.arange(x.shape[0], device=x.device)
            start = current["start"]
            out[index, start: start + x.shape[0]] = x[rows, current["last"]].float().cpu()
        return hook

    device = next(iter(model.parameters())).device
    with eval_mode(model), model.hooks(fwd_hooks=[(name, store(i)) for i, name in enumerate(names)]):
        total = math.ceil(len(examples) / batch_size)
        for i, batch in enumerate(tqdm(encoding.batches(model, task, examples, batch_size, with_answers=False),
                                       total=total, desc=f"states {task.name}", disable=not progress, leave=False)):
            batch = batch.to(device)
            current["start"], current["last"] = i * batch_size, batch.last_prompt_index
            losses.final_hidden(model, batch)
    return out


def layer_cka(
    states_a: Float[Tensor, "layers n d"], states_b: Float[Tensor, "layers n d"], kind: str = "linear",
) -> list[float]:
    """CKA between two models' states at every layer index (``kind``: linear, debiased or rbf); NaN
    where it is undefined (e.g. the embedding at the last prompt token, which is the same token, the
    end of the chat template, in every example)."""
    if states_a.shape[:2] != states_b.shape[:2]:
        raise ValueError(f"states must cover the same layers and examples, got {tuple(states_a.shape)} and "
                         f"{tuple(states_b.shape)}")
    fn = {"linear": linear_cka, "debiased": lambda a, b: linear_cka(a, b, debiased=True), "rbf": rbf_cka}.get(kind)
    if fn is None:
        raise ValueError(f"kind must be linear, debiased or rbf, got {kind!r}")
    return [_or_nan(fn, a, b) for a, b in zip(states_a, states_b, strict=True)]


def _or_nan(fn, a: Tensor, b: Tensor) -> float:
    try:
        return fn(a, b)
    except UndefinedCKAError:
        return float("nan")
