"""Neuron-sparse training (``nrnlib.sparse``, ``finetune(mode="sparse")``, the default for a
NeuronSet) against masked dense training (``mode="masked"``): the same losses and parameters step
for step (1e-6 relative), frozen entries bit-identical, gradients and AdamW state for the slices
only, non-finite gradients kept off frozen entries, and the model left in its plain layout."""

import math

import pytest
import torch

from nrnlib import losses
from nrnlib.checks import InvalidArgumentError
from nrnlib.finetune import (
    NonFiniteLossError,
    Trainer,
    _encode_items,
    _training_items,
    batch_stream,
    finetune,
    parameter_masks,
    trainable_entries,
    training,
)
from nrnlib.model_state import attached_hooks
from nrnlib.models import NeuronGeometry
from nrnlib.neurons import NeuronSet, OtherModelError

RTOL = 1e-6  # |sparse - masked| <= RTOL * max|masked|, per parameter tensor


def _neurons(model):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    return NeuronSet.from_indices(L, D, {0: [3, 40], 1: list(range(0, D, 7)), L - 1: [0, 1, D - 1]})


def _set(model, values):
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(v)


def _layout(model):
    """Everything that makes the model's plain parameter layout: names, tensor objects, flags, hooks."""
    return ([(n, id(p), p.requires_grad, p.grad is None) for n, p in model.named_parameters()],
            sorted(n for n, m in model.named_modules() if hasattr(m, "parametrizations")))


def _expected_trained(model, neurons):
    """{id(param): bool mask of trained entries} from ``parameter_masks`` (the masked reference)."""
    return {id(p): m.expand_as(p) for p, m in parameter_masks(model, neurons).items()}


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_sparse_equals_masked_step_for_step(model, parity_task, echo_task, weight_decay):
    neurons, start, layout = _neurons(model), [p.detach().clone() for p in model.parameters()], _layout(model)
    runs = {}
    for mode in ("masked", "sparse"):
        _set(model, start)
        log = finetune(model, [parity_task, echo_task], neurons=neurons, steps=6, lr=1e-3, batch_size=3,
                       weight_decay=weight_decay, seed=5, progress=False, mode=mode)
        runs[mode] = (log, [p.detach().clone() for p in model.parameters()])
        assert attached_hooks(model) == [] and _layout(model) == layout and not model.training
    (masked_log, masked), (sparse_log, sparse) = runs["masked"], runs["sparse"]
    # every step's loss (a function of the parameters at that step) agrees
    assert sparse_log.steps == masked_log.steps == 6
    assert sparse_log.losses == pytest.approx(masked_log.losses, rel=RTOL, abs=0)
    assert sparse_log.n_trainable_entries == masked_log.n_trainable_entries == trainable_entries(model, neurons)
    assert isinstance(sparse_log.n_trainable_entries, int)
    trained = _expected_trained(model, neurons)
    for p, a, b, s in zip(model.parameters(), masked, sparse, start, strict=True):
        assert (b - a).abs().max() <= RTOL * a.abs().max()  # every parameter: sparse == masked
        mask = trained.get(id(p), torch.zeros_like(p, dtype=torch.bool))
        for run in (a, b):
            assert torch.equal(run[~mask], s[~mask])  # frozen entries: bit-identical to the start
        assert torch.all(b[mask] != s[mask])  # every trained entry moved


def test_slice_gradients_are_the_dense_gradient_rows(model, parity_task):
    """One backward: each slice's gradient equals the masked dense gradient on the neurons' entries;
    no model tensor gets a gradient in sparse mode, and AdamW state exists for the slices only."""
    neurons = _neurons(model)
    encoded = _encode_items(model, _training_items([parity_task], None))
    batch = next(batch_stream(model, encoded, 4, 0))
    grads = {}
    for mode in ("masked", "sparse"):
        with training(model, neurons, lr=1e-3, mode=mode) as trainer:
            torch.manual_seed(0)  # the same dropout masks (GPT-2)
            losses.answer_loss(model, batch).backward()
            if mode == "masked":
                grads = {id(p): p.grad.clone() for p in trainer.params}
                continue
            assert attached_hooks(model) != []  # the slice hooks are on while training
            assert all(p.grad is None and not p.requires_grad for p in model.parameters())
            slices = trainer._after_step.__self__.slices
            for s in slices:
                dense = grads[id(s.target)].index_select(s.dim, s.index)
                assert s.param.grad.shape == dense.shape
                assert (s.param.grad - dense).abs().max() <= RTOL * dense.abs().max()
            trainer.optimizer.step()
            state = [t for st in trainer.optimizer.state.values() for t in st.values() if t.ndim > 0]
            assert sum(t.numel() for t in state) == 2 * trainer.n_trainable_entries == 2 * sum(
                s.param.numel() for s in slices)
    assert attached_hooks(model) == []


def test_state_memory_is_proportional_to_the_number_of_neurons(model, parity_task):
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    sizes = {}
    for k in (4, 8, 16):
        neurons = NeuronSet.from_indices(L, D, {layer: list(range(k)) for layer in range(L)})
        with training(model, neurons, lr=1e-3) as trainer:
            sizes[k] = sum(p.numel() * p.element_size() for p in trainer.params)
            assert trainer.mode == "sparse"
    assert sizes[8] == 2 * sizes[4] and sizes[16] == 4 * sizes[4]


