"""The tests of the exercises in ``mechanisms.py``: each ``check_*`` runs the learner's function
against nrnlib (or against a known identity), raises ``AssertionError`` with what went wrong, and
returns a one-line summary when it passes. ``tests/unit/test_exercises.py`` runs every check on
every blank (it must fail) and on every solution (it must pass)."""

import torch

from nrnlib import encoding, losses
from nrnlib.ablation import deactivate
from nrnlib.attribution import attribute
from nrnlib.finetune import parameter_masks
from nrnlib.model_state import restored_after
from nrnlib.neurons import NeuronSet
from nrnlib.selection import select_neurons


def _batch(model, task, n):
    return encoding.encode_examples(model, task, list(task.train[:n]))


def check_grad_x_act(grad_x_act, model, task, layer=None, n=4):
    """``grad_x_act(model, batch, layer)`` equals ``nrnlib.attribute`` for that layer (same examples)."""
    layer = model.cfg.n_layers // 2 if layer is None else layer
    expected = attribute(model, task, n_examples=n, batch_size=n, cache=False, progress=False)[layer]
    with restored_after(model):
        got = grad_x_act(model, _batch(model, task, n), layer)
        model.zero_grad(set_to_none=True)
    assert isinstance(got, torch.Tensor) and got.shape == expected.shape, \
        f"expected a tensor of shape {tuple(expected.shape)}, got {getattr(got, 'shape', type(got))}"
    got = got.detach().float().cpu()
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-6 * float(expected.abs().max())), (
        f"largest difference {float((got - expected).abs().max()):.3g} (scores up to {float(expected.max()):.3g}); "
        "check the sign inside the absolute value (|Σ_pos g·a| per example, then the sum over examples)")
    return f"grad x act of layer {layer} equals nrnlib.attribute (max |Δ| {float((got - expected).abs().max()):.2e})"


def check_top_k(top_k_mask):
    """``top_k_mask(scores, k)`` selects what ``nrnlib.select_neurons`` selects (global scope), ties included."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 16, generator=gen)
    scores[1, :4] = scores[0, 0]  # ties: the lower (layer, neuron) index must win
    for k in (0.02, 0.1, 0.25, 0.5, 1.0):
        got = top_k_mask(scores.clone(), k)
        expected = select_neurons(scores, k=k).mask
        assert isinstance(got, torch.Tensor) and got.dtype == torch.bool and got.shape == scores.shape, \
            f"expected a bool tensor of shape {tuple(scores.shape)}"
        assert torch.equal(got, expected), f"k = {k}: {int(got.sum())} neurons selected, expected " \
            f"{int(expected.sum())}; differing at {(got != expected).nonzero().tolist()[:4]}"
    return "top-k masks equal nrnlib.select_neurons at k = 2%, 10%, 25%, 50%, 100%"


def _some_neurons(model):
    last = model.cfg.n_layers - 1
    return NeuronSet.from_indices(model.cfg.n_layers, model.cfg.d_mlp, {0: range(0, 16), last: range(3, 40, 3)})


def check_zeroing_hook(zeroing_hook, model, task, n=4):
    """Logits with ``zeroing_hook(indices)`` on the layers' ``hook_post`` equal those under
    ``nrnlib.ablation.deactivate`` of the same neurons (and differ from the intact model's)."""
    neurons = _some_neurons(model).for_model(model)
    ids = _batch(model, task, n).input_ids
    with torch.no_grad():
        intact = model(ids)
        hooks = [(f"blocks.{layer}.mlp.hook_post", zeroing_hook(neurons.indices(layer))) for layer in neurons.layers()]
        with model.hooks(fwd_hooks=hooks):
            got = model(ids)
        with deactivate(model, neurons):
            expected = model(ids)
    assert not torch.equal(got, intact), "the hook changed nothing: it must write zeros into the activation"
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), \
        f"logits differ from nrnlib's deactivation by up to {float((got - expected).abs().max()):.3g}"
    return f"zeroing {neurons.count} neurons by hand equals nrnlib.ablation.deactivate"


def check_gradient_mask(gradient_mask_hook, model, task, n=4):
    """With ``gradient_mask_hook(mask)`` on every MLP weight holding the neurons, the gradient is the
    full gradient on the neurons' slices and exactly 0 elsewhere; a NaN in a frozen entry stays out."""
    neurons = _some_neurons(model).for_model(model)
    masks = parameter_masks(model, neurons)
    batch = _batch(model, task, n)
    with restored_after(model):
        model.zero_grad(set_to_none=True)
        losses.answer_loss(model, batch).backward()
        full = {p: p.grad.clone() for p in masks}
        model.zero_grad(set_to_none=True)
        handles = [p.register_hook(gradient_mask_hook(m)) for p, m in masks.items()]
        try:
            losses.answer_loss(model, batch).backward()
            for p, m in masks.items():
                m = m.expand_as(p)
                assert torch.equal(p.grad[~m], torch.zeros_like(p.grad[~m])), "a frozen entry has a gradient"
                assert torch.equal(p.grad[m], full[p][m]), "a trained entry's gradient was changed"
        finally:
            for h in handles:
                h.remove()
            model.zero_grad(set_to_none=True)
    p, m = next(iter(masks.items()))
    poisoned = torch.full_like(p, float("nan"))
    out = gradient_mask_hook(m)(poisoned)
    assert not out[~m.expand_as(p)].isnan().any(), \
        "a NaN gradient of a frozen entry leaked through (NaN * 0 is NaN: use torch.where)"
    return f"gradient masked on {len(masks)} weight tensors: trained slices untouched, frozen entries exactly 0"
