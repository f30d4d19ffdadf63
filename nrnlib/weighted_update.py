"""Graded W-NCFT: neuron-level fine-tuning in which each neuron's update is scaled by a weight.

NCFT trains the current task's neurons ``N_n`` alike. W-NCFT (notebook 06) gives neuron ``j ∈ N_n``
the weight

    w_j = q_j · γ^{c_j},   q_j = (|N_n| − rank_j + 1) / |N_n|,

with ``rank_j`` the rank of ``j``'s relevance for the current task among ``N_n`` (1 = most relevant;
relevance on the model as it stands, ``attribution``), ``c_j`` the number of earlier stages that
trained ``j`` and ``γ = DECAY`` (0.5): the more a neuron matters for the current task the more it
moves, and every earlier task trained into it halves its update. ``γ = 1`` is relevance-graded NCFT;
``γ = 0`` freezes every earlier task's neurons (the 0/1 ``w_ncft``). Why ranks and not ``r / max r``:
attribution is heavy-tailed (a few neurons hold most of it), so ``r / max r`` leaves most of the set
with weights near 0 (measured: mean 0.02 on word_polarity) and W-NCFT would forget less only by not
learning; ranks give a mean weight of about 1/2 whatever the scale of the scores. Why a weight on
the update and not a scaled gradient: AdamW divides each entry's gradient by its own running
magnitude, so a gradient scale cancels out.

**The update.** Training is neuron-sparse (``nrnlib.sparse``): one AdamW step moves the slices
``S → S'``; the weighted trainer then keeps ``lerp(S, S', w) = S + w (S' − S)`` for every entry of
neuron ``j``'s slices (``w = 1``: exactly ``S'``; ``w = 0``: exactly ``S``), i.e. a per-neuron
learning rate ``w_j · lr`` with AdamW's moments left as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from nrnlib import encoding
from nrnlib.checks import check_float
from nrnlib.finetune import Trainer
from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet
from nrnlib.sparse import NeuronSlices

DECAY = 0.5  # γ: the factor of a neuron's update per earlier stage that trained it


def neuron_weights(relevance: Float[Tensor, "n_layers d_mlp"], neurons: NeuronSet, earlier: Sequence[NeuronSet] = (),
                   decay: float = DECAY) -> Float[Tensor, "n_layers d_mlp"]:
    """``w_j = q_j · γ^{c_j}`` of the module docstring on ``neurons`` (0 outside them)."""
    decay = check_float(decay, "decay", minimum=0.0, where="neuron_weights")
    if tuple(relevance.shape) != neurons.shape:
        raise ValueError(f"neuron_weights: relevance has shape {tuple(relevance.shape)}, the neurons {neurons.shape}")
    mask = neurons.mask.cpu()  # the weights live on the CPU; the trainer moves each slice's to its device
    flat = mask.flatten().nonzero().squeeze(1)
    order = torch.argsort(relevance.detach().float().cpu().flatten()[flat], descending=True, stable=True)
    n = len(flat)
    q = torch.zeros(mask.numel())
    q[flat[order]] = (n - torch.arange(n, dtype=torch.float32)) / max(n, 1)  # rank 1 → 1, rank n → 1/n
    uses = sum((s.mask.cpu().flatten().float() for s in earlier), torch.zeros(mask.numel()))
    return (q * decay**uses).where(mask.flatten(), torch.zeros(())).reshape(mask.shape)


class WeightedTrainer(Trainer):
    """A neuron-sparse ``Trainer`` whose step keeps ``lerp(S, S', w)`` (module docstring)."""

    def __init__(self, *args, scales: Sequence[Tensor], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scales = list(scales)

    def step(self, batch: encoding.EncodedBatch, total: int | None = None) -> float:
        before = [p.detach().clone() for p in self.params]
        value = super().step(batch, total)
        with torch.no_grad():
            for p, b, w in zip(self.params, before, self.scales, strict=True):
                p.copy_(torch.lerp(b, p, w))
        self._after_step()
        return value


def _slice_scale(weights: Float[Tensor, "n_layers d_mlp"], layer: int, s) -> Tensor:  # noqa: ANN001
    """The weight of every entry of slice ``s`` (its neurons run along ``s.dim``)."""
    w = weights[layer].to(s.param.device, s.param.dtype).index_select(0, s.index)
    shape = [1] * s.param.ndim
    shape[s.dim] = -1
    return w.reshape(shape)


@contextlib.contextmanager
def weighted_training(model, neurons: NeuronSet, weights: Float[Tensor, "n_layers d_mlp"], *, lr: float,
                      weight_decay: float = 0.0) -> Iterator[WeightedTrainer]:
    """A :class:`WeightedTrainer` over ``neurons``' slices with per-neuron ``weights`` (train mode
    inside, eval mode and plain parameters afterwards, as ``finetune.training``)."""
    lr = check_float(lr, "lr", positive=True, where="weighted_training")
    neurons.check_model(model)
    with NeuronSlices(model, neurons) as slices:
        geometry = NeuronGeometry.of(model)
        layer_of = {id(g.param): layer for layer in range(neurons.n_layers) for g in geometry.slices(model, layer)}
        scales = [_slice_scale(weights, layer_of[id(s.target)], s) for s in slices.slices]
        trainer = WeightedTrainer(model, slices.params, lr, weight_decay, None, slices.n_entries, "sparse",
                                  after_step=slices.write_back, where="weighted_training", scales=scales)
        model.train()
        try:
            yield trainer
        finally:
            model.eval()
            trainer.optimizer.zero_grad(set_to_none=True)


def weighted_factory(neurons: NeuronSet, weights: Float[Tensor, "n_layers d_mlp"]):  # noqa: ANN201 - a factory
    """``protocol.train_to_convergence`` trainer factory for :func:`weighted_training`."""
    return lambda model, lr, weight_decay: weighted_training(model, neurons, weights, lr=lr, weight_decay=weight_decay)