@pytest.mark.parametrize("mode", ["masked", "sparse"])
def test_non_finite_gradients_never_touch_frozen_entries(model, parity_task, mode):
    """NaN gradients injected at the unselected neurons of the last layer: frozen entries stay
    bit-identical and finite, trained entries stay finite, in both modes."""
    L, D = model.cfg.n_layers, model.cfg.d_mlp
    neurons = NeuronSet.from_indices(L, D, {L - 1: [2, 5, 9]})
    keep = neurons.mask[L - 1]
    out_proj = next(m for m in model.original_model.modules()
                    if isinstance(getattr(m, "weight", None), torch.Tensor)
                    and any(m.weight is s.param for s in NeuronGeometry.of(model).output_slices(model, L - 1)))

    def poison(module, inputs):
        h = inputs[0]
        if h.requires_grad:
            h.register_hook(lambda g: torch.where(keep.to(g.device), g, torch.full_like(g, math.nan)))

    start = [p.detach().clone() for p in model.parameters()]
    handle = out_proj.register_forward_pre_hook(poison)
    try:
        finetune(model, parity_task, neurons=neurons, steps=2, lr=1e-2, weight_decay=0.1, batch_size=2,
                 progress=False, mode=mode)
    finally:
        handle.remove()
    trained = _expected_trained(model, neurons)
    for p, s in zip(model.parameters(), start, strict=True):
        mask = trained.get(id(p), torch.zeros_like(p, dtype=torch.bool))
        assert torch.equal(p[~mask], s[~mask]) and torch.isfinite(p).all()
        assert torch.all(p[mask] != s[mask])


def test_sparse_run_interrupted_by_a_nan_loss_leaves_the_plain_model(model, parity_task, monkeypatch):
    layout, start = _layout(model), [p.detach().clone() for p in model.parameters()]
    real, calls = losses.answer_loss, []

    def nan_at_step_3(m, batch, **kw):
        calls.append(1)
        return real(m, batch, **kw) * (math.nan if len(calls) == 3 else 1.0)

    monkeypatch.setattr(losses, "answer_loss", nan_at_step_3)
    with pytest.raises(NonFiniteLossError, match="step 3 of 4"):
        finetune(model, parity_task, neurons=_neurons(model), steps=4, lr=1e-2, progress=False)
    assert attached_hooks(model) == [] and _layout(model) == layout and not model.training
    after = [p.detach().clone() for p in model.parameters()]
    # two steps applied, written into the weights: the same as a 2-step run
    monkeypatch.setattr(losses, "answer_loss", real)
    _set(model, start)
    finetune(model, parity_task, neurons=_neurons(model), steps=2, lr=1e-2, progress=False)
    assert all(torch.equal(p, a) for p, a in zip(model.parameters(), after, strict=True))


def test_bf16_sparse_training_keeps_frozen_entries_and_decays_in_fp32(parity_task):
    from nrnlib.models import load_model

    bf16 = load_model("tiny-random-llama", device="cpu", dtype=torch.bfloat16)
    neurons = _neurons(bf16)
    start = [p.detach().clone() for p in bf16.parameters()]
    trained = _expected_trained(bf16, neurons)
    runs = {}
    for mode, wd in (("sparse", 0.0), ("sparse", 20.0), ("masked", 20.0)):
        _set(bf16, start)
        finetune(bf16, parity_task, neurons=neurons, steps=3, lr=1e-3, weight_decay=wd, batch_size=2,
                 progress=False, mode=mode)
        runs[mode, wd] = [p.detach().clone() for p in bf16.parameters()]
    for i, (p, s) in enumerate(zip(bf16.parameters(), start, strict=True)):
        mask = trained.get(id(p), torch.zeros_like(p, dtype=torch.bool))
        for run in runs.values():
            assert run[i].dtype == torch.bfloat16 and torch.equal(run[i][~mask], s[~mask])
        if mask.any():
            decayed, plain = runs["sparse", 20.0][i][mask].float(), runs["sparse", 0.0][i][mask].float()
            assert decayed.abs().sum() < 0.97 * plain.abs().sum()
            # bf16 matmuls may round the two modes' gradients differently: equal to bf16 resolution
            masked = runs["masked", 20.0][i][mask].float()
            assert (decayed - masked).abs().max() <= 2 ** -7 * masked.abs().max()


def test_modes_are_checked(model, parity_task):
    neurons = _neurons(model)
    with pytest.raises(InvalidArgumentError, match="mode must be one of"):
        finetune(model, parity_task, neurons=neurons, steps=1, mode="dense", progress=False)
    with pytest.raises(InvalidArgumentError, match="mode='full' needs no neurons"):
        finetune(model, parity_task, neurons=neurons, steps=1, mode="full", progress=False)
    with pytest.raises(InvalidArgumentError, match="mode='sparse' needs a NeuronSet"):
        finetune(model, parity_task, steps=1, mode="sparse", progress=False)
    with pytest.raises(ValueError, match="empty"):
        finetune(model, parity_task, neurons=NeuronSet.empty(model.cfg.n_layers, model.cfg.d_mlp), steps=1,
                 progress=False)


def test_default_for_a_neuron_set_is_sparse_and_checks_the_model(model, parity_task, monkeypatch):
    modes = []
    real = Trainer.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        modes.append(self.mode)

    monkeypatch.setattr(Trainer, "__init__", spy)
    finetune(model, parity_task, neurons=_neurons(model), steps=1, progress=False)
    finetune(model, parity_task, steps=1, progress=False)
    assert modes == ["sparse", "full"]
    foreign = _neurons(model).for_model("0123456789abcdef")
    with pytest.raises(OtherModelError, match="allow_other_model=True"):
        finetune(model, parity_task, neurons=foreign, steps=1, progress=False)
    log = finetune(model, parity_task, neurons=foreign, steps=1, progress=False, allow_other_model=True)
    assert log.steps == 1 and attached_hooks(model) == []
