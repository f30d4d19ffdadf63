"""Per-layer similarity of two neuron sets' parameters inside one model (Paper A, Figure 3).

Paper A compares, in model M_i and layer l, the parameters P_i of training task i's neurons with the
parameters P_j of test task j's neurons by cosine similarity. Two sets hold different neurons, in
different numbers, with no one-to-one pairing, so the comparison needs a definition. Neuron n of
layer l has the parameter vector ``θ_n = [W_gate[n, :]; W_up[n, :]; W_down[:, n]]`` (its input and
output slices, ``NeuronGeometry.neuron_vector``), and each θ_n is first scaled to unit length so
that a few large-norm neurons do not decide the comparison.

- ``"centroid"`` (primary): ``cos(c_A, c_B)`` with ``c_S = mean_{n ∈ S_l} θ_n / ‖θ_n‖`` — the
  cosine of the two sets' mean directions; the most literal reading of "cosine similarity between
  P_i and P_j" when each set's parameters are pooled into one vector.
- ``"matching"``: ``½ [mean_{a ∈ A} max_{b ∈ B} cos(θ_a, θ_b) + mean_{b ∈ B} max_{a ∈ A} cos(θ_a, θ_b)]``
  — how close each neuron of one set is to its nearest neuron of the other (symmetric Chamfer).

Both are 1 for a set compared with itself (and for two sets sharing every neuron), both ignore the
order of neurons, and both are undefined (NaN) in a layer where either set is empty. A finding that
holds under one and not the other depends on the definition, so notebooks report both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

DEFINITIONS = ("centroid", "matching")


def unit_rows(vectors: Float[Tensor, "n p"]) -> Float[Tensor, "n p"]:
    """Each row scaled to unit L2 norm (float64); a zero row stays zero."""
    v = vectors.double()
    return v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def centroid_cosine(a: Float[Tensor, "n_a p"], b: Float[Tensor, "n_b p"]) -> float:
    """``cos(mean_i â_i, mean_j b̂_j)`` of the rows' unit vectors (``"centroid"``)."""
    ca, cb = unit_rows(a).mean(0), unit_rows(b).mean(0)
    denom = float(ca.norm() * cb.norm())
    return float(ca @ cb) / denom if denom > 0 else float("nan")


def matching_cosine(a: Float[Tensor, "n_a p"], b: Float[Tensor, "n_b p"]) -> float:
    """Symmetric mean best-match cosine between the rows of ``a`` and ``b`` (``"matching"``)."""
    cos = unit_rows(a) @ unit_rows(b).T
    return float(0.5 * (cos.max(dim=1).values.mean() + cos.max(dim=0).values.mean()))


def set_similarity(a: Float[Tensor, "n_a p"], b: Float[Tensor, "n_b p"], definition: str = "centroid") -> float:
    """Similarity of two sets of parameter vectors (rows) by ``definition``; NaN when either is empty."""
    if definition not in DEFINITIONS:
        raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two [n, p] tensors with the same p, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("parameter vectors contain NaN or inf: the model's weights are not finite")
    return centroid_cosine(a, b) if definition == "centroid" else matching_cosine(a, b)


def layer_similarity(
    model: TransformerBridge, a: NeuronSet, b: NeuronSet, definition: str = "centroid"
) -> Float[Tensor, " n_layers"]:
    """Per layer l: ``set_similarity(θ[A_l], θ[B_l])`` inside ``model`` (NaN where A_l or B_l is empty)."""
    for s in (a, b):
        if not isinstance(s, NeuronSet):
            raise TypeError(f"expected NeuronSets, got {type(s).__name__}")
        s.check_model(model)
    geometry = NeuronGeometry.of(model)
    out = torch.full((geometry.n_layers,), float("nan"), dtype=torch.float64)
    for layer in range(geometry.n_layers):
        ia, ib = a.indices(layer), b.indices(layer)
        if len(ia) and len(ib):
            device = geometry.slices(model, layer)[0].param.device
            va = geometry.neuron_vector(model, layer, ia.to(device)).cpu()
            vb = geometry.neuron_vector(model, layer, ib.to(device)).cpu()
            out[layer] = set_similarity(va, vb, definition)
    return out
